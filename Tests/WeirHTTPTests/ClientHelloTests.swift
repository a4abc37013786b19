import Testing
@testable import WeirHTTP

/// A ClientHello captured from `openssl s_client -servername api.Example.com -alpn http/1.1`.
let capturedHello = ClientHello.sample

func sni(_ bytes: [UInt8]) -> String? {
    bytes.withUnsafeBytes { b -> String? in
        guard case .hello(let name, _) = ClientHello.parse(b) else { return "not a hello" }
        return name.map { String(decoding: b[Int($0.start)..<Int($0.end)], as: UTF8.self) }
    }
}

@Suite struct ClientHelloTests {
    @Test func theServerNameOfARealClientHello() {
        #expect(sni(capturedHello) == "api.Example.com")
    }

    @Test func everyPrefixIsIncompleteNotWrong() {
        for n in 0..<capturedHello.count {
            let outcome = Array(capturedHello[0..<n]).withUnsafeBytes { ClientHello.parse($0) }
            #expect(outcome == .incomplete, "prefix of \(n) bytes")
        }
    }

    @Test func otherProtocolsAreNotTLS() {
        let http = Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
        #expect(http.withUnsafeBytes { ClientHello.parse($0) } == .notTLS)
        var alert = capturedHello
        alert[0] = 0x15
        #expect(alert.withUnsafeBytes { ClientHello.parse($0) } == .notTLS)
    }

    @Test func aHelloWithoutServerNameHasNone() {
        // Rename the server_name extension (type 0) to an unknown type: no SNI left.
        var h = capturedHello
        var p = 9 + 2 + 32
        p += 1 + Int(h[p])
        p += 2 + (Int(h[p]) << 8 | Int(h[p + 1]))
        p += 1 + Int(h[p])
        let end = p + 2 + (Int(h[p]) << 8 | Int(h[p + 1]))
        p += 2
        while p + 4 <= end {
            if h[p] == 0 && h[p + 1] == 0 { h[p + 1] = 0x77 }
            p += 4 + (Int(h[p + 2]) << 8 | Int(h[p + 3]))
        }
        #expect(sni(h) == nil)
    }

    @Test func truncatedLengthsDoNotReadPastTheEnd() {
        // Corrupt each length byte in turn; parsing must finish without trapping.
        for i in 0..<capturedHello.count {
            var h = capturedHello
            h[i] = 0xFF
            _ = h.withUnsafeBytes { ClientHello.parse($0) }
        }
    }
}
