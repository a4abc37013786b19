// HTTP/2 through the real binary: curl (h2 by ALPN over TLS, and h2c with prior knowledge),
// h2load with many streams per connection, and the known HTTP/2 attacks written frame by frame
// (Support/h2_attacks.py), each checked to leave Weir's memory and CPU bounded and Weir serving.
import Foundation
import Testing
import WeirCore
import WeirDemo

/// Runs Support/h2_attacks.py against `port`; its `result k=v ...` line as a dictionary.
func h2Attack(_ port: UInt16, _ attack: String, _ n: Int = 0) throws -> [String: String] {
    let script = repositoryRoot.appendingPathComponent("Tests/IntegrationTests/Support/h2_attacks.py").path
    let (_, out) = try runProcess("/usr/bin/python3", [script, String(port), attack, String(n)], seconds: 60)
    guard let line = out.split(separator: "\n").first(where: { $0.hasPrefix("result ") }) else {
        throw LoopbackError(message: "h2_attacks.py \(attack) printed no result: \(out)")
    }
    var result: [String: String] = [:]
    for part in line.dropFirst(7).split(separator: " ") {
        let kv = part.split(separator: "=", maxSplits: 1)
        if kv.count == 2 { result[String(kv[0])] = String(kv[1]) }
    }
    return result
}

/// Resident memory (KiB) and CPU time (ms, user + system) of a process, from /proc.
func usage(_ pid: Int32) -> (rssKiB: Int, cpuMs: Int) {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let rss = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
        .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") } ?? 0
    let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
    let ticks = fields.count > 12 ? (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0) : 0
    return (rss, ticks * 1000 / Int(sysconf(Int32(_SC_CLK_TCK))))
}

func curlH2(_ url: String, _ extra: [String], size: Bool = false) throws -> (Int32, String) {
    try runProcess("/usr/bin/curl", ["-sS", "-m", "20", "-w", size ? "\n%{http_version} %{http_code} %{size_download}" : "\n%{http_version} %{http_code}"] + extra + [url])
}

@Suite(.serialized) struct HTTP2Tests {
    func config(upstream: HTTPUpstream, certs: TestCertificates, httpExtra: String = "", routeExtra: String = "") -> String {
        """
        shards: 2
        admin: { address: 127.0.0.3:0 }
        listeners:
          - name: h2c
            address: 127.0.0.1:0
            protocol: http
            http: { \(httpExtra) }
            routes:
              - { cluster: app \(routeExtra) }
          - name: h2
            address: 127.0.0.2:0
            protocol: http
            http: { \(httpExtra) }
            tls:
              certificates:
                - { cert: \(certs.path("a.pem")), key: \(certs.path("a.key")) }
            routes:
              - { cluster: app \(routeExtra) }
        clusters:
          - name: app
            connect_timeout: 1s
            endpoints: [{ address: "127.0.0.1:\(upstream.port)" }]
        """
    }

    @Test func curlSpeaksHTTP2OverTLSAndWithPriorKnowledge() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let weir = try WeirProcess(yaml: config(upstream: up, certs: certs))
        defer { weir.stop() }
        let plain = try weir.port("h2c"), tls = try weir.port("h2")
        let tlsArgs = ["--cacert", certs.path("ca.pem"), "--resolve", "a.example.com:\(tls):127.0.0.2"]
        // h2 chosen by ALPN (offered by default), and h2c by the preface.
        let (s1, o1) = try curlH2("https://a.example.com:\(tls)/over-tls", ["--http2"] + tlsArgs)
        #expect(s1 == 0 && o1.hasSuffix("\n2 200") && o1.contains("up /over-tls") && o1.contains("X-Forwarded-Proto: https"), "\(o1)")
        let (s2, o2) = try curlH2("http://127.0.0.1:\(plain)/prior", ["--http2-prior-knowledge"])
        #expect(s2 == 0 && o2.hasSuffix("\n2 200") && o2.contains("up /prior") && o2.contains("X-Forwarded-Proto: http"), "\(o2)")
        // HTTP/1.1 still works on both.
        let (_, o3) = try curlH2("http://127.0.0.1:\(plain)/one", [])
        #expect(o3.hasSuffix("\n1.1 200"), "\(o3)")
        let (_, o4) = try curlH2("https://a.example.com:\(tls)/one", ["--http1.1"] + tlsArgs)
        #expect(o4.hasSuffix("\n1.1 200"), "\(o4)")
        // Bodies both ways: with a length, without one (sent chunked to the HTTP/1.1 upstream),
        // a chunked response and a large one (flow control on both sides).
        let body = FileManager.default.temporaryDirectory.appendingPathComponent("weir-h2-body-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: body) }
        let bytes = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
        try Data(bytes).write(to: body)
        let out = body.appendingPathExtension("out")
        defer { try? FileManager.default.removeItem(at: out) }
        for headers in [[String](), ["-H", "Transfer-Encoding: chunked"]] {
            let (s, o) = try curlH2("http://127.0.0.1:\(plain)/echo", ["--http2-prior-knowledge", "--data-binary", "@\(body.path)", "-o", out.path] + headers)
            #expect(s == 0 && o.hasSuffix("2 200"), "\(o)")
            #expect((try? Data(contentsOf: out)) == Data(bytes), "echoed body differs (\(headers))")
        }
        let (s5, o5) = try curlH2("http://127.0.0.1:\(plain)/chunked?n=200000", ["--http2-prior-knowledge", "-o", "/dev/null"], size: true)
        #expect(s5 == 0 && o5.hasSuffix("2 200 200000"), "\(o5)")
        let (s6, o6) = try curlH2("https://a.example.com:\(tls)/big?n=5000000", ["--http2", "-o", "/dev/null"] + tlsArgs, size: true)
        #expect(s6 == 0 && o6.hasSuffix("2 200 5000000"), "\(o6)")
        // A chunked body's trailers arrive as HTTP/2 trailers (curl dumps them with the headers).
        let (s9, o9) = try runProcess("/usr/bin/curl", ["-sS", "-m", "20", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null",
                                                        "http://127.0.0.1:\(plain)/chunked?n=30000"])
        #expect(s9 == 0 && o9.lowercased().contains("x-trailer: yes"), "\(o9)")
        // A status from the upstream, and one Weir makes (no route: 404 with its body).
        let (_, o7) = try curlH2("http://127.0.0.1:\(plain)/status/503", ["--http2-prior-knowledge"])
        #expect(o7.hasSuffix("2 503"), "\(o7)")
        // Cookie crumbs reach HTTP/1.1 as one field (RFC 9113 8.2.3).
        let (_, o8) = try curlH2("http://127.0.0.1:\(plain)/cookies", ["--http2-prior-knowledge", "-H", "Cookie: a=1", "-H", "Cookie: b=2"])
        #expect(o8.contains("2 200") && o8.contains("Cookie: a=1; b=2"), "\(o8)")
        let m = try parsePrometheus(admin(try weir.adminAddress(), "GET", "/stats/prometheus").1)
        #expect((m["weir_http2_connections_total{}"] ?? 0) >= 8)
        #expect((m["weir_http2_streams_total{outcome=\"served\"}"] ?? 0) >= 8)
    }

    /// Drain (SIGTERM): the connection is told GOAWAY, the stream in flight finishes, Weir exits.
    @Test func drainLetsStreamsInFlightFinish() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let weir = try WeirProcess(yaml: config(upstream: up, certs: certs))
        defer { weir.stop() }
        let plain = try weir.port("h2c")
        let curl = Process()
        curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        curl.arguments = ["-sS", "-m", "20", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "http://127.0.0.1:\(plain)/slow?ms=1500"]
        let out = Pipe()
        curl.standardOutput = out
        try curl.run()
        // The request is in flight (the upstream answers in 1.5 s) when the drain starts.
        let adminAddress = try weir.adminAddress()
        #expect(secondsUntil(limit: 5) { admin(adminAddress, "GET", "/stats/prometheus").1.contains("weir_http2_streams_total{outcome=\"served\"} 1") } != nil)
        weir.signal(SIGTERM)
        curl.waitUntilExit()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(curl.terminationStatus == 0 && text == "2 200", "\(text)")
        #expect(secondsUntil(limit: 10) { !weir.process.isRunning } != nil, "weir exits once the drained connection closed")
    }

    @Test func h2loadRunsManyStreamsPerConnection() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/h2load") else {
            throw LoopbackError(message: "no /usr/bin/h2load: run scripts/setup-debian.sh --tests (it installs nghttp2-client)")
        }
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let weir = try WeirProcess(yaml: config(upstream: up, certs: certs))
        defer { weir.stop() }
        for url in ["http://127.0.0.1:\(try weir.port("h2c"))/hello", "https://127.0.0.2:\(try weir.port("h2"))/hello"] {
            let (_, out) = try runProcess("/usr/bin/h2load", ["-n", "2000", "-c", "4", "-m", "32", url], seconds: 60)
            #expect(out.contains("2000 succeeded, 0 failed, 0 errored"), "\(url): \(out)")
        }
    }

    /// Each attack against a listener with tight limits: Weir ends it the way the limit says,
    /// its memory and CPU stay bounded, and it serves a normal request afterwards.
    @Test func knownHTTP2AttacksAreBounded() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let weir = try WeirProcess(yaml: config(upstream: up, certs: certs,
                                                httpExtra: "http2_max_concurrent_streams: 10, http2_reset_burst: 50, http2_resets_per_second: 10, http2_max_pending_acks: 100, max_header_bytes: 16KiB",
                                                routeExtra: ", timeout: 2s"))
        defer { weir.stop() }
        let port = try weir.port("h2c")
        let pid = weir.process.processIdentifier
        #expect(try h2Attack(port, "normal")["served"] == "1")
        let before = usage(pid)
        func bounded(_ name: String) {
            let after = usage(pid)
            #expect(after.rssKiB - before.rssKiB < 96 * 1024, "\(name): resident memory grew from \(before.rssKiB) to \(after.rssKiB) KiB")
            #expect(after.cpuMs - before.cpuMs < 20_000, "\(name): \(after.cpuMs - before.cpuMs) ms of CPU")
            #expect((try? h2Attack(port, "normal")["served"]) == "1", "\(name): no answer afterwards")
        }
        // Rapid reset: past the burst, GOAWAY ENHANCE_YOUR_CALM (0xb).
        let rr = try h2Attack(port, "rapid_reset", 5000)
        #expect(rr["goaway"] == "11", "rapid reset: \(rr)")
        bounded("rapid reset")
        // A CONTINUATION flood: the connection ends long before the flood does.
        let cf = try h2Attack(port, "continuation", 100_000)
        #expect(cf["closed"] == "1" || cf["goaway"] != "none", "continuation flood: \(cf)")
        #expect(Int(cf["sent"] ?? "0")! < 100_000, "continuation flood: all of it was read: \(cf)")
        bounded("continuation flood")
        // An HPACK bomb: a 2 KB block expanding to 8 MB of headers is refused (431) on its
        // stream; the connection goes on.
        let hb = try h2Attack(port, "hpack_bomb", 2000)
        #expect(hb["answered_bomb"] == "1" && hb["served_after"] == "1", "hpack bomb: \(hb)")
        bounded("hpack bomb")
        // PING and SETTINGS floods from a client that never reads: cut at the pending-ack limit.
        for flood in ["ping_flood", "settings_flood"] {
            let f = try h2Attack(port, flood, 200_000)
            #expect(f["closed"] == "1", "\(flood): \(f)")
            bounded(flood)
        }
        // A reader that never opens its window: the stream is reset at the route timeout.
        let zw = try h2Attack(port, "zero_window", 20_000_000)
        #expect(zw["stream_reset"] == "1", "zero window: \(zw)")
        bounded("zero window")
        // More streams than the limit: the extra ones are refused, the others answered.
        let tm = try h2Attack(port, "too_many_streams", 40)
        #expect(Int(tm["refused"] ?? "0")! >= 30 && Int(tm["responses"] ?? "0")! >= 1, "too many streams: \(tm)")
        bounded("too many streams")
        let m = try parsePrometheus(admin(try weir.adminAddress(), "GET", "/stats/prometheus").1)
        #expect((m["weir_http2_goaway_total{reason=\"flood\"}"] ?? 0) >= 1)
        #expect((m["weir_http2_streams_total{outcome=\"headers_too_large\"}"] ?? 0) >= 1)
        #expect((m["weir_http2_streams_total{outcome=\"reset_by_client\"}"] ?? 0) >= 1)
    }
}
