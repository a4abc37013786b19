import Testing
@testable import WeirHTTP

/// A ClientHello captured from `openssl s_client -servername api.Example.com -alpn http/1.1`.
let capturedHello: [UInt8] = {
    let hex = "160301014b010001470303c848bc367b181609cdfbe131835d0c1ae2ff7b91725e7258e10dd744be7e375720b627fcf56753d07038a712bd769d8cc28707117874dd34032a26fd588d25ec8d003e130213031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff010000c000000014001200000f6170692e4578616d706c652e636f6d000b000403000102000a00160014001d0017001e0019001801000101010201030104002300000010000b000908687474702f312e310016000000170000000d002a0028040305030603080708080809080a080b080408050806040105010601030303010302040205020602002b0009080304030303020301002d00020101003300260024001d00206ccd22a83f1b02936ceec594524da60c9e477547d270f4cb3655adbe530be455"
    var out: [UInt8] = []
    var i = hex.startIndex
    while i < hex.endIndex {
        let j = hex.index(i, offsetBy: 2)
        out.append(UInt8(hex[i..<j], radix: 16)!)
        i = j
    }
    return out
}()

func sni(_ bytes: [UInt8]) -> String? {
    bytes.withUnsafeBytes { b -> String? in
        guard case .hello(let name) = ClientHello.parse(b) else { return "not a hello" }
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
