// Feeds arbitrary bytes to the request parser, the response parser and the chunked scanner, and
// checks what must always hold: no crash, no read outside the input, ranges inside the head,
// and the same answer whether the bytes arrive whole or split in two.
import FuzzSupport
import WeirHTTP

let table = HeaderTable(capacity: 128)

func inRange(_ r: ByteRange, _ limit: Int) -> Bool { r.start >= 0 && r.start <= r.end && Int(r.end) <= limit }

@_cdecl("HTTPParserFuzz_main")
public func entry(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let buf = UnsafeRawBufferPointer(start: data, count: size)
    var limits = HTTPLimits()
    limits.maxHeaderBytes = 4096
    limits.maxRequestLineBytes = 1024
    limits.maxBodyBytes = 1 << 20

    let whole = HTTPParser.parseRequest(buf, limits: limits, headers: table)
    if case .complete(let h) = whole {
        check(h.headLength <= size, "head length within input")
        check(inRange(h.target, h.headLength) && inRange(h.methodRange, h.headLength), "line ranges within head")
        for i in 0..<table.count { check(inRange(table.name(i), h.headLength) && inRange(table.value(i), h.headLength), "field ranges within head") }
        // A complete head must also be complete when only its own bytes are given.
        let again = HTTPParser.parseRequest(UnsafeRawBufferPointer(rebasing: buf[0..<h.headLength]), limits: limits, headers: table)
        check(again == whole, "same head from exactly its bytes")
    }
    // Any strict prefix of a complete head is incomplete, never an error or a different head.
    if case .complete(let h) = whole, h.headLength > 1 {
        let cut = size % h.headLength
        let prefix = HTTPParser.parseRequest(UnsafeRawBufferPointer(rebasing: buf[0..<cut]), limits: limits, headers: table)
        check(prefix == .incomplete, "prefix of a head is incomplete")
    }

    if case .complete(let r) = HTTPParser.parseResponse(buf, requestMethod: .get, limits: limits, headers: table) {
        check(r.headLength <= size && r.status >= 100 && r.status <= 999, "response head sane")
    }

    // Chunked: scanning in two pieces gives the same end as scanning whole.
    var one = ChunkedScanner()
    let a = one.scan(buf, limits: limits)
    var two = ChunkedScanner()
    let split = size / 2
    var b = two.scan(UnsafeRawBufferPointer(rebasing: buf[0..<split]), limits: limits)
    if b == .needMore {
        switch two.scan(UnsafeRawBufferPointer(rebasing: buf[split...]), limits: limits) {
        case .done(let n): b = .done(split + n)
        case let other: b = other
        }
    }
    switch (a, b) {
    case (.done(let x), .done(let y)): check(x == y && x <= size, "chunked end independent of split")
    case (.needMore, .needMore), (.failed, .failed): break
    default: check(false, "chunked outcome independent of split")
    }
    return 0
}
