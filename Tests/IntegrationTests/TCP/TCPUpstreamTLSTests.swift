// TLS from tcp listeners to their upstreams (weir.yaml(5) cluster tls: with verify_san): bytes
// pass whole both ways (beyond the queue cap, so backpressure runs through TLS), with TLS
// terminated on the same connection too; and an upstream that closes, or never answers, during
// the handshake ends the client's connection promptly, counted against the endpoint.
import Foundation
import Testing
import WeirCore
import WeirDemo

@Suite(.serialized) struct TCPUpstreamTLSTests {
    @Test func tcpSessionsSpeakVerifiedTLSToTheirUpstreamsAndFailPromptly() throws {
        let certs = try TestCertificates()
        let echo = try EchoServer(name: "echo")
        let closes = try EchoServer(name: "closes", mode: .greetHalfCloseThenRead)   // no greeting: FIN at once
        let silent = try EchoServer(name: "silent", mode: .replyAfterEOF)            // never speaks first
        defer { echo.stop(); closes.stop(); silent.stop() }
        let plain = try freePort(), double = try freePort(), inner = try freePort(), closing = try freePort(), quiet = try freePort(), adminPort = try freePort()
        let spiffe = "spiffe://cluster.local/ns/default/sa/"
        let tls = { (_: String) in
            "{ ca: \(certs.path("ca.pem")), cert: \(certs.path("weir-side.pem")), key: \(certs.path("weir-side.key")), verify_san: [\"\(spiffe)envoy-side\"], alpn: [istio] }"
        }
        let weir = try WeirProcess(yaml: """
            shards: 1
            admin: { address: 127.0.0.1:\(adminPort) }
            listeners:
              - { name: plain, address: "127.0.0.1:\(plain)", protocol: tcp, cluster: mtls }
              - name: double
                address: "127.0.0.1:\(double)"
                protocol: tcp
                cluster: mtls
                tls: { certificates: [{ cert: \(certs.path("a.pem")), key: \(certs.path("a.key")) }] }
              - name: inner
                address: "127.0.0.1:\(inner)"
                protocol: tcp
                cluster: echo
                tls:
                  certificates: [{ cert: \(certs.path("envoy-side.pem")), key: \(certs.path("envoy-side.key")) }]
                  client_ca: \(certs.path("ca.pem"))
                  client_san: ["\(spiffe)weir-side"]
              - { name: closing, address: "127.0.0.1:\(closing)", protocol: tcp, cluster: closes }
              - { name: quiet, address: "127.0.0.1:\(quiet)", protocol: tcp, cluster: silent }
            clusters:
              - { name: mtls, endpoints: [{ address: "127.0.0.1:\(inner)" }], tls: \(tls("inner")) }
              - { name: echo, endpoints: [{ address: "\(echo.address)" }] }
              - { name: closes, endpoints: [{ address: "\(closes.address)" }], tls: \(tls("closes")) }
              - { name: silent, connect_timeout: 500ms, endpoints: [{ address: "\(silent.address)" }], tls: \(tls("silent")) }
            """)
        defer { weir.stop() }

        // Plaintext in, mTLS to the inner listener (which checks Weir's SPIFFE id), plaintext to
        // the echo: 3 MB each way with a half-close, past the 1 MiB queue cap.
        #expect(echoOnce(loopback(plain), pseudoRandomBytes(3_000_000, seed: 11)), "\(weir.log.suffix(1500))")
        // TLS terminated and TLS to the upstream on one connection.
        let script = """
        import os, socket, ssl, sys
        c = ssl.create_default_context(cafile=sys.argv[2])
        s = c.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10), server_hostname="a.example.com")
        data = os.urandom(2_000_000); s.sendall(data); got = b""
        while len(got) < len(data):
            d = s.recv(65536)
            if not d: break
            got += d
        print("ok" if got == data else f"bad {len(got)}")
        """
        let (status, out) = try runProcess("/usr/bin/python3", ["-c", script, "\(double)", certs.path("ca.pem")], seconds: 30)
        #expect(status == 0 && out.contains("ok"), "\(out)\n\(weir.log.suffix(1500))")

        // An upstream that closes during the handshake, and one that never answers it: the
        // client is closed at once, and within the 500 ms connect timeout (not at the idle
        // timeout), each counted against its endpoint.
        for (port, limit) in [(closing, 3.0), (quiet, 3.0)] {
            let start = Date()
            let client = try TestClient(loopback(port), timeoutSeconds: 8)
            _ = client.write(Array("never sent".utf8))
            let (bytes, eof) = client.readToEnd()
            #expect(bytes.isEmpty && eof && Date().timeIntervalSince(start) < limit, "port \(port): \(bytes.count) bytes, eof \(eof), \(Date().timeIntervalSince(start)) s")
        }
        #expect(closes.bytesReceived > 0, "the ClientHello went out")
        let stats = try parsePrometheus(admin(adminPort, "GET", "/stats/prometheus").1)
        #expect(stats[#"weir_upstream_connect_failures_total{cluster="closes",endpoint="\#(closes.address)"}"#] == 1, "\(stats.filter { $0.key.contains("connect") })")
        #expect(stats[#"weir_upstream_connect_timeouts_total{cluster="silent",endpoint="\#(silent.address)"}"#] == 1, "\(stats.filter { $0.key.contains("connect") })")
        #expect(weir.log.contains("closed the connection during the handshake") && weir.log.contains("did not finish within connect_timeout"))
    }
}
