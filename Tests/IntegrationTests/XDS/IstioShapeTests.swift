// Resources in the shape istiod sends (fields and filters counted from real sidecar dumps; see
// ../shared/istio when present), replayed by the test management server: they are applied
// resource by resource, what Weir accepts and ignores is listed, and what it refuses is named
// in the NACK while the rest serves.
import Foundation
import Testing
import WeirDemo
import WeirHTTP

/// Istio's own filter configs travel inside a udpa TypedStruct.
func typedStruct(_ type: String, _ value: String = "{}") -> String {
    #"{"@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": "type.googleapis.com/\#(type)", "value": \#(value)}"#
}

/// An outbound cluster as istiod writes it: EDS, LEAST_REQUEST, "no limit" circuit breakers,
/// locality-weighted balancing, HTTP protocol options, the mTLS/plaintext socket matches, the
/// metadata-exchange upstream filter, metadata.
func istioCluster(_ name: String) -> String {
    """
    {"name": "\(name)", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}, "service_name": "\(name)"},
     "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST",
     "circuit_breakers": {"thresholds": [{"max_connections": 4294967295, "max_pending_requests": 4294967295, "max_requests": 4294967295, "max_retries": 4294967295, "track_remaining": true}]},
     "common_lb_config": {"locality_weighted_lb_config": {}},
     "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
       "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "use_downstream_protocol_config": {"http_protocol_options": {}}}},
     "transport_socket_matches": [
       {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
         "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "sni": "outbound_.80_._.\(name)",
         "common_tls_context": {"alpn_protocols": ["istio-peer-exchange", "istio"], "tls_certificate_sds_secret_configs": [{"name": "default"}]}}}},
       {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
         "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}],
     "filters": [{"name": "istio.metadata_exchange", "typed_config": \(typedStruct("envoy.tcp.metadataexchange.config.MetadataExchange", #"{"protocol": "istio-peer-exchange"}"#))}],
     "metadata": {"filter_metadata": {"istio": {"services": [{"host": "\(name)", "name": "app", "namespace": "default"}]}}}}
    """
}

func istioEndpoints(_ name: String, port: UInt16, mtls: Bool = false) -> String {
    let socketMatch = mtls ? #", "envoy.transport_socket_match": {"tlsMode": "istio"}"# : ""
    return """
    {"cluster_name": "\(name)", "endpoints": [{"locality": {}, "load_balancing_weight": 1, "lb_endpoints": [
      {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": \(port)}}, "health_check_config": {}},
       "health_status": "HEALTHY", "load_balancing_weight": 1,
       "metadata": {"filter_metadata": {"istio": {"workload": "app;default;app;v1;Kubernetes"}\(socketMatch)}}}]}],
     "policy": {"overprovisioning_factor": 140}}
    """
}

/// An outbound HTTP listener's connection manager as istiod writes it, with the HTTP filters in
/// Istio's order; `extraFilter` goes before the router.
func istioListener(_ name: String, port: UInt16, routes: String, extraFilter: String? = nil) -> String {
    let router = #"{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}"#
    let filters = [
        #"{"name": "istio.metadata_exchange", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": {"vm_config": {"runtime": "envoy.wasm.runtime.null", "code": {"local": {"inline_string": "envoy.wasm.metadata_exchange"}}}, "configuration": \#(typedStruct("envoy.tcp.metadataexchange.config.MetadataExchange"))}}}"#,
        #"{"name": "envoy.filters.http.grpc_stats", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig", "emit_filter_state": true, "stats_for_all_methods": false}}"#,
        #"{"name": "istio.alpn", "typed_config": \#(typedStruct("istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig", #"{"alpn_override": [{"alpn_override": ["istio-http/1.0", "istio"]}]}"#))}"#,
        #"{"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}"#,
        #"{"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}"#,
        #"{"name": "istio.stats", "typed_config": \#(typedStruct("stats.PluginConfig"))}"#,
    ] + (extraFilter.map { [$0] } ?? []) + [router]
    return """
    {"name": "\(name)", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \(port)}}, "traffic_direction": "OUTBOUND",
     "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/dev/stdout"}}],
     "filter_chains": [{"filters": [
       {"name": "istio.stats", "typed_config": \(typedStruct("stats.PluginConfig"))},
       {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
         "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
         "stat_prefix": "outbound_0.0.0.0_\(port)", "rds": {"route_config_name": "\(routes)", "config_source": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}},
         "http_filters": [\(filters.joined(separator: ","))],
         "tracing": {"random_sampling": {"value": 1}}, "stream_idle_timeout": "0s", "use_remote_address": false,
         "upgrade_configs": [{"upgrade_type": "websocket"}], "normalize_path": false, "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
         "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/dev/stdout"}}]}}]}]}
    """
}

func istioRoutes(_ name: String, cluster: String) -> String {
    """
    {"name": "\(name)", "validate_clusters": false, "ignore_port_in_host_matching": true, "max_direct_response_body_size_bytes": 1048576,
     "virtual_hosts": [
       {"name": "app.default.svc.cluster.local:80", "domains": ["app.default.svc.cluster.local", "app"], "include_request_attempt_count": true, "routes": [
         {"name": "gone", "match": {"prefix": "/gone"}, "route": {"cluster": "outbound|80||gone.default.svc.cluster.local", "timeout": "0s"}},
         {"name": "default", "match": {"prefix": "/"}, "decorator": {"operation": "app:80/*"},
          "route": {"cluster": "\(cluster)", "timeout": "0s", "max_grpc_timeout": "0s",
            "retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", "num_retries": 2,
              "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}], "host_selection_retry_max_attempts": "5", "retriable_status_codes": [503]}}}]},
       {"name": "allow_any", "domains": ["*"], "include_request_attempt_count": true, "routes": [
         {"name": "allow_any", "match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster", "timeout": "0s"}}]}]}
    """
}

@Suite(.serialized) struct IstioShapeTests {
    @Test func istioShapedResourcesApplyResourceByResourceAndRefusalsAreNamed() throws {
        let cp = try XDSControlPlane()
        let app = try HTTPUpstream(name: "app"), secure = try HTTPUpstream(name: "secure")
        let port = try freePort(), adminPort = try freePort()
        let weir = try WeirProcess(yaml: """
            admin: { address: 127.0.0.1:\(adminPort) }
            node: { id: "sidecar~127.0.0.1~app-1.default~default.svc.cluster.local", cluster: app.default }
            xds: { address: "127.0.0.1:\(cp.port)", initial_fetch_timeout: 30s }
            """)
        defer { weir.stop() }
        let appCluster = "outbound|80||app.default.svc.cluster.local", secureCluster = "outbound|80||secure.default.svc.cluster.local"
        // CDS: two outbound clusters, the black hole, the ORIGINAL_DST passthrough, and one
        // Weir cannot honour (an original destination from a header): refused by name, the
        // rest applied.
        cp.push("CDS", version: "c1", """
            [\(istioCluster(appCluster)), \(istioCluster(secureCluster)),
             {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"},
             {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "10s"},
             {"name": "ByHeader", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "original_dst_lb_config": {"use_http_header": true}}]
            """)
        let cds = cp.waitForRequest { $0.hasPrefix("REQ CDS") && $0.contains("error=cluster") }
        #expect(cds?.contains("cluster 'ByHeader': original_dst_lb_config is not supported") == true, "\(cds ?? "no NACK")")
        #expect(cds?.contains("PassthroughCluster") == false, "\(cds ?? "no NACK")")
        #expect(cds?.contains("version=c1") == false, "a partial NACK keeps the version last accepted whole")
        #expect(cp.waitForRequest { $0.hasPrefix("REQ EDS") && $0.contains(appCluster) && $0.contains(secureCluster) } != nil,
                "the applied clusters ask for their endpoints")
        // EDS: the secure service's endpoint asks for Istio mTLS: accepted, and its cluster
        // waits (warming) for the workload certificate, which it asks for over SDS.
        cp.push("EDS", version: "e1", "[\(istioEndpoints(appCluster, port: app.port)), \(istioEndpoints(secureCluster, port: secure.port, mtls: true))]")
        let eds = cp.waitForRequest { $0.hasPrefix("REQ EDS") && $0.contains("version=e1") }
        #expect(eds?.hasSuffix("error=") == true, "\(eds ?? "no ACK")")
        #expect(cp.waitForRequest { $0.hasPrefix("REQ SDS") && $0.contains("names=default") } != nil, "\(cp.requests.suffix(3))")
        #expect(weir.waitForLog("warming cluster \(secureCluster) (secret default)"), "\(weir.log.suffix(1500))")
        // LDS: one listener in Istio's shape, and one with a Lua filter (refused, named).
        let lua = #"{"name": "envoy.lua", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua", "default_source_code": {"inline_string": "function envoy_on_request(h) end"}}}"#
        let other = try freePort()
        cp.push("LDS", version: "l1", "[\(istioListener("0.0.0.0_80", port: port, routes: "80")), \(istioListener("lua", port: other, routes: "80", extraFilter: lua))]")
        let lds = cp.waitForRequest { $0.hasPrefix("REQ LDS") && $0.contains("error=listener") }
        #expect(lds?.contains("listener 'lua'") == true && lds?.contains("Lua") == true && lds?.contains("0.0.0.0_80") == false, "\(lds ?? "no NACK")")
        #expect(cp.waitForRequest { $0.hasPrefix("REQ RDS") && $0.contains("names=80") } != nil)
        cp.push("RDS", version: "r1", "[\(istioRoutes("80", cluster: appCluster))]")
        #expect(cp.waitForRequest { $0.hasPrefix("REQ RDS") && $0.contains("version=r1") && $0.hasSuffix("error=") } != nil, "the routes are ACKed")
        #expect(weir.waitForLog("xds: ACK RDS version r1"))

        // Traffic: the service by name (its port ignored), a route to a cluster Weir does not
        // hold (503), and everything else to the catch-all.
        var r = try HTTPClient(port: port).request("GET /hello HTTP/1.1\r\nHost: app.default.svc.cluster.local:80\r\nX-Forwarded-Client-Cert: By=spiffe://evil\r\n\r\n")
        #expect(r.status == 200 && r.text.hasPrefix("app /hello"), "\(r.status) \(r.text)")
        #expect(!r.text.lowercased().contains("x-forwarded-client-cert"), "SANITIZE (the default) removes a client's XFCC: \(r.text)")
        r = try HTTPClient(port: port).request("GET /gone HTTP/1.1\r\nHost: app\r\n\r\n")
        #expect(r.status == 503, "validate_clusters false: a route to an unknown cluster answers 503: \(r.status)")
        // Istio's catch-all goes to PassthroughCluster, the client's original destination. Without
        // a NAT redirect that is this listener itself: passing it through would loop, so 503.
        r = try HTTPClient(port: port).request("GET / HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
        #expect(r.status == 503, "\(r.status) \(r.text)")
        #expect((try? TestClient(loopback(other), timeoutSeconds: 1)) == nil, "the refused listener is not bound")

        // What was accepted and ignored is listed and counted; what was refused is named.
        let dump = admin(adminPort, "GET", "/config_dump").1
        #expect(dump.contains(#""field":"http filter stats.PluginConfig""#), "\(dump.prefix(3000))")
        #expect(dump.contains(#""field":"cluster filter envoy.tcp.metadataexchange.config.MetadataExchange""#))
        #expect(dump.contains(#""name":"ByHeader","error":"#))
        let stats = try parsePrometheus(admin(adminPort, "GET", "/stats/prometheus").1)
        #expect((stats[#"weir_xds_ignored_total{field="http_connection_manager.tracing",type="LDS"}"#] ?? 0) >= 1)
        #expect(stats[#"weir_xds_refused_resources{type="CDS"}"#] == 1)
        #expect(stats["weir_original_destination_loops_total{}"] == 1)
        #expect(weir.waitForLog("xds: accepting and ignoring LDS access_log"))

        // A refused update keeps the listener's previous version, routes and all: l2 moves the
        // listener to other routes and adds a Lua filter; it keeps serving from routes "80".
        cp.push("LDS", version: "l2", "[\(istioListener("0.0.0.0_80", port: port, routes: "81", extraFilter: lua))]")
        #expect(cp.waitForRequest { $0.hasPrefix("REQ LDS") && $0.contains("error=listener '0.0.0.0_80'") } != nil)
        r = try HTTPClient(port: port).request("GET /still HTTP/1.1\r\nHost: app\r\n\r\n")
        #expect(r.status == 200 && r.text.hasPrefix("app /still"), "\(r.status) \(r.text)")

        // A listener whose port cannot be bound is refused by itself; the others are applied.
        cp.push("LDS", version: "l3", "[\(istioListener("0.0.0.0_80", port: port, routes: "80")), \(istioListener("busy", port: app.port, routes: "80"))]")
        let busy = cp.waitForRequest { $0.hasPrefix("REQ LDS") && $0.contains("error=listener 'busy'") }
        #expect(busy != nil && busy?.contains("0.0.0.0_80") == false, "\(cp.requests.suffix(2))")
        r = try HTTPClient(port: port).request("GET /after HTTP/1.1\r\nHost: app\r\n\r\n")
        #expect(r.status == 200 && r.text.hasPrefix("app /after"), "\(r.status) \(r.text)")
    }

    /// Istio's protocol-sniffing shapes over xDS: an outbound listener with the tls and http
    /// inspectors, an HTTP chain for raw_buffer http/1.1 and h2c, and a tcp_proxy default chain;
    /// and virtualInbound's chains (original_dst filter, a refused mTLS chain that closes what it
    /// would get, plaintext HTTP and TCP). Bound on loopback here; the NAT hand-off itself is
    /// FilterChainIntegrationTests' namespace test.
    @Test func istioSniffingChainsServeHTTPAndTCPAndTheirMTLSChainFailsClosed() throws {
        let cp = try XDSControlPlane()
        let app = try HTTPUpstream(name: "app")
        let echo = try EchoServer(name: "echo")
        defer { echo.stop() }
        let port = try freePort(), inbound = try freePort(), adminPort = try freePort()
        let weir = try WeirProcess(yaml: """
            admin: { address: 127.0.0.1:\(adminPort) }
            node: { id: "sidecar~127.0.0.1~app-1.default~default.svc.cluster.local", cluster: app.default }
            xds: { address: "127.0.0.1:\(cp.port)", initial_fetch_timeout: 30s }
            """)
        defer { weir.stop() }
        let appCluster = "outbound|80||app.default.svc.cluster.local", tcpCluster = "outbound|9000||echo.default.svc.cluster.local"
        func staticCluster(_ name: String, _ port: UInt16) -> String {
            #"{"name": "\#(name)", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": "\#(name)", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": \#(port)}}}}]}]}}"#
        }
        cp.push("CDS", version: "c1", """
            [\(staticCluster(appCluster, app.port)), \(staticCluster(tcpCluster, echo.address.port)),
             {"name": "InboundPassthroughClusterIpv4", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "10s",
              "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}}}]
            """)
        let tcpProxy = { (cluster: String) in
            #"{"name": "envoy.filters.network.tcp_proxy", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "\#(cluster)", "cluster": "\#(cluster)"}}"#
        }
        let hcm = #"{"name": "envoy.filters.network.http_connection_manager", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "stat_prefix": "s", "rds": {"route_config_name": "80", "config_source": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}}, "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}"#
        let inspectors = #""listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}, {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}], "listener_filters_timeout": "0s", "continue_on_listener_filters_timeout": true"#
        let mtls = #""transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", "common_tls_context": {"alpn_protocols": ["istio-peer-exchange", "h2", "http/1.1"], "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": {"ads": {}}}], "combined_validation_context": {"default_validation_context": {}, "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": {"ads": {}}}}}, "require_client_certificate": true}}"#
        cp.push("LDS", version: "l1", """
            [{"name": "0.0.0.0_80", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \(port)}}, "traffic_direction": "OUTBOUND", \(inspectors),
              "filter_chains": [{"filter_chain_match": {"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]}, "filters": [\(hcm)]}],
              "default_filter_chain": {"filters": [{"name": "istio.stats", "typed_config": \(typedStruct("stats.PluginConfig"))}, \(tcpProxy(tcpCluster))]}},
             {"name": "virtualInbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \(inbound)}}, "traffic_direction": "INBOUND",
              "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}},
                {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}},
                {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"},
                 "filter_disabled": {"destination_port_range": {"start": 9080, "end": 9081}}}],
              "listener_filters_timeout": "0s", "continue_on_listener_filters_timeout": true,
              "filter_chains": [
                {"name": "virtualInbound-blackhole", "filter_chain_match": {"destination_port": 15006}, "filters": [\(tcpProxy(tcpCluster))]},
                {"name": "virtualInbound", "filter_chain_match": {"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}], "transport_protocol": "tls", "application_protocols": ["istio-peer-exchange", "istio"]}, \(mtls), "filters": [\(tcpProxy(tcpCluster))]},
                {"name": "virtualInbound", "filter_chain_match": {"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}], "transport_protocol": "raw_buffer"}, "filters": [\(tcpProxy(tcpCluster))]},
                {"name": "virtualInbound-catchall-http", "filter_chain_match": {"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}], "transport_protocol": "raw_buffer", "application_protocols": ["http/1.0", "http/1.1", "h2c"]}, "filters": [\(hcm)]}]}]
            """)
        #expect(cp.waitForRequest { $0.hasPrefix("REQ RDS") && $0.contains("names=80") } != nil, "\(cp.requests.suffix(4))\n\(weir.log.suffix(3000))")
        cp.push("RDS", version: "r1", "[\(istioRoutes("80", cluster: appCluster))]")
        // virtualInbound's mTLS chain waits for the workload certificate and the root CA (SDS).
        #expect(cp.waitForRequest { $0.hasPrefix("REQ SDS") && $0.contains("names=ROOTCA,default") } != nil, "\(cp.requests.suffix(4))")
        let certs = try TestCertificates()
        func pemJSON(_ file: String) throws -> String {
            let text = try String(contentsOfFile: certs.path(file), encoding: .utf8)
            return String(decoding: try JSONSerialization.data(withJSONObject: ["v": text]), as: UTF8.self).dropFirst(5).dropLast().description
        }
        cp.push("SDS", version: "s1", """
            [{"name": "default", "tls_certificate": {"certificate_chain": {"inline_string": \(try pemJSON("a.pem"))}, "private_key": {"inline_string": \(try pemJSON("a.key"))}}},
             {"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": \(try pemJSON("ca.pem"))}}}]
            """)
        #expect(weir.waitForLog("xds: ACK SDS version s1"), "\(weir.log.suffix(2000))")
        #expect(weir.waitForLog("xds: ACK RDS version r1"))
        #expect(cp.waitForRequest { $0.hasPrefix("REQ LDS") && $0.contains("version=l1") && $0.hasSuffix("error=") } != nil,
                "every listener is ACKed: \(cp.requests.suffix(3))")

        // Outbound: HTTP by the inspector to the HTTP chain, anything else to the tcp_proxy default.
        let r = try HTTPClient(port: port).request("GET /sniffed HTTP/1.1\r\nHost: app\r\n\r\n")
        #expect(r.status == 200 && r.text.hasPrefix("app /sniffed"), "\(r.status) \(r.text)")
        #expect(echoOnce(loopback(port), [0x00] + pseudoRandomBytes(50_000, seed: 3)), "raw TCP to the default chain")
        // Inbound: plaintext HTTP to the catch-all HTTP chain, raw TCP to the TCP chain, and TLS
        // that asks for Istio's mTLS is closed (its chain needs SDS certificates).
        let h = try HTTPClient(port: inbound).request("GET /in HTTP/1.1\r\nHost: app\r\n\r\n")
        #expect(h.status == 200 && h.text.hasPrefix("app /in"), "\(h.status) \(h.text)")
        #expect(echoOnce(loopback(inbound), [0x01, 0x02] + pseudoRandomBytes(10_000, seed: 4)), "raw TCP inbound")
        // mTLS with Istio's ALPN: the chain terminates it and asks for a client certificate
        // signed by ROOTCA; one without is refused, one with passes (to the echo cluster).
        let withCert = try sClient(inbound, ["-alpn", "istio-peer-exchange,istio", "-servername", "app", "-cert", certs.path("client.pem"), "-key", certs.path("client.key")])
        #expect(withCert.contains("CN = a.example.com"), "\(withCert)\n\(weir.log.suffix(1500))")
        _ = try sClient(inbound, ["-alpn", "istio-peer-exchange,istio", "-servername", "app"])
        // TLS with other ALPN fits no inbound chain (they want istio ALPN or plaintext): closed.
        let tls = try TestClient(loopback(inbound), timeoutSeconds: 5)
        _ = tls.write(ClientHello.sample)
        #expect(tls.readToEnd().bytes.isEmpty, "no chain fits: closed")
        let stats = try parsePrometheus(admin(adminPort, "GET", "/stats/prometheus").1)
        #expect(stats[#"weir_filter_chain_closed_total{reason="no_chain"}"#] == 1)
        let handshakes = stats.filter { $0.key.hasPrefix("weir_tls_handshakes_total") }.values.reduce(0, +)
        let failures = stats.filter { $0.key.hasPrefix("weir_tls_handshake_failures_total") }.values.reduce(0, +)
        #expect(handshakes >= 1 && failures >= 1, "one mTLS handshake passed and one without a client certificate failed: \(stats.filter { $0.key.contains("tls") })")
    }

    /// An ingress gateway's HTTPS listener as istiod sends it: a chain per host (server_names)
    /// whose DownstreamTlsContext names its certificate by SDS, served over the same ADS stream.
    /// The listener warms until its secret arrives; a new version of the secret is served to new
    /// handshakes; a secret whose PEM does not load is refused by name and the last good one
    /// keeps serving.
    @Test func aGatewaysHTTPSChainsTakeTheirCertificatesFromSDSAndRotate() throws {
        let certs = try TestCertificates()
        let cp = try XDSControlPlane()
        let app = try HTTPUpstream(name: "app")
        let port = try freePort(), adminPort = try freePort()
        let weir = try WeirProcess(yaml: """
            admin: { address: 127.0.0.1:\(adminPort) }
            node: { id: "router~127.0.0.1~gateway-1.istio-system~istio-system.svc.cluster.local", cluster: istio-ingressgateway }
            xds: { address: "127.0.0.1:\(cp.port)", initial_fetch_timeout: 30s }
            """)
        defer { weir.stop() }
        func jsonString(_ text: String) -> String {
            String(decoding: try! JSONSerialization.data(withJSONObject: [text], options: [.fragmentsAllowed]), as: UTF8.self).dropFirst().dropLast().description
        }
        func secret(_ name: String, _ cert: String, _ key: String, ocsp: String? = nil) throws -> String {
            let c = try String(contentsOfFile: certs.path(cert), encoding: .utf8), k = try String(contentsOfFile: certs.path(key), encoding: .utf8)
            let staple = try ocsp.map { #", "ocsp_staple": {"inline_bytes": "\#(try Data(contentsOf: URL(fileURLWithPath: certs.path($0))).base64EncodedString())"}"# } ?? ""
            return #"{"name": "\#(name)", "tls_certificate": {"certificate_chain": {"inline_string": \#(jsonString(c))}, "private_key": {"inline_string": \#(jsonString(k))}\#(staple)}}"#
        }
        cp.push("CDS", version: "c1", #"[{"name": "outbound|80||app.default.svc.cluster.local", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": \#(app.port)}}}}]}]}}]"#)
        let hcm = #"{"name": "envoy.filters.network.http_connection_manager", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "stat_prefix": "outbound_0.0.0.0_8443", "rds": {"route_config_name": "https.443.https.gateway.default", "config_source": {"ads": {}, "resource_api_version": "V3"}}, "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}], "forward_client_cert_details": "SANITIZE_SET", "use_remote_address": true}}"#
        let tls = #"{"name": "envoy.transport_sockets.tls", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", "common_tls_context": {"alpn_protocols": ["h2", "http/1.1"], "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"}, "tls_certificate_sds_secret_configs": [{"name": "kubernetes://a-cert", "sds_config": {"ads": {}, "resource_api_version": "V3"}}]}, "require_client_certificate": false}}"#
        cp.push("LDS", version: "l1", """
            [{"name": "0.0.0.0_8443", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \(port)}},
              "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
              "filter_chains": [{"filter_chain_match": {"server_names": ["a.example.com"]}, "transport_socket": \(tls), "filters": [\(hcm)]}]}]
            """)
        #expect(cp.waitForRequest { $0.hasPrefix("REQ SDS") && $0.contains("names=kubernetes://a-cert") } != nil, "the certificate is asked for: \(cp.requests.suffix(4))")
        cp.push("RDS", version: "r1", #"[{"name": "https.443.https.gateway.default", "virtual_hosts": [{"name": "a", "domains": ["a.example.com", "a.example.com:*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "outbound|80||app.default.svc.cluster.local"}}]}]}]"#)
        #expect(weir.waitForLog("warming listener 0.0.0.0_8443 (secret kubernetes://a-cert)"), "\(weir.log.suffix(2000))")
        #expect((try? TestClient(loopback(port), timeoutSeconds: 1)) == nil, "warming: not bound yet")

        cp.push("SDS", version: "s1", "[\(try secret("kubernetes://a-cert", "a.pem", "a.key", ocsp: "a.ocsp"))]")
        #expect(weir.waitForLog("xds: ACK SDS version s1"), "\(weir.log.suffix(2000))")
        #expect(secondsUntil(limit: 10) { (try? TestClient(loopback(port), timeoutSeconds: 1)) != nil } != nil, "bound once its certificate came")
        var (status, out) = try curlTLS(port, name: "a.example.com", path: "/gw", certs: certs)
        #expect(status == 0 && out.hasPrefix("app /gw") && out.hasSuffix("200"), "\(out)\n\(weir.log.suffix(2000))")
        #expect(try sClient(port, ["-servername", "a.example.com", "-alpn", "h2,http/1.1"]).contains("ALPN protocol: h2"), "h2 is offered: Weir speaks HTTP/2 downstream")
        let (h2Status, h2Out) = try curlTLS(port, name: "a.example.com", path: "/gw", certs: certs, extra: ["--http2", "-w", "\n%{http_code} %{http_version}"])
        #expect(h2Status == 0 && h2Out.hasPrefix("app /gw") && h2Out.hasSuffix("200 2"), "\(h2Out)")
        // The secret's OCSP response is stapled for clients that ask.
        let stapled = try sClient(port, ["-servername", "a.example.com", "-status"])
        #expect(stapled.contains("OCSP Response Status: successful"), "\(stapled.prefix(1500))")

        // Rotation: the next version of the secret is what new handshakes get.
        cp.push("SDS", version: "s2", "[\(try secret("kubernetes://a-cert", "default.pem", "default.key"))]")
        #expect(weir.waitForLog("xds: ACK SDS version s2"))
        #expect(secondsUntil(limit: 10) { ((try? sClient(port, ["-servername", "a.example.com"])) ?? "").contains("CN = default.example.com") } != nil)

        // A secret whose key does not match its certificate: refused, named; s2 keeps serving.
        cp.push("SDS", version: "s3", "[\(try secret("kubernetes://a-cert", "a.pem", "default.key"))]")
        let nack = cp.waitForRequest { $0.hasPrefix("REQ SDS") && $0.contains("error=") && !$0.hasSuffix("error=") }
        #expect(nack?.contains("kubernetes://a-cert") == true && nack?.contains("version=s2") == true, "\(nack ?? "no NACK")")
        #expect(try sClient(port, ["-servername", "a.example.com"]).contains("CN = default.example.com"))
        (status, out) = try curlTLS(port, name: "a.example.com", path: "/still", certs: certs, extra: ["-k"])
        #expect(status == 0 && out.hasSuffix("200"), "\(out)")

        // A new version of the listener adds a host whose certificate has not come: it warms,
        // and the version before keeps serving meanwhile (as Envoy keeps a listener until its
        // replacement is warm).
        let tlsB = tls.replacingOccurrences(of: "kubernetes://a-cert", with: "kubernetes://b-cert")
        cp.push("LDS", version: "l2", """
            [{"name": "0.0.0.0_8443", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \(port)}},
              "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
              "filter_chains": [{"filter_chain_match": {"server_names": ["a.example.com"]}, "transport_socket": \(tls), "filters": [\(hcm)]},
                                {"filter_chain_match": {"server_names": ["b.example.com"]}, "transport_socket": \(tlsB), "filters": [\(hcm)]}]}]
            """)
        #expect(cp.waitForRequest { $0.hasPrefix("REQ SDS") && $0.contains("names=kubernetes://a-cert,kubernetes://b-cert") } != nil)
        #expect(weir.waitForLog("secret kubernetes://b-cert"))
        (status, out) = try curlTLS(port, name: "a.example.com", path: "/during", certs: certs, extra: ["-k"])
        #expect(status == 0 && out.hasSuffix("200"), "the previous version serves while the new one warms: \(out)")
        cp.push("SDS", version: "s4", "[\(try secret("kubernetes://a-cert", "a.pem", "a.key")), \(try secret("kubernetes://b-cert", "default.pem", "default.key"))]")
        #expect(weir.waitForLog("xds: ACK SDS version s4"))
        #expect(secondsUntil(limit: 10) { ((try? sClient(port, ["-servername", "b.example.com"])) ?? "").contains("CN = default.example.com") } != nil)
        (status, out) = try curlTLS(port, name: "a.example.com", path: "/after", certs: certs)
        #expect(status == 0 && out.hasSuffix("200"), "\(out)")
    }
}
