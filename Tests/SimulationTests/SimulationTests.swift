// The simulator in CI: a fixed set of seeds, each a shard against a simulated network with
// faults (see Sources/WeirProxy/Simulation). A failure names its seed; `weir simulate --seed N
// --steps 5000` replays it exactly. More seeds: scripts/simulate.sh.
import Foundation
import Testing
import WeirProxy

// Serialized: a simulation runs on its thread with one current SimKernel.
@Suite(.serialized) struct SimulationTests {
    @Test(arguments: 1...10)
    func aSeedKeepsEveryInvariant(seed: Int) {
        let report = Simulation.run(seed: UInt64(seed), steps: 4000)
        #expect(report.failure == nil, "\(report)")
        #expect(report.responses > 100, "the seed did some work: \(report)")
    }

    /// The connection fuzzer's seed corpus, run as the fuzzer runs it (Fuzz/ConnectionFuzz), so
    /// the way in that libFuzzer takes is exercised on every test run.
    @Test func theConnectionFuzzCorpusKeepsEveryInvariant() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Fuzz/corpus/connection").standardized
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        #expect(files.count >= 3)
        for f in files {
            let bytes = [UInt8](try Data(contentsOf: dir.appendingPathComponent(f)))
            let report = Simulation.run(seed: UInt64(bytes.first ?? 0), steps: 200, tape: Array(bytes.dropFirst()))
            #expect(report.failure == nil, "\(f): \(report)")
        }
    }

    @Test func aSeedReplaysExactly() {
        let a = Simulation.run(seed: 77, steps: 3000)
        let b = Simulation.run(seed: 77, steps: 3000)
        #expect(a.description == b.description)
    }
}
