import Testing
@testable import WeirHTTP

/// Parses `text`, forwards it with `rules`, and returns the head written.
/// How `forward` treats X-Forwarded-Client-Cert (the element given as text).
enum CertCase { case keep, remove, append(String), set(String) }

func forward(_ text: String, rules: ForwardingRules = ForwardingRules(), client: String = "192.0.2.7",
             https: Bool = false, upgrade: Bool = false, capacity: Int = 4096, cert: CertCase = .keep) -> String? {
    let table = HeaderTable(capacity: 64)
    let bytes = Array(text.utf8)
    return bytes.withUnsafeBytes { src -> String? in
        guard case .complete(let head) = HTTPParser.parseRequest(src, limits: HTTPLimits(), headers: table) else { return "unparsed" }
        var out = [UInt8](repeating: 0, count: capacity)
        let clientBytes = Array(client.utf8), id = Array("req-1".utf8)
        var element: [UInt8] = []
        switch cert { case .append(let e), .set(let e): element = Array(e.utf8); default: break }
        let n = out.withUnsafeMutableBytes { o in
            clientBytes.withUnsafeBytes { c in id.withUnsafeBytes { i in element.withUnsafeBytes { e in
                let header: ClientCertHeader
                switch cert { case .keep: header = .keep; case .remove: header = .remove; case .append: header = .append(e); case .set: header = .set(e) }
                return HeadWriter.writeRequest(head, source: src, headers: table, rules: rules,
                                               context: ForwardContext(clientAddress: c, https: https, requestID: i, upgrade: upgrade, clientCert: header), into: o)
            } } }
        }
        return n.map { String(decoding: out[0..<$0], as: UTF8.self) }
    }
}

@Suite struct HeadWriterTests {
    @Test func aPlainRequestGainsForwardingFields() {
        let out = forward("GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n")
        #expect(out == "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Request-Id: req-1\r\n\r\n")
    }

    @Test func hopByHopFieldsAndThoseConnectionNamesAreDropped() {
        let out = forward("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\nTE: trailers\r\nProxy-Connection: x\r\nX-Keep: 2\r\n\r\n")!
        #expect(!out.contains("Connection:") && !out.contains("Keep-Alive") && !out.contains("X-Secret") && !out.contains("TE:"))
        #expect(out.contains("X-Keep: 2\r\n"))
    }

    /// `Connection: content-length` must not strip the Content-Length Weir framed the body by:
    /// the upstream would read the body as a second request (smuggled past routing).
    @Test func connectionCannotNominateTheFieldsThatFrameOrRouteAMessage() {
        let out = forward("POST / HTTP/1.1\r\nHost: h\r\nConnection: content-length, host, transfer-encoding, x-drop\r\nContent-Length: 3\r\nX-Drop: 1\r\n\r\n")!
        #expect(out.contains("Content-Length: 3\r\n"))
        #expect(out.contains("Host: h\r\n"))
        #expect(!out.contains("X-Drop") && !out.contains("Connection:"))
        let chunked = forward("POST / HTTP/1.1\r\nHost: h\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n")!
        #expect(chunked.contains("Transfer-Encoding: chunked\r\n"))
        let text = "HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\n"
        let table = HeaderTable(capacity: 32)
        let bytes = Array(text.utf8)
        let response = bytes.withUnsafeBytes { buf -> String? in
            guard case .complete(let head) = HTTPParser.parseResponse(buf, requestMethod: .get, limits: HTTPLimits(), headers: table) else { return nil }
            var out = [UInt8](repeating: 0, count: 1024)
            let n = out.withUnsafeMutableBytes { HeadWriter.writeResponse(head, source: buf, headers: table, remove: [], add: [], connection: .none, into: $0) }
            return n.map { String(decoding: out[0..<$0], as: UTF8.self) }
        }
        #expect(response?.contains("Content-Length: 2\r\n") == true)
    }

    /// X-Forwarded-Client-Cert as Envoy's modes need it: kept, removed, the client's joined with
    /// the peer's element in one header, or the element alone.
    @Test func theClientCertHeaderIsKeptRemovedAppendedOrSet() {
        let withOne = "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Client-Cert: By=a;Hash=1\r\n\r\n"
        let mine = "By=spiffe://w;Hash=2;URI=spiffe://c"
        #expect(forward(withOne, cert: .keep)!.contains("X-Forwarded-Client-Cert: By=a;Hash=1\r\n"))
        #expect(!forward(withOne, cert: .remove)!.lowercased().contains("x-forwarded-client-cert"))
        let appended = forward(withOne, cert: .append(mine))!
        #expect(appended.contains("X-Forwarded-Client-Cert: By=a;Hash=1,\(mine)\r\n") && appended.split(separator: "\n").filter { $0.contains("Client-Cert") }.count == 1, "\(appended)")
        let set = forward(withOne, cert: .set(mine))!
        #expect(set.contains("X-Forwarded-Client-Cert: \(mine)\r\n") && !set.contains("By=a"), "\(set)")
        #expect(forward("GET / HTTP/1.1\r\nHost: h\r\n\r\n", cert: .append(mine))!.contains("X-Forwarded-Client-Cert: \(mine)\r\n"))
        // A route that removes the field removes the client's values in append mode too.
        var rules = ForwardingRules()
        rules.removeHeaders = [Array("x-forwarded-client-cert".utf8)]
        let removed = forward(withOne, rules: rules, cert: .append(mine))!
        #expect(removed.contains("X-Forwarded-Client-Cert: \(mine)\r\n") && !removed.contains("By=a"), "\(removed)")
        // Several client headers join in one, in their order, before Weir's element.
        let two = forward("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Client-Cert: By=a\r\nx-forwarded-client-cert: By=b\r\n\r\n", cert: .append(mine))!
        #expect(two.contains("X-Forwarded-Client-Cert: By=a,By=b,\(mine)\r\n") && !two.contains("x-forwarded-client-cert: By=b"), "\(two)")
    }

    @Test func anExistingForwardedForIsAppendedToAndARequestIdKept() {
        let out = forward("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Request-Id: abc\r\n\r\n", https: true)!
        #expect(out.contains("X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n"))
        #expect(out.contains("X-Forwarded-Proto: https\r\n"))
        #expect(!out.contains("X-Forwarded-Proto: http\r\n"))
        #expect(out.contains("X-Request-Id: abc\r\n") && !out.contains("req-1"))
    }

    @Test func prefixHostAndFieldRewrites() {
        var rules = ForwardingRules()
        rules.prefixMatchedBytes = 4          // "/api"
        rules.prefixReplacement = Array("/v2".utf8)
        rules.hostRewrite = Array("backend.internal".utf8)
        rules.removeHeaders = [Array("cookie".utf8)]
        rules.addHeaders = [Array("X-Via: weir".utf8)]
        let out = forward("POST /api/users HTTP/1.1\r\nHost: example.com\r\nCookie: s=1\r\nContent-Length: 0\r\n\r\n", rules: rules)!
        #expect(out.hasPrefix("POST /v2/users HTTP/1.1\r\nHost: backend.internal\r\nContent-Length: 0\r\n"))
        #expect(!out.contains("Cookie"))
        #expect(out.hasSuffix("X-Via: weir\r\n\r\n"))
    }

    @Test func anUpgradeKeepsItsFields() {
        let out = forward("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", upgrade: true)!
        #expect(out.contains("Upgrade: websocket\r\n"))
        #expect(out.contains("Connection: upgrade\r\n"))
        let plain = forward("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")!
        #expect(!plain.contains("Upgrade"))
    }

    /// An HTTP/1.0 request goes upstream as 1.0 (asking for keep-alive), so the upstream cannot
    /// answer with chunked framing the client would not understand.
    @Test func http10RequestsGoUpstreamAs10AndChunkedFramingStays() {
        let ten = forward("GET / HTTP/1.0\r\n\r\n")!
        #expect(ten.hasPrefix("GET / HTTP/1.0\r\n"))
        #expect(ten.contains("Connection: keep-alive\r\n"))
        #expect(forward("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")!.contains("Transfer-Encoding: chunked\r\n"))
    }

    @Test func responsesLoseHopByHopFieldsAndGainWhatTheRouteSays() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Internal: yes\r\nServer: s\r\n\r\n"
        let table = HeaderTable(capacity: 64)
        let bytes = Array(text.utf8)
        let out: String? = bytes.withUnsafeBytes { src in
            guard case .complete(let head) = HTTPParser.parseResponse(src, requestMethod: .get, limits: HTTPLimits(), headers: table) else { return nil }
            var buf = [UInt8](repeating: 0, count: 1024)
            let n = buf.withUnsafeMutableBytes {
                HeadWriter.writeResponse(head, source: src, headers: table, remove: [Array("x-internal".utf8)],
                                         add: [Array("X-Served-By: weir".utf8)], connection: .close, into: $0)
            }
            return n.map { String(decoding: buf[0..<$0], as: UTF8.self) }
        }
        #expect(out == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: s\r\nX-Served-By: weir\r\nConnection: close\r\n\r\n")
    }

    @Test func aBufferTooSmallIsReportedNotOverrun() {
        #expect(forward("GET / HTTP/1.1\r\nHost: h\r\n\r\n", capacity: 20) == nil)
    }
}
