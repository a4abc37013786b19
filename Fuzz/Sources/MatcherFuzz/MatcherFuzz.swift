// Feeds arbitrary bytes to the other parsers that see untrusted input: the ClientHello reader
// (bytes from any client of an SNI-routed listener) and the path regex compiler and matcher
// (patterns from a config or a control plane, paths from any client). Checks what must always
// hold: no crash, a server name inside the input, and a regex answer that does not depend on
// whether the path sits at the start of a buffer or in the middle of one.
import FuzzSupport
import WeirHTTP

@_cdecl("MatcherFuzz_main")
public func entry(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let buf = UnsafeRawBufferPointer(start: data, count: size)
    switch ClientHello.parse(buf, limit: 16384) {
    case .hello(let name?):
        check(name.start >= 0 && name.start <= name.end && Int(name.end) <= size, "server name inside the input")
    default: break
    }
    // The first byte splits the rest into a pattern and a path.
    guard size > 1 else { return 0 }
    let split = min(Int(data[0]), size - 1)
    let pattern = String(decoding: UnsafeRawBufferPointer(start: data + 1, count: split), as: UTF8.self)
    guard let regex = try? PathRegex(pattern) else { return 0 }
    let path = UnsafeRawBufferPointer(start: data + 1 + split, count: size - 1 - split)
    let direct = regex.fullMatch(path, 0, path.count)
    var padded = [UInt8](repeating: UInt8(ascii: "x"), count: 3)
    padded += path
    padded += [UInt8(ascii: "y")]
    let shifted = padded.withUnsafeBytes { regex.fullMatch($0, 3, 3 + path.count) }
    check(direct == shifted, "the same answer wherever the path sits")
    return 0
}
