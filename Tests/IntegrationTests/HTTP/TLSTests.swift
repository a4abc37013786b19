// TLS termination through the real binary: certificates made at test time with the openssl CLI,
// real clients (curl and openssl s_client), real upstreams.
import Foundation
import Testing
import WeirCore
import WeirDemo

/// A directory of test certificates (see make_certs.sh), removed when this goes.
final class TestCertificates {
    let dir: String
    init() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-certs-\(UUID().uuidString)").path
        let (status, _) = try runProcess("/bin/bash", [repositoryRoot.appendingPathComponent("Tests/IntegrationTests/Support/make_certs.sh").path, dir])
        guard status == 0 else { throw LoopbackError(message: "make_certs.sh failed") }
    }
    func path(_ name: String) -> String { "\(dir)/\(name)" }
    deinit { try? FileManager.default.removeItem(atPath: dir) }
}

/// Runs curl against https://NAME:port/path resolved to 127.0.0.1; (exit status, body + "\n" + code).
func curlTLS(_ port: UInt16, name: String, path: String = "/", certs: TestCertificates, extra: [String] = []) throws -> (Int32, String) {
    try runProcess("/usr/bin/curl", ["-sS", "-m", "10", "--cacert", certs.path("ca.pem"), "--resolve", "\(name):\(port):127.0.0.1",
                                     "-w", "\n%{http_code}"] + extra + ["https://\(name):\(port)\(path)"])
}

/// openssl s_client's report of a handshake (stdin closed at once).
/// With `request`, it is sent and s_client waits for the server to close (so session tickets,
/// which TLS 1.3 sends after the handshake, arrive).
func sClient(_ port: UInt16, _ arguments: [String], request: String? = nil) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
    p.arguments = ["s_client", "-connect", "127.0.0.1:\(port)"] + arguments + (request == nil ? [] : ["-ign_eof"])
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    let input = Pipe()
    p.standardInput = request == nil ? FileHandle.nullDevice : input
    try p.run()
    if let request {
        input.fileHandleForWriting.write(Data(request.utf8))
        try? input.fileHandleForWriting.close()
    }
    let deadline = Date().addingTimeInterval(10)
    var data = Data()
    while p.isRunning && Date() < deadline { data.append(out.fileHandleForReading.availableData) }
    if p.isRunning { p.terminate() }
    data.append(out.fileHandleForReading.readDataToEndOfFile())
    p.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

@Suite(.serialized) struct TLSTests {
    func config(port: UInt16, upstream: HTTPUpstream, certs: TestCertificates, tlsExtra: String = "", defaultCert: String = "default",
                top: String = "") -> String {
        """
        shards: 2
        \(top)
        listeners:
          - name: secure
            address: 127.0.0.1:\(port)
            protocol: http
            tls:
              certificates:
                - { cert: \(certs.path("a.pem")), key: \(certs.path("a.key")), server_names: [a.example.com, "*.a.example.com"] }
                - { cert: \(certs.path("\(defaultCert).pem")), key: \(certs.path("\(defaultCert).key")) }
        \(tlsExtra)
            routes:
              - cluster: app
        clusters:
          - name: app
            endpoints: [{ address: "127.0.0.1:\(upstream.port)" }]
        """
    }

    @Test func sniPicksTheCertificateAndRequestsFlow() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let port = try freePort(), adminPort = try freePort()
        let weir = try WeirProcess(yaml: config(port: port, upstream: up, certs: certs, tlsExtra: "      alpn: [http/1.1]",
                                                top: "admin: { address: 127.0.0.1:\(adminPort) }"))
        defer { weir.stop() }
        // curl verifies the chain and the name: each name gets a certificate that covers it.
        let (s1, o1) = try curlTLS(port, name: "a.example.com", path: "/one", certs: certs)
        #expect(s1 == 0 && o1.hasSuffix("\n200"), "\(o1)")
        #expect(o1.contains("up /one") && o1.contains("X-Forwarded-Proto: https"))
        let (s2, o2) = try curlTLS(port, name: "deep.a.example.com", path: "/two", certs: certs)
        #expect(s2 == 0 && o2.contains("up /two"), "\(o2)")
        let (s3, o3) = try curlTLS(port, name: "default.example.com", path: "/three", certs: certs)
        #expect(s3 == 0 && o3.contains("up /three"), "an unknown name gets the default certificate: \(o3)")
        // Without SNI: the default certificate; with one: ALPN picks http/1.1.
        let noSNI = try sClient(port, ["-noservername", "-alpn", "http/1.1"])
        #expect(noSNI.contains("CN = default.example.com") || noSNI.contains("CN=default.example.com"), "\(noSNI)")
        #expect(noSNI.contains("ALPN protocol: http/1.1"))
        let sni = try sClient(port, ["-servername", "x.a.example.com"])
        #expect(sni.contains("CN = a.example.com") || sni.contains("CN=a.example.com"))
        // A 3 MB body both ways over TLS.
        let body = certs.path("body.bin")
        let payload = pseudoRandomBytes(3_000_000, seed: 9)
        FileManager.default.createFile(atPath: body, contents: Data(payload))
        let echoed = certs.path("echoed.bin")
        let (s4, _) = try curlTLS(port, name: "a.example.com", path: "/echo", certs: certs, extra: ["--data-binary", "@\(body)", "-o", echoed])
        #expect(s4 == 0)
        #expect(FileManager.default.contents(atPath: echoed) == Data(payload), "a large body crosses TLS intact")
        let stats = try parsePrometheus(admin(adminPort, "GET", "/stats/prometheus").1)
        #expect((stats["weir_tls_handshakes_total{listener=\"secure\"}"] ?? 0) >= 6)
    }

    /// A response Weir makes on the first request of a TLS 1.3 connection: the session ticket
    /// OpenSSL sends as the handshake ends may still be going out, and the response waits behind
    /// it (it used to reset the connection instead).
    @Test func localResponsesOnAFreshTLSConnectionArrive() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let weir = try WeirProcess(yaml: config(port: 0, upstream: up, certs: certs).replacingOccurrences(of: """
                routes:
                  - cluster: app
            """, with: """
                routes:
                  - { match: { path_prefix: /here }, direct_response: { status: 200, body: "made here" } }
                  - { match: { path_prefix: /app }, cluster: app }
            """))
        defer { weir.stop() }
        let port = try weir.port("secure")
        // The client's Finished and its request in one send, so they arrive in one recv: the
        // ticket goes out as the request is answered.
        let together = """
            import socket, ssl, sys
            ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = ctx.wrap_bio(inc, out, server_hostname="a.example.com")
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.settimeout(5)
            while True:
                try:
                    tls.do_handshake(); break
                except ssl.SSLWantReadError:
                    s.sendall(out.read()); d = s.recv(65536)
                    if not d: sys.exit("closed during the handshake")
                    inc.write(d)
            tls.write(b"GET /here/x HTTP/1.1\\r\\nHost: a.example.com\\r\\nConnection: close\\r\\n\\r\\n")
            s.sendall(out.read())
            got = b""
            while True:
                try: d = s.recv(65536)
                except OSError: break
                if not d: break
                inc.write(d)
                try:
                    while True: got += tls.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError): pass
            print(got.decode(errors="replace").split("\\r\\n")[0])
            """
        for _ in 0..<20 {
            let (_, first) = try runProcess("/usr/bin/python3", ["-c", together, "\(port)", certs.path("ca.pem")])
            #expect(first.trimmingCharacters(in: .whitespacesAndNewlines) == "HTTP/1.1 200 OK", "\(first)")
        }
        for i in 0..<20 {
            let (s1, o1) = try curlTLS(port, name: "a.example.com", path: "/here/\(i)", certs: certs)
            #expect(s1 == 0 && o1 == "made here\n200", "\(o1)")
            let (s2, o2) = try curlTLS(port, name: "a.example.com", path: "/nothing/\(i)", certs: certs)
            #expect(s2 == 0 && o2.hasSuffix("\n404"), "\(o2)")
        }
    }

    @Test func sessionsResume() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let port = try freePort(), adminPort = try freePort()
        let weir = try WeirProcess(yaml: config(port: port, upstream: up, certs: certs, top: "admin: { address: 127.0.0.1:\(adminPort) }"))
        defer { weir.stop() }
        let session = certs.path("session.pem")
        let request = "GET /r HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n"
        let first = try sClient(port, ["-servername", "a.example.com", "-sess_out", session], request: request)
        #expect(first.contains("New, TLSv1.3"), "\(first)")
        let second = try sClient(port, ["-servername", "a.example.com", "-sess_in", session], request: request)
        #expect(second.contains("Reused, TLSv1.3"), "the ticket from the first handshake resumes: \(second)")
        let stats = try parsePrometheus(admin(adminPort, "GET", "/stats/prometheus").1)
        #expect((stats["weir_tls_resumptions_total{listener=\"secure\"}"] ?? 0) >= 1)
    }

    @Test func ticketKeysRotate() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let port = try freePort()
        let weir = try WeirProcess(yaml: config(port: port, upstream: up, certs: certs, tlsExtra: "      ticket_key_rotation: 1s"))
        defer { weir.stop() }
        let session = certs.path("session.pem")
        let request = "GET /r HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n"
        _ = try sClient(port, ["-servername", "a.example.com", "-sess_out", session], request: request)
        #expect(try sClient(port, ["-servername", "a.example.com", "-sess_in", session], request: request).contains("Reused, TLSv1.3"))
        // Two rotations later the key that sealed the ticket is gone: a full handshake.
        _ = try sClient(port, ["-servername", "a.example.com", "-sess_out", session], request: request)
        Thread.sleep(forTimeInterval: 2.5)
        _ = try sClient(port, ["-servername", "a.example.com"], request: request)  // rotates once
        Thread.sleep(forTimeInterval: 1.2)
        let late = try sClient(port, ["-servername", "a.example.com", "-sess_in", session], request: request)
        #expect(late.contains("New, TLSv1.3"), "a ticket older than two rotations does not resume: \(late)")
    }

    @Test func minimumVersionIsEnforced() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let port = try freePort(), adminPort = try freePort()
        let weir = try WeirProcess(yaml: config(port: port, upstream: up, certs: certs, tlsExtra: "      min_version: \"1.3\"",
                                                top: "admin: { address: 127.0.0.1:\(adminPort) }"))
        defer { weir.stop() }
        let (s1, _) = try curlTLS(port, name: "a.example.com", certs: certs, extra: ["--tls-max", "1.2"])
        #expect(s1 != 0, "a client limited to TLS 1.2 is refused when min_version is 1.3")
        let (s2, o2) = try curlTLS(port, name: "a.example.com", path: "/ok", certs: certs)
        #expect(s2 == 0 && o2.contains("up /ok"))
        let stats = try parsePrometheus(admin(adminPort, "GET", "/stats/prometheus").1)
        #expect((stats["weir_tls_handshake_failures_total{listener=\"secure\",reason=\"version\"}"] ?? 0) >= 1)
    }

    /// The default is Mozilla's intermediate profile: no CBC suites (testssl.sh flagged them and
    /// LUCKY13 on the old OpenSSL default), forward secrecy only; the lists and versions are
    /// configurable, and a list OpenSSL refuses is a config error naming it.
    @Test func cipherSuitesFollowTheIntermediateProfileAndAreConfigurable() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let port = try freePort()
        var weir = try WeirProcess(yaml: config(port: port, upstream: up, certs: certs))
        let cbc = try sClient(port, ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA", "-servername", "a.example.com"])
        #expect(!cbc.contains("Cipher is ECDHE-RSA-AES128-SHA"), "a CBC suite is not offered by default: \(cbc.suffix(400))")
        let rsaKex = try sClient(port, ["-tls1_2", "-cipher", "AES128-GCM-SHA256", "-servername", "a.example.com"])
        #expect(!rsaKex.contains("Cipher is AES128-GCM-SHA256"), "no suite without forward secrecy")
        let gcm = try sClient(port, ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256", "-servername", "a.example.com"])
        #expect(gcm.contains("Cipher is ECDHE-RSA-AES128-GCM-SHA256"), "\(gcm.suffix(400))")
        let v13 = try sClient(port, ["-tls1_3", "-servername", "a.example.com"])
        #expect(v13.contains("TLSv1.3"))
        weir.stop()
        weir = try WeirProcess(yaml: config(port: port, upstream: up, certs: certs,
                                            tlsExtra: "      max_version: \"1.2\"\n      ciphers: [ECDHE-RSA-AES128-SHA, ECDHE-RSA-AES128-GCM-SHA256]\n      curves: P-256"))
        defer { weir.stop() }
        let chosen = try sClient(port, ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA", "-servername", "a.example.com"])
        #expect(chosen.contains("Cipher is ECDHE-RSA-AES128-SHA"), "ciphers: configured suites are offered: \(chosen.suffix(400))")
        let no13 = try sClient(port, ["-tls1_3", "-servername", "a.example.com"])
        #expect(!no13.contains("Cipher is TLS_"), "max_version 1.2 refuses TLS 1.3")
        let file = certs.path("ciphers.yaml")
        try config(port: port, upstream: up, certs: certs, tlsExtra: "      ciphers: [NOT-A-CIPHER]").write(toFile: file, atomically: true, encoding: .utf8)
        let (status, output) = try runWeir(["check", "--config", file])
        #expect(status == 1 && output.contains("ciphers: OpenSSL accepts none of 'NOT-A-CIPHER'"), "\(output)")
    }

    /// OCSP stapling from a file: a client asking for the certificate's status gets the
    /// configured response; a certificate without one sends none; a file that is not a
    /// successful OCSP response is a config error.
    @Test func ocspResponsesAreStapledFromAFile() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let port = try freePort()
        let yaml = config(port: port, upstream: up, certs: certs).replacingOccurrences(
            of: "server_names: [a.example.com, \"*.a.example.com\"] }",
            with: "server_names: [a.example.com, \"*.a.example.com\"], ocsp_staple: \(certs.path("a.ocsp")) }")
        #expect(yaml.contains("ocsp_staple"))
        let weir = try WeirProcess(yaml: yaml)
        defer { weir.stop() }
        let stapled = try sClient(port, ["-status", "-servername", "a.example.com"])
        #expect(stapled.contains("OCSP Response Status: successful"), "\(stapled.prefix(1200))")
        let none = try sClient(port, ["-status", "-servername", "default.example.com"])
        #expect(none.contains("OCSP response: no response sent"), "\(none.prefix(1200))")
        let file = certs.path("staple.yaml")
        try yaml.replacingOccurrences(of: certs.path("a.ocsp"), with: certs.path("a.pem")).write(toFile: file, atomically: true, encoding: .utf8)
        let (status, output) = try runWeir(["check", "--config", file])
        #expect(status == 1 && output.contains("is not a DER OCSP response"), "\(output)")
    }

    @Test func clientCertificatesAreRequiredAndVerified() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let port = try freePort()
        let weir = try WeirProcess(yaml: config(port: port, upstream: up, certs: certs, tlsExtra: "      client_ca: \(certs.path("ca.pem"))"))
        defer { weir.stop() }
        let (s1, _) = try curlTLS(port, name: "a.example.com", certs: certs)
        #expect(s1 != 0, "no client certificate: refused")
        let (s2, _) = try curlTLS(port, name: "a.example.com", certs: certs, extra: ["--cert", certs.path("rogue.pem"), "--key", certs.path("rogue.key")])
        #expect(s2 != 0, "a certificate from an untrusted issuer: refused")
        let (s3, o3) = try curlTLS(port, name: "a.example.com", path: "/mtls", certs: certs,
                                   extra: ["--cert", certs.path("client.pem"), "--key", certs.path("client.key")])
        #expect(s3 == 0 && o3.contains("up /mtls"), "\(o3)")
    }

    @Test func badCertificatesAreConfigErrorsAndReloadsSwapCertificates() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "up")
        let port = try freePort()
        let good = config(port: port, upstream: up, certs: certs)
        let mismatch = good.replacingOccurrences(of: certs.path("default.key"), with: certs.path("a.key"))
        let expired = config(port: port, upstream: up, certs: certs, defaultCert: "expired")
        let missing = good.replacingOccurrences(of: certs.path("default.pem"), with: certs.path("nope.pem"))
        for (yaml, message) in [(mismatch, "does not match certificate"), (expired, "has expired"), (missing, "cannot load certificate")] {
            let file = certs.path("bad.yaml")
            try yaml.write(toFile: file, atomically: true, encoding: .utf8)
            let (status, output) = try runWeir(["check", "--config", file])
            #expect(status == 1)
            #expect(output.contains(message), "\(output)")
            #expect(output.contains("bad.yaml:10:") || output.contains("bad.yaml:9:"), "the error points at the line: \(output)")
        }
        let weir = try WeirProcess(yaml: good)
        defer { weir.stop() }
        #expect(try sClient(port, ["-noservername"]).contains("default.example.com"))
        try weir.rewrite(config(port: port, upstream: up, certs: certs, defaultCert: "other"))
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("generation 2 applied by all"))
        #expect(try sClient(port, ["-noservername"]).contains("other.example.com"), "new connections get the reloaded certificate")
        // A reload with a broken certificate changes nothing.
        try weir.rewrite(expired)
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("still serving generation 2"))
        #expect(try sClient(port, ["-noservername"]).contains("other.example.com"))
    }
}

/// A TLS echo server (tls_peers.py server) in its own process.
final class TLSUpstream {
    private let server: SupportServer
    var port: UInt16 { server.port }
    init(name: String, cert: String, key: String) throws {
        server = try SupportServer(script: "tls_peers.py", ["server", name, cert, key], what: "the TLS upstream \(name)")
    }
}

/// Runs tls_peers.py client through `port` with server name `sni` ("-": none).
func tlsClient(_ port: UInt16, sni: String, certs: TestCertificates, bytes: Int = 100_000) throws -> String {
    try runProcess("/usr/bin/python3", [repositoryRoot.appendingPathComponent("Tests/IntegrationTests/Support/tls_peers.py").path,
                                        "client", "\(port)", sni, certs.path("ca.pem"), "\(bytes)"]).1
        .trimmingCharacters(in: .whitespacesAndNewlines)
}

@Suite(.serialized) struct SNIPassthroughTests {
    @Test func tlsIsRoutedByServerNameWithBytesUntouched() throws {
        let certs = try TestCertificates()
        let a = try TLSUpstream(name: "a", cert: certs.path("a.pem"), key: certs.path("a.key"))
        let d = try TLSUpstream(name: "default", cert: certs.path("default.pem"), key: certs.path("default.key"))
        let port = try freePort()
        func yaml(withDefault: Bool) -> String {
            """
            shards: 2
            listeners:
              - name: passthrough
                address: 127.0.0.1:\(port)
                protocol: tcp
                client_hello_timeout: 500ms
                routes:
                  - { match: { sni: [a.example.com, "*.a.example.com"] }, cluster: a }
                  - { match: { sni: [default.example.com] }, cluster: d }
            \(withDefault ? "      - { cluster: d }" : "")
            clusters:
              - { name: a, endpoints: [{ address: "127.0.0.1:\(a.port)" }] }
              - { name: d, endpoints: [{ address: "127.0.0.1:\(d.port)" }] }
            """
        }
        let weir = try WeirProcess(yaml: yaml(withDefault: false))
        defer { weir.stop() }
        // The client verifies the upstream's own certificate through Weir: the bytes are untouched.
        #expect(try tlsClient(port, sni: "a.example.com", certs: certs, bytes: 1_000_000) == "a ok")
        #expect(try tlsClient(port, sni: "x.a.example.com", certs: certs) == "a ok")
        #expect(try tlsClient(port, sni: "default.example.com", certs: certs) == "default ok")
        // No route for this name, or no name at all, and no default route: closed.
        #expect(try tlsClient(port, sni: "other.example.com", certs: certs).hasPrefix("failed"))
        #expect(try tlsClient(port, sni: "-", certs: certs).hasPrefix("failed"))
        // A client that never sends its ClientHello is closed after client_hello_timeout.
        let silent = try TestClient(loopback(port), timeoutSeconds: 5)
        let started = Date()
        #expect(silent.readToEnd().eof)
        #expect(Date().timeIntervalSince(started) < 3)
        // With a route without match, the rest goes there.
        try weir.rewrite(yaml(withDefault: true))
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("generation 2 applied by all"))
        #expect(try tlsClient(port, sni: "other.example.com", certs: certs).hasPrefix("failed"),
                "reaches the default upstream, whose certificate does not cover other.example.com")
        #expect(try tlsClient(port, sni: "-", certs: certs) == "default ok")
    }
}

extension SNIPassthroughTests {
    /// A port scan or TCP health check on an SNI listener (connect, close, no byte) must not
    /// leave its slot believing it waits for a ClientHello: with one shard, the next connection
    /// (here a TLS handshake to an https listener) reuses that slot.
    @Test func clientsThatCloseBeforeTheirClientHelloCrashNothing() throws {
        let certs = try TestCertificates()
        let a = try TLSUpstream(name: "a", cert: certs.path("a.pem"), key: certs.path("a.key"))
        let up = try HTTPUpstream(name: "web")
        let weir = try WeirProcess(yaml: """
            shards: 1
            listeners:
              - name: passthrough
                address: 127.0.0.1:0
                protocol: tcp
                routes:
                  - { match: { sni: [a.example.com] }, cluster: a }
              - name: secure
                address: 127.0.0.2:0
                protocol: http
                tls:
                  certificates:
                    - { cert: \(certs.path("a.pem")), key: \(certs.path("a.key")) }
                routes:
                  - cluster: web
            clusters:
              - { name: a, endpoints: [{ address: "127.0.0.1:\(a.port)" }] }
              - { name: web, endpoints: [{ address: "127.0.0.1:\(up.port)" }] }
            """)
        defer { weir.stop() }
        let sni = try weir.port("passthrough"), https = try weir.port("secure")
        for round in 0..<3 {
            // Connect and close at once (the client closes when it goes).
            for _ in 0..<3 { _ = try TestClient(loopback(sni), timeoutSeconds: 5) }
            // Half a ClientHello, then close.
            do {
                let half = try TestClient(loopback(sni), timeoutSeconds: 5)
                _ = half.write([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
            }
            let (status, out) = try runProcess("/usr/bin/curl", ["-sS", "-m", "10", "--cacert", certs.path("ca.pem"),
                                                                  "--resolve", "a.example.com:\(https):127.0.0.2", "https://a.example.com:\(https)/round\(round)"])
            #expect(status == 0 && out.hasPrefix("web /round\(round)"), "\(out)\n\(weir.log)")
            #expect(try tlsClient(sni, sni: "a.example.com", certs: certs) == "a ok")
        }
        #expect(weir.process.isRunning, "weir is still up:\n\(weir.log)")
    }
}

@Suite(.serialized) struct TCPTLSTests {
    @Test func tcpListenersTerminateTLS() throws {
        let certs = try TestCertificates()
        let echo = try EchoServer(name: "plain", greeting: "plain\n")
        defer { echo.stop() }
        let port = try freePort(), adminPort = try freePort()
        let weir = try WeirProcess(yaml: """
            shards: 2
            admin: { address: 127.0.0.1:\(adminPort) }
            listeners:
              - name: tcps
                address: 127.0.0.1:\(port)
                protocol: tcp
                cluster: plain
                tls:
                  certificates:
                    - { cert: \(certs.path("a.pem")), key: \(certs.path("a.key")) }
            clusters:
              - { name: plain, endpoints: [{ address: "\(echo.address)" }] }
            """)
        defer { weir.stop() }
        // The client speaks TLS to Weir; the echo upstream sees plain bytes and answers them.
        #expect(try tlsClient(port, sni: "a.example.com", certs: certs, bytes: 2_000_000) == "plain ok")
        #expect(try tlsClient(port, sni: "x.a.example.com", certs: certs) == "plain ok")
        let stats = try parsePrometheus(admin(adminPort, "GET", "/stats/prometheus").1)
        #expect((stats["weir_tls_handshakes_total{listener=\"tcps\"}"] ?? 0) >= 2)
    }
}

@Suite(.serialized) struct UpstreamTLSTests {
    func config(port: UInt16, upstream: HTTPUpstream, tls: String) -> String {
        """
        shards: 2
        listeners:
          - { name: web, address: "127.0.0.1:\(port)", protocol: http, cluster: secure }
        clusters:
          - name: secure
            connect_timeout: 1s
            tls: \(tls)
            endpoints: [{ address: "127.0.0.1:\(upstream.port)" }]
        """
    }

    @Test func requestsGoOverVerifiedPooledTLS() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "tls-up", tls: [certs.path("a.pem"), certs.path("a.key")])
        let port = try freePort()
        let weir = try WeirProcess(yaml: config(port: port, upstream: up, tls: "{ sni: a.example.com, ca: \(certs.path("ca.pem")) }"))
        defer { weir.stop() }
        let c = try HTTPClient(port: port)
        for i in 0..<20 {
            let r = try c.request("GET /t/\(i) HTTP/1.1\r\nHost: h\r\n\r\n")
            #expect(r.status == 200 && r.text.hasPrefix("tls-up /t/\(i)"), "\(r.status) \(r.text)")
        }
        let payload = pseudoRandomBytes(1_500_000, seed: 3)
        let r = try c.request("POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: \(payload.count)\r\n\r\n", body: payload)
        #expect(r.body == payload, "a large body crosses upstream TLS intact")
        let (conns, reqs) = try up.counts()
        #expect(reqs == 21)
        #expect(conns <= 2, "TLS connections are pooled and reused: \(conns) for 21 requests")
    }

    @Test func aWrongCAOrNameIsRefused() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "tls-up", tls: [certs.path("a.pem"), certs.path("a.key")])
        let port = try freePort()
        // The upstream's certificate is not signed by this "CA" (a self-signed stranger).
        let weir = try WeirProcess(yaml: config(port: port, upstream: up, tls: "{ sni: a.example.com, ca: \(certs.path("rogue.pem")) }"))
        defer { weir.stop() }
        #expect(try HTTPClient(port: port).request("GET / HTTP/1.1\r\nHost: h\r\n\r\n").status == 503)
        #expect(weir.waitForLog("certificate verify failed"), "the log says why")
        // The right CA but a name the certificate does not cover.
        try weir.rewrite(config(port: port, upstream: up, tls: "{ sni: wrong.example.com, ca: \(certs.path("ca.pem")) }"))
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("generation 2 applied by all"))
        #expect(try HTTPClient(port: port).request("GET / HTTP/1.1\r\nHost: h\r\n\r\n").status == 503)
        #expect(try up.counts().requests == 0)
    }

    @Test func clientCertificatesForMutualTLS() throws {
        let certs = try TestCertificates()
        let up = try HTTPUpstream(name: "mtls-up", tls: [certs.path("a.pem"), certs.path("a.key"), certs.path("ca.pem")])
        let port = try freePort()
        let without = config(port: port, upstream: up, tls: "{ sni: a.example.com, ca: \(certs.path("ca.pem")) }")
        let weir = try WeirProcess(yaml: without)
        defer { weir.stop() }
        #expect(try HTTPClient(port: port).request("GET / HTTP/1.1\r\nHost: h\r\n\r\n").status != 200, "no client certificate: refused")
        try weir.rewrite(config(port: port, upstream: up,
                                tls: "{ sni: a.example.com, ca: \(certs.path("ca.pem")), cert: \(certs.path("client.pem")), key: \(certs.path("client.key")) }"))
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("generation 2 applied by all"))
        let r = try HTTPClient(port: port).request("GET /m HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(r.status == 200 && r.text.hasPrefix("mtls-up /m"), "\(r.status) \(r.text)")
    }
}
