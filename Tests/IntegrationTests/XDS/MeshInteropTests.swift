// A Weir sidecar and a real Envoy 1.40 sidecar call each other over Istio's mTLS, both driven by
// xDS in Istio's shape: SPIFFE workload certificates and the root CA from SDS, outbound clusters
// whose tlsMode istio endpoints get an UpstreamTlsContext (SNI, SAN check on the peer's SPIFFE
// id), inbound chains chosen by TLS and Istio's ALPN that require a client certificate and check
// its SAN. Each proxy has its own control plane (its own identity); Envoy's listeners sit on
// 127.0.0.2, Weir's on 127.0.0.1, at the same ports.
import Foundation
import Testing
import WeirCore
import WeirDemo

@Suite(.serialized) struct MeshInteropTests {
    static let spiffe = "spiffe://cluster.local/ns/default/sa/"

    /// PEM text as a JSON string.
    static func pemJSON(_ certs: TestCertificates, _ file: String) throws -> String {
        let text = try String(contentsOfFile: certs.path(file), encoding: .utf8)
        return String(decoding: try JSONSerialization.data(withJSONObject: [text]), as: UTF8.self).dropFirst().dropLast().description
    }

    static func secrets(_ certs: TestCertificates, _ identities: [(name: String, file: String)]) throws -> String {
        try "[" + (identities.map { i in
            #"{"name": "\#(i.name)", "tls_certificate": {"certificate_chain": {"inline_string": \#(try pemJSON(certs, i.file + ".pem"))}, "private_key": {"inline_string": \#(try pemJSON(certs, i.file + ".key"))}}}"#
        } + [#"{"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": \#(try pemJSON(certs, "ca.pem"))}}}"#]).joined(separator: ",") + "]"
    }

    /// Secrets over ADS (Envoy here), or from pilot-agent's SDS socket as istiod writes it for
    /// sidecars (the bootstrap's sds-grpc cluster; Weir here).
    static let overADS = #"{"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}"#
    static let fromAgent = #"{"api_config_source": {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}], "set_node_on_first_message_only": true, "transport_api_version": "V3"}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}"#

    /// An outbound cluster as istiod writes it for a service with a sidecar: mTLS to its
    /// tlsMode istio endpoint, checking the peer's SPIFFE id. `alpn`: what the client offers
    /// (Istio's own Envoy rewrites its list to istio-http/1.1 with the istio.alpn filter, which
    /// the stock Envoy here lacks, so it is given that list directly).
    static func outboundCluster(_ name: String, endpoint: String, port: UInt16, peer: String, certificate: String = "default",
                                alpn: [String] = ["istio-peer-exchange", "istio"], sds: String) -> String {
        let alpnJSON = alpn.map { "\"\($0)\"" }.joined(separator: ", ")
        return """
        {"name": "\(name)", "type": "STATIC", "connect_timeout": "2s",
         "load_assignment": {"cluster_name": "\(name)", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "\(endpoint)", "port_value": \(port)}}},
           "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}}]}]},
         "transport_socket_matches": [
           {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
             "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "sni": "outbound_.80_._.\(name)",
             "common_tls_context": {"tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"}, "alpn_protocols": [\(alpnJSON)],
               "tls_certificate_sds_secret_configs": [{"name": "\(certificate)", "sds_config": \(sds)}],
               "combined_validation_context": {"default_validation_context": {"match_subject_alt_names": [{"exact": "\(spiffe)\(peer)"}]},
                 "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": \(sds)}}}}}},
           {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
             "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}]}
        """
    }

    /// What istiod writes on a sidecar's inbound connection manager.
    static let istioInboundXFCC = #""forward_client_cert_details": "APPEND_FORWARD", "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true}"#

    static func staticCluster(_ name: String, _ port: UInt16) -> String {
        #"{"name": "\#(name)", "type": "STATIC", "connect_timeout": "2s", "load_assignment": {"cluster_name": "\#(name)", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": \#(port)}}}}]}]}}"#
    }

    /// `xfcc`: forward_client_cert_details and set_current_client_cert_details, as JSON fields.
    static func hcm(_ routes: [(prefix: String, cluster: String)], xfcc: String? = nil) -> String {
        let r = routes.map { #"{"match": {"prefix": "\#($0.prefix)"}, "route": {"cluster": "\#($0.cluster)", "timeout": "0s"}}"# }.joined(separator: ",")
        let forward = xfcc.map { ", " + $0 } ?? ""
        return #"{"name": "envoy.filters.network.http_connection_manager", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "stat_prefix": "s"\#(forward), "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [\#(r)]}]}, "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}"#
    }

    /// The outbound listener (plaintext HTTP from the app) and the inbound one: Istio's mTLS
    /// chain for HTTP (TLS with istio-http ALPN), which requires a client certificate from
    /// ROOTCA with the peer's SPIFFE id.
    static func tcpProxy(_ cluster: String) -> String {
        #"{"name": "envoy.filters.network.tcp_proxy", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "\#(cluster)", "cluster": "\#(cluster)"}}"#
    }

    /// The outbound HTTP and TCP listeners (plaintext from the app) and the inbound one with
    /// Istio's mTLS chains, chosen by ALPN: istio-http/* to HTTP, istio-peer-exchange or istio
    /// to TCP. Both require a client certificate from ROOTCA with the peer's SPIFFE id.
    static func listeners(outbound: UInt16, outboundTCP: UInt16, inbound: UInt16, tcpCluster: String, routes: [(prefix: String, cluster: String)],
                          peer: String, xfcc: String, sds: String) -> String {
        let mtls = #"{"name": "envoy.transport_sockets.tls", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", "require_client_certificate": true, "common_tls_context": {"alpn_protocols": ["h2", "http/1.1"], "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": \#(sds)}], "combined_validation_context": {"default_validation_context": {"match_subject_alt_names": [{"exact": "\#(spiffe)\#(peer)"}]}, "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": \#(sds)}}}}}"#
        return """
        [{"name": "outbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \(outbound)}}, "traffic_direction": "OUTBOUND",
          "filter_chains": [{"filters": [\(hcm(routes))]}]},
         {"name": "outbound-tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \(outboundTCP)}}, "traffic_direction": "OUTBOUND",
          "filter_chains": [{"filters": [\(tcpProxy(tcpCluster))]}]},
         {"name": "inbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \(inbound)}}, "traffic_direction": "INBOUND",
          "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
          "filter_chains": [{"name": "inbound-mtls-http", "filter_chain_match": {"transport_protocol": "tls", "application_protocols": ["istio-http/1.0", "istio-http/1.1", "istio-h2"]},
            "transport_socket": \(mtls), "filters": [\(hcm([("/", "inbound|80||")], xfcc: xfcc))]},
           {"name": "inbound-mtls-tcp", "filter_chain_match": {"transport_protocol": "tls", "application_protocols": ["istio-peer-exchange", "istio"]},
            "transport_socket": \(mtls), "filters": [\(tcpProxy("inbound|9000||"))]}]}]
        """
    }

    @Test func aWeirSidecarAndAnEnvoySidecarCallEachOtherOverIstioMTLS() throws {
        let certs = try TestCertificates()
        let weirApp = try HTTPUpstream(name: "weir-app"), envoyApp = try HTTPUpstream(name: "envoy-app")
        let weirEcho = try EchoServer(name: "weir-echo", greeting: "weir-echo:"), envoyEcho = try EchoServer(name: "envoy-echo", greeting: "envoy-echo:")
        defer { weirEcho.stop(); envoyEcho.stop() }
        let outbound = try freePort(), outboundTCP = try freePort(), inbound = try freePort(), envoyAdmin = try freePort(), weirAdmin = try freePort()
        let wrongTCP = try freePort()
        // Weir's secrets come from an SDS server on a Unix socket, as pilot-agent serves them.
        let socket = certs.path("sds.sock")
        let cpWeir = try XDSControlPlane(), cpEnvoy = try XDSControlPlane(), agent = try XDSControlPlane(unixPath: socket)
        let weir = try WeirProcess(yaml: """
            shards: 1
            admin: { address: 127.0.0.1:\(weirAdmin) }
            node: { id: "sidecar~127.0.0.1~weir-side.default~default.svc.cluster.local" }
            xds: { address: "127.0.0.1:\(cpWeir.port)", sds_address: "unix:\(socket)" }
            """)
        defer { weir.stop() }
        let envoy = try EnvoyProcess(controlPlanePort: cpEnvoy.port, adminPort: envoyAdmin)
        defer { envoy.stop() }

        // Weir: identity weir-side; calls envoy-side (and, at /wrong-peer, a cluster that expects
        // another identity at the same endpoint); accepts only envoy-side.
        agent.push("SDS", version: "s1", try Self.secrets(certs, [("default", "weir-side")]))
        cpWeir.push("CDS", version: "c1", "[" + [
            Self.outboundCluster("outbound|80||envoy-side", endpoint: "127.0.0.2", port: inbound, peer: "envoy-side", sds: Self.fromAgent),
            Self.outboundCluster("outbound|80||wrong-peer", endpoint: "127.0.0.2", port: inbound, peer: "nobody", sds: Self.fromAgent),
            Self.outboundCluster("outbound|9000||envoy-side", endpoint: "127.0.0.2", port: inbound, peer: "envoy-side", sds: Self.fromAgent),
            Self.staticCluster("inbound|80||", weirApp.port), Self.staticCluster("inbound|9000||", weirEcho.address.port),
        ].joined(separator: ",") + "]")
        cpWeir.push("LDS", version: "l1", String(Self.listeners(outbound: outbound, outboundTCP: outboundTCP, inbound: inbound, tcpCluster: "outbound|9000||envoy-side",
                                                         routes: [("/wrong-peer", "outbound|80||wrong-peer"), ("/", "outbound|80||envoy-side")], peer: "envoy-side",
                                                         xfcc: Self.istioInboundXFCC,
                                                         sds: Self.fromAgent).dropLast())
            + #", {"name": "wrong-peer-tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \#(wrongTCP)}}, "filter_chains": [{"filters": [\#(Self.tcpProxy("outbound|80||wrong-peer"))]}]}]"#)
        // Envoy: identity envoy-side (and a rogue one, at /rogue, signed by the same CA); calls
        // weir-side; accepts only weir-side, and tells its app who called (XFCC).
        cpEnvoy.push("SDS", version: "s1", try Self.secrets(certs, [("default", "envoy-side"), ("rogue", "rogue-side")]))
        cpEnvoy.push("CDS", version: "c1", "[" + [
            Self.outboundCluster("outbound|80||weir-side", endpoint: "127.0.0.1", port: inbound, peer: "weir-side", alpn: ["istio-http/1.1"], sds: Self.overADS),
            Self.outboundCluster("outbound|80||rogue", endpoint: "127.0.0.1", port: inbound, peer: "weir-side", certificate: "rogue", alpn: ["istio-http/1.1"], sds: Self.overADS),
            Self.outboundCluster("outbound|9000||weir-side", endpoint: "127.0.0.1", port: inbound, peer: "weir-side", sds: Self.overADS),
            Self.staticCluster("inbound|80||", envoyApp.port), Self.staticCluster("inbound|9000||", envoyEcho.address.port),
        ].joined(separator: ",") + "]")
        cpEnvoy.push("LDS", version: "l1", Self.listeners(outbound: outbound, outboundTCP: outboundTCP, inbound: inbound, tcpCluster: "outbound|9000||weir-side",
                                                          routes: [("/rogue", "outbound|80||rogue"), ("/", "outbound|80||weir-side")], peer: "weir-side",
                                                          xfcc: #""forward_client_cert_details": "SANITIZE_SET", "set_current_client_cert_details": {"uri": true}"#,
                                                          sds: Self.overADS))

        #expect(weir.waitForLog("xds: ACK LDS version l1"), "\(weir.log.suffix(2000))")
        #expect(agent.waitForRequest { $0.hasPrefix("REQ SDS") && $0.contains("version=s1") && $0.contains("names=ROOTCA,default stream=sds") && $0.hasSuffix("error=") } != nil,
                "the secrets are asked for and ACKed on the agent's socket: \(agent.requests.suffix(3))\n\(weir.log.suffix(1500))")
        #expect(!cpWeir.requests.contains { $0.hasPrefix("REQ SDS") && $0.contains("default") }, "never on ADS: \(cpWeir.requests)")
        #expect(cpWeir.waitForRequest { $0.hasPrefix("REQ CDS") && $0.contains("version=c1") && $0.hasSuffix("error=") } != nil, "\(cpWeir.requests.suffix(3))")
        let weirOut = loopback(outbound), envoyOut = SocketAddress(ipv4: 127, 0, 0, 2, port: outbound)
        #expect(waitForListener(weirOut, seconds: 10))
        #expect(waitForListener(SocketAddress(ipv4: 127, 0, 0, 2, port: inbound), seconds: 30), "Envoy's inbound listener; its log:\n\(envoy.log)")
        #expect(waitForListener(envoyOut, seconds: 30))

        // Weir -> Envoy: Envoy checked Weir's certificate (its app sees Weir's SPIFFE id).
        let a = try HTTPClient(address: weirOut).request("GET /hello HTTP/1.1\r\nHost: envoy-side\r\n\r\n")
        #expect(a.status == 200 && a.text.hasPrefix("envoy-app /hello"), "\(a.status) \(a.text)\n\(weir.log.suffix(1500))\n\(envoy.log.suffix(1500))")
        #expect(a.text.contains("URI=\(Self.spiffe)weir-side"), "Envoy's XFCC names Weir's identity: \(a.text)")
        // Envoy -> Weir: Weir checked Envoy's certificate.
        let b = try HTTPClient(address: envoyOut).request("GET /hi HTTP/1.1\r\nHost: weir-side\r\n\r\n")
        #expect(b.status == 200 && b.text.hasPrefix("weir-app /hi"), "\(b.status) \(b.text)\n\(weir.log.suffix(1500))\n\(envoy.log.suffix(1500))")
        // Weir's inbound, as Istio configures it (APPEND_FORWARD with subject, URI and DNS), tells
        // its app who called, in Envoy's format: By is Weir's own identity, Hash the caller's
        // certificate, URI its SPIFFE id.
        let xfcc = b.text.split(separator: "\n").first { $0.lowercased().hasPrefix("x-forwarded-client-cert") }.map(String.init) ?? ""
        #expect(xfcc.contains("By=\(Self.spiffe)weir-side;Hash=") && xfcc.contains(";Subject=\"CN=envoy-side\";URI=\(Self.spiffe)envoy-side"), "\(b.text)")
        // Keep-alive over the pooled mTLS connection, both ways.
        for i in 0..<3 {
            #expect(try HTTPClient(address: weirOut).request("GET /again/\(i) HTTP/1.1\r\nHost: envoy-side\r\n\r\n").status == 200)
            #expect(try HTTPClient(address: envoyOut).request("GET /again/\(i) HTTP/1.1\r\nHost: weir-side\r\n\r\n").status == 200)
        }

        // TCP (tcp_proxy) over the same mTLS, both ways, chosen on the peer by Istio's TCP ALPN:
        // the greeting says which side's application answered; a large payload echoes whole
        // (backpressure through both TLS layers) and the half-close passes as close_notify + FIN.
        let weirTCP = loopback(outboundTCP), envoyTCP = SocketAddress(ipv4: 127, 0, 0, 2, port: outboundTCP)
        #expect(waitForListener(envoyTCP, seconds: 30))
        #expect(greetingThrough(weirTCP, length: 11) == "envoy-echo:", "\(weir.log.suffix(1500))\n\(envoy.log.suffix(1500))")
        #expect(greetingThrough(envoyTCP, length: 10) == "weir-echo:", "\(weir.log.suffix(1500))\n\(envoy.log.suffix(1500))")
        #expect(echoOnce(weirTCP, pseudoRandomBytes(300_000, seed: 7), greeting: 11), "Weir -> Envoy over mTLS, 300 kB")
        #expect(echoOnce(envoyTCP, pseudoRandomBytes(300_000, seed: 8), greeting: 10), "Envoy -> Weir over mTLS, 300 kB")
        // TCP to an endpoint whose certificate is not the identity its cluster expects: closed,
        // nothing passes either way.
        let wrongClient = try TestClient(loopback(wrongTCP), timeoutSeconds: 5)
        _ = wrongClient.write(Array("secret bytes".utf8))
        let (wrongBytes, wrongEOF) = wrongClient.readToEnd()
        #expect(wrongBytes.isEmpty && wrongEOF, "closed without a byte")

        // A rotated workload certificate from the agent: new connections present it (Envoy's
        // XFCC hash of the client certificate changes), pooled ones made with the old one are
        // not lent again.
        func hash(_ text: String) -> String? { text.split(separator: "\n").first { $0.lowercased().hasPrefix("x-forwarded-client-cert") }?.split(separator: ";").first { $0.contains("Hash=") }.map(String.init) }
        let before = hash(a.text)
        #expect(before != nil, "\(a.text)")
        agent.push("SDS", version: "s2", try Self.secrets(certs, [("default", "weir-side-2")]))
        #expect(agent.waitForRequest { $0.hasPrefix("REQ SDS") && $0.contains("version=s2") && $0.hasSuffix("error=") } != nil, "\(agent.requests.suffix(2))")
        // The ACK means the new snapshot is published; the shard may adopt it a moment later.
        var rotated = try HTTPClient(address: weirOut).request("GET /rotated HTTP/1.1\r\nHost: envoy-side\r\n\r\n")
        let deadline = Date().addingTimeInterval(10)
        while hash(rotated.text) == before && Date() < deadline {
            usleep(50_000)
            rotated = try HTTPClient(address: weirOut).request("GET /rotated HTTP/1.1\r\nHost: envoy-side\r\n\r\n")
        }
        #expect(rotated.status == 200 && rotated.text.contains("URI=\(Self.spiffe)weir-side"), "\(rotated.status) \(rotated.text)")
        #expect(hash(rotated.text) != nil && hash(rotated.text) != before, "the new certificate: \(rotated.text)")

        // Weir refuses a peer whose certificate, signed by the same CA, names another identity
        // (its handshake fails, so Envoy answers 503); Weir refuses to call an endpoint whose
        // certificate is not the identity its cluster expects (503, nothing sent in plaintext).
        let rogue = try HTTPClient(address: envoyOut).request("GET /rogue HTTP/1.1\r\nHost: weir-side\r\n\r\n")
        #expect(rogue.status == 503 && !rogue.text.contains("weir-app"), "\(rogue.status) \(rogue.text)")
        let wrong = try HTTPClient(address: weirOut).request("GET /wrong-peer HTTP/1.1\r\nHost: envoy-side\r\n\r\n")
        #expect(wrong.status == 503 && !wrong.text.contains("envoy-app"), "\(wrong.status) \(wrong.text)")
        let stats = try parsePrometheus(admin(weirAdmin, "GET", "/stats/prometheus").1)
        let certificateFailures = stats.filter { $0.key.hasPrefix("weir_tls_handshake_failures_total") && $0.key.contains("certificate") }.values.reduce(0, +)
        #expect(certificateFailures >= 1, "the rogue client's handshake failed on its certificate: \(stats.filter { $0.key.contains("tls") })")
        #expect(weir.log.contains("TLS to upstream"), "the failed upstream handshake is logged")
    }
}
