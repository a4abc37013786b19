// Runs a whole shard in the simulator (its real session code on SimIO) with the input as the
// source of every choice: which clients come, what they send and when, how bytes split, which
// completions come first, which faults strike; some hostile clients send the input's bytes as
// they are. Every invariant of the simulator holds or the run stops (libFuzzer saves the input).
// A crash replays with: ConnectionFuzz crash-<hash>.
import FuzzSupport
import WeirProxy

@_cdecl("ConnectionFuzz_main")
public func entry(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    Simulation.quietLogs()
    return runFuzzer(argc, argv, fuzz)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // The first byte picks the data path (odd: splice), the rest steers.
    let seed = UInt64(bytes.first ?? 0)
    let report = Simulation.run(seed: seed, steps: 200, tape: Array(bytes.dropFirst()))
    if let failure = report.failure { fatalError("simulation failed: \(failure)") }
    return 0
}
