import Testing
@testable import WeirHTTP

/// Tests run in parallel: each parse gets its own table unless a test passes one.
func request(_ text: String, limits: HTTPLimits = HTTPLimits(), table: HeaderTable = HeaderTable(capacity: 128)) -> ParseOutcome<RequestHead> {
    Array(text.utf8).withUnsafeBytes { HTTPParser.parseRequest($0, limits: limits, headers: table) }
}

func response(_ text: String, method: Method = .get) -> ParseOutcome<ResponseHead> {
    Array(text.utf8).withUnsafeBytes { HTTPParser.parseResponse($0, requestMethod: method, limits: HTTPLimits(), headers: HeaderTable(capacity: 128)) }
}

func head(_ text: String, table: HeaderTable = HeaderTable(capacity: 128)) -> RequestHead? {
    if case .complete(let h) = request(text, table: table) { return h }
    return nil
}

func status(_ text: String) -> Int? {
    if case .failed(let e) = request(text) { return e.status }
    return nil
}

func slice(_ text: String, _ r: ByteRange) -> String {
    String(decoding: Array(text.utf8)[Int(r.start)..<Int(r.end)], as: UTF8.self)
}

@Suite struct RequestParserTests {
    @Test func aSimpleGetParsesInPlace() throws {
        let text = "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\nBODY"
        let table = HeaderTable(capacity: 8)
        let h = try #require(head(text, table: table))
        #expect(h.method == .get)
        #expect(slice(text, h.target) == "/index.html?q=1")
        #expect(h.minorVersion == 1)
        #expect(h.headLength == text.utf8.count - 4)
        #expect(h.framing == .none)
        #expect(h.keepAlive)
        #expect(slice(text, h.host!) == "example.com")
        #expect(table.count == 2)
        #expect(slice(text, table.name(1)) == "User-Agent")
        #expect(slice(text, table.value(1)) == "t")
    }

    @Test func everyPrefixOfAGoodHeadIsIncomplete() {
        let text = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n"
        let bytes = Array(text.utf8)
        for n in 0..<bytes.count {
            let r = Array(bytes[0..<n]).withUnsafeBytes { HTTPParser.parseRequest($0, limits: HTTPLimits(), headers: HeaderTable(capacity: 8)) }
            #expect(r == .incomplete, "prefix of \(n) bytes")
        }
    }

    @Test func framingFromContentLengthAndChunked() {
        #expect(head("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 42\r\n\r\n")?.framing == .contentLength(42))
        #expect(head("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")?.framing == BodyFraming.none)
        #expect(head("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")?.framing == .chunked)
        #expect(head("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n")?.framing == .chunked)
        // Equal values as a list or as two fields are refused, not forwarded as they came (RFC
        // 9110 section 8.6 allows only refusing or rewriting them; found by the connection fuzzer).
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 7, 7\r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 7, \r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: ,7\r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n") == 400)
    }

    @Test func smugglingAttemptsAreRefusedWith400() {
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\n") == 400)
        #expect(status("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n  folded\r\n\r\n") == 400)
        #expect(status("GET / HTTP/1.1\nHost: h\n\n") == 400)
        #expect(status("GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n") == 400)
        #expect(status("GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n") == 400)
        #expect(status("GET / HTTP/1.1\r\nHost: h\r\nX: a\u{0}b\r\n\r\n") == 400)
        #expect(status("GET / HTTP/1.1\r\nHost: h\r\nX\u{1}: a\r\n\r\n") == 400)
        #expect(status("GET /a\u{7F}b HTTP/1.1\r\nHost: h\r\n\r\n") == 400)
        #expect(status("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n") == 400)
        #expect(status("GET  / HTTP/1.1\r\nHost: h\r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n") == 400)
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n") == 400)
    }

    @Test func hostRules() {
        #expect(status("GET / HTTP/1.1\r\n\r\n") == 400)
        #expect(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == 400)
        #expect(head("GET / HTTP/1.0\r\n\r\n") != nil)
    }

    @Test func connectionSemantics() {
        #expect(head("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")?.keepAlive == false)
        #expect(head("GET / HTTP/1.0\r\n\r\n")?.keepAlive == false)
        #expect(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")?.keepAlive == true)
        #expect(head("GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n")?.expectContinue == true)
        #expect(head("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n")?.upgrade == true)
        #expect(head("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")?.upgrade == false)
    }

    @Test func versionsAndTargets() {
        #expect(status("GET / HTTP/2.0\r\nHost: h\r\n\r\n") == 505)
        #expect(status("GET / HTTX/1.1\r\nHost: h\r\n\r\n") == 400)
        #expect(head("GET / HTTP/1.2\r\nHost: h\r\n\r\n")?.minorVersion == 1)
        #expect(head("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n") != nil)
        #expect(status("GET * HTTP/1.1\r\nHost: h\r\n\r\n") == 400)
        #expect(head("GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n") != nil)
        #expect(status("GET example.com HTTP/1.1\r\nHost: h\r\n\r\n") == 400)
        #expect(status("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n") == 501)
        #expect(head("\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")?.headLength == 29)
        #expect(head("PURGE /x HTTP/1.1\r\nHost: h\r\n\r\n")?.method == .other)
        #expect(status("get\u{1} / HTTP/1.1\r\nHost: h\r\n\r\n") == 400)
    }

    @Test func limitsGive431And413() {
        var limits = HTTPLimits()
        limits.maxRequestLineBytes = 32
        #expect(request("GET /" + String(repeating: "a", count: 40) + " HTTP/1.1\r\nHost: h\r\n\r\n", limits: limits) == .failed(HTTPError(.headersTooLarge, "")))
        // Over the limit with no line end yet: refuse now rather than wait for more.
        #expect(request("GET /" + String(repeating: "a", count: 40), limits: limits) == .failed(HTTPError(.headersTooLarge, "")))
        limits = HTTPLimits()
        limits.maxHeaderBytes = 64
        #expect(request("GET / HTTP/1.1\r\nHost: h\r\nX: " + String(repeating: "v", count: 80) + "\r\n\r\n", limits: limits) == .failed(HTTPError(.headersTooLarge, "")))
        limits = HTTPLimits()
        limits.maxHeaderCount = 3
        #expect(request("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits: limits) == .failed(HTTPError(.headersTooLarge, "")))
        limits = HTTPLimits()
        limits.maxBodyBytes = 100
        #expect(request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n", limits: limits) == .failed(HTTPError(.bodyTooLarge, "")))
        #expect(status("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: br, chunked\r\n\r\n") == 501)
    }

    @Test func valuesAreTrimmedOfOptionalWhitespace() throws {
        let text = "GET / HTTP/1.1\r\nHost:   spaced.example \t\r\n\r\n"
        let h = try #require(head(text))
        #expect(slice(text, h.host!) == "spaced.example")
    }
}

@Suite struct ResponseParserTests {
    @Test func framingFollowsRFC9112() {
        func framing(_ t: String, _ m: Method = .get) -> BodyFraming? {
            if case .complete(let h) = response(t, method: m) { return h.framing }
            return nil
        }
        #expect(framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n") == .contentLength(5))
        #expect(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") == .chunked)
        #expect(framing("HTTP/1.1 200 OK\r\n\r\n") == .untilClose)
        #expect(framing("HTTP/1.1 204 No Content\r\n\r\n") == BodyFraming.none)
        #expect(framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n") == BodyFraming.none)
        #expect(framing("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", .head) == BodyFraming.none)
        #expect(framing("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n") == BodyFraming.none)
        #expect(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n") == .untilClose)
    }

    @Test func statusLineAndKeepAlive() throws {
        guard case .complete(let h) = response("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n") else { Issue.record("no parse"); return }
        #expect(h.status == 404)
        #expect(h.keepAlive)
        guard case .complete(let c) = response("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n") else { Issue.record("no parse"); return }
        #expect(!c.keepAlive)
        guard case .complete(let e) = response("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n") else { Issue.record("empty reason"); return }
        #expect(e.status == 200)
    }

    @Test func badResponsesAreBadGateway() {
        for bad in ["HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 200 OK\nContent-Length: 0\n\n", "HTTX/1.1 200 OK\r\n\r\n",
                    "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "HTTP/1.1 099 Odd\r\n\r\n"] {
            if case .failed(let e) = response(bad) { #expect(e.status == 502, "\(bad)") } else { Issue.record("accepted: \(bad)") }
        }
    }
}

@Suite struct ChunkedScannerTests {
    func scanAll(_ text: String, pieces: Int = 1, limits: HTTPLimits = HTTPLimits()) -> ChunkedScanner.Result {
        let bytes = Array(text.utf8)
        var scanner = ChunkedScanner()
        let size = max(1, (bytes.count + pieces - 1) / pieces)
        var offset = 0
        while offset < bytes.count {
            let piece = Array(bytes[offset..<min(bytes.count, offset + size)])
            let r = piece.withUnsafeBytes { scanner.scan($0, limits: limits) }
            switch r {
            case .needMore: offset += piece.count
            case .done(let n): return .done(offset + n)
            case .failed: return r
            }
        }
        return .needMore
    }

    @Test func findsTheEndWhateverTheBufferBoundaries() {
        let body = "4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n"
        for pieces in [1, 2, 3, 7, body.utf8.count] {
            #expect(scanAll(body + "NEXT", pieces: pieces) == .done(body.utf8.count), "\(pieces) pieces")
        }
        #expect(scanAll("0\r\n\r\n") == .done(5))
        #expect(scanAll("5\r\nhel") == .needMore)
    }

    @Test func malformedChunksAreRefused() {
        for bad in ["x\r\n", "5\nhello\r\n0\r\n\r\n", "3\r\nhello\r\n", "3\r\nabc\n0\r\n\r\n", "FFFFFFFFFFFFFFFF\r\n", "0\r\n\n"] {
            if case .failed(let e) = scanAll(bad) { #expect(e.status == 400, "\(bad)") } else { Issue.record("accepted \(bad)") }
        }
        // Chunk lines another parser could read differently (RFC 9112 section 7.1): text after
        // the size without ';', whitespace after the size, bad or unclosed extensions, and
        // trailer lines that are not fields.
        for bad in ["2 junk\r\nab\r\n0\r\n\r\n", "a \r\n0123456789\r\n0\r\n\r\n", "2;x=\"open\r\nab\r\n0\r\n\r\n",
                    "2;\r\nab\r\n0\r\n\r\n", "2;a b\r\nab\r\n0\r\n\r\n", "2;a=\r\nab\r\n0\r\n\r\n", "2;a=b c\r\nab\r\n0\r\n\r\n",
                    "2;a=\"x\"y\r\nab\r\n0\r\n\r\n", "2;a=@\r\nab\r\n0\r\n\r\n", "2\t\r\nab\r\n0\r\n\r\n", "0x2\r\nab\r\n0\r\n\r\n",
                    "0\r\nno colon\r\n\r\n", "0\r\n: empty\r\n\r\n", "0\r\nX y: 1\r\n\r\n", "0\r\n X: 1\r\n\r\n"] {
            if case .failed(let e) = scanAll(bad) { #expect(e.status == 400, "\(bad)") } else { Issue.record("accepted \(bad)") }
        }
        // What the grammar allows passes, in any split.
        for good in ["2;a\r\nab\r\n0\r\n\r\n", "2 ; a = b\r\nab\r\n0\r\n\r\n", "2;a=\"x y;\\\"z\"\r\nab\r\n0\r\n\r\n",
                     "2;a=1;b;c=\"\"\r\nab\r\n0\r\n\r\n", "2\t;a\r\nab\r\n0;last\r\nX-T: v v\r\n\r\n"] {
            for pieces in [1, 3, good.utf8.count] {
                #expect(scanAll(good, pieces: pieces) == .done(good.utf8.count), "\(good) in \(pieces)")
            }
        }
        var limits = HTTPLimits()
        limits.maxBodyBytes = 10
        if case .failed(let e) = scanAll("B\r\nhello world\r\n0\r\n\r\n", limits: limits) { #expect(e.status == 413) } else { Issue.record("no 413") }
    }
}
