// Weir where pilot-agent starts Envoy: the bootstrap pilot-agent writes (node with Istio's
// metadata, admin, the xds-grpc and sds-grpc clusters on Unix sockets, the 15090 and 15021 static
// listeners) and the flags it passes, with the control plane on a Unix socket as the agent serves it.
import Foundation
import Testing
import WeirDemo

@Suite(.serialized) struct PilotAgentTests {
    @Test func theBootstrapAndFlagsPilotAgentGivesEnvoyRunWeir() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-agent-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let socket = dir.appendingPathComponent("XDS").path
        let cp = try XDSControlPlane(unixPath: socket)
        let app = try HTTPUpstream(name: "app"), agent = try HTTPUpstream(name: "agent")
        let adminPort = try freePort(), statsPort = try freePort(), healthPort = try freePort(), appPort = try freePort()
        let router = #"{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}"#
        func staticListener(_ port: UInt16, _ prefix: String, _ cluster: String) -> String {
            #"{"address": {"socket_address": {"protocol": "TCP", "address": "127.0.0.1", "port_value": \#(port)}}, "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "codec_type": "AUTO", "stat_prefix": "s", "route_config": {"virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": [{"match": {"prefix": "\#(prefix)"}, "route": {"cluster": "\#(cluster)"}}]}]}, "http_filters": [\#(router)]}}]}]}"#
        }
        func staticCluster(_ name: String, _ address: String) -> String {
            #"{"name": "\#(name)", "type": "STATIC", "connect_timeout": "0.250s", "lb_policy": "ROUND_ROBIN", "load_assignment": {"cluster_name": "\#(name)", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": \#(address)}}]}]}}"#
        }
        let bootstrap = """
            {"node": {"id": "sidecar~127.0.0.1~app-1.default~default.svc.cluster.local", "cluster": "app.default", "locality": {"region": "eu-west1", "zone": "eu-west1-b"},
                      "metadata": {"ISTIO_VERSION": "1.20.0", "CLUSTER_ID": "Kubernetes", "NAMESPACE": "default", "LABELS": {"app": "app"}, "PROXY_CONFIG": {"concurrency": 2}}},
             "layered_runtime": {"layers": [{"name": "global config", "static_layer": {"overload.global_downstream_max_connections": "2147483647"}}, {"name": "admin", "admin_layer": {}}]},
             "stats_config": {"use_all_default_tags": false},
             "admin": {"access_log": [], "profile_path": "/var/lib/istio/data/envoy.prof", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \(adminPort)}}},
             "dynamic_resources": {"lds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                                   "cds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                                   "ads_config": {"api_type": "GRPC", "set_node_on_first_message_only": true, "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
             "static_resources": {
               "clusters": [\(staticCluster("prometheus_stats", #"{"socket_address": {"protocol": "TCP", "address": "127.0.0.1", "port_value": \#(adminPort)}}"#)),
                            \(staticCluster("agent", #"{"socket_address": {"protocol": "TCP", "address": "127.0.0.1", "port_value": \#(agent.port)}}"#)),
                            \(staticCluster("sds-grpc", #"{"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}"#)),
                            \(staticCluster("xds-grpc", #"{"pipe": {"path": "\#(socket)"}}"#)),
                            {"name": "zipkin", "type": "STRICT_DNS", "connect_timeout": "1s", "load_assignment": {"cluster_name": "zipkin", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "zipkin.istio-system", "port_value": 9411}}}}]}]}}],
               "listeners": [\(staticListener(statsPort, "/stats/prometheus", "prometheus_stats")), \(staticListener(healthPort, "/healthz/ready", "agent"))]},
             "tracing": {"http": {"name": "envoy.tracers.zipkin"}}}
            """
        let weir = try WeirProcess(yaml: bootstrap, envoyArguments: [
            "--drain-time-s", "45", "--drain-strategy", "immediate", "--parent-shutdown-time-s", "60", "--local-address-ip-version", "v4",
            "--file-flush-interval-msec", "1000", "--disable-hot-restart", "--allow-unknown-static-fields", "--log-level", "info"])
        defer { weir.stop() }
        for ignored in ["--disable-hot-restart", "--drain-strategy", "--parent-shutdown-time-s", "--allow-unknown-static-fields"] {
            #expect(weir.log.contains("ignoring Envoy flag \(ignored)"), "\(weir.log.prefix(3000))")
        }
        #expect(weir.log.contains("'tracing' is ignored") && weir.log.contains("static cluster 'zipkin' (STRICT_DNS) is left out"))
        #expect(weir.log.contains("xds: control plane unix:\(socket), node sidecar~127.0.0.1~app-1.default~default.svc.cluster.local"))
        // The node reached the control plane with its metadata.
        #expect(cp.waitForRequest { $0.hasPrefix("REQ CDS") && $0.contains("node=sidecar~127.0.0.1~app-1.default") } != nil)
        #expect(cp.requests.contains { $0.contains("locality=eu-west1/eu-west1-b/ ") }, "the node's locality is sent: \(cp.requests.prefix(2))")

        // Istio's static listeners: Prometheus through 15090, readiness through 15021.
        let stats = try HTTPClient(port: statsPort).request("GET /stats/prometheus HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(stats.status == 200 && stats.text.contains("weir_"), "\(stats.status) \(stats.text.prefix(200))")
        let ready = try HTTPClient(port: healthPort).request("GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(ready.status == 200 && ready.text.hasPrefix("agent /healthz/ready"), "\(ready.status) \(ready.text)")

        // xDS over the Unix socket: a service the control plane sends carries traffic.
        cp.push("CDS", version: "c1", #"[{"name": "outbound|80||app", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": \#(app.port)}}}}]}]}}]"#)
        cp.push("LDS", version: "l1", #"[{"name": "app", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \#(appPort)}}, "filter_chains": [{"filters": [{"name": "tcp", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "s", "cluster": "outbound|80||app"}}]}]}]"#)
        #expect(weir.waitForLog("xds: ACK LDS version l1"))
        let r = try HTTPClient(port: appPort).request("GET /through HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(r.status == 200 && r.text.hasPrefix("app /through"), "\(r.status) \(r.text)")
        // What pilot-agent's readiness check asks Envoy's admin.
        let envoyStats = admin(adminPort, "GET", "/stats?usedonly&filter=^(server\\.state|listener_manager\\.workers_started)").1
        #expect(envoyStats.contains("server.state: 0\n") && envoyStats.contains("listener_manager.workers_started: 1\n") && envoyStats.contains("listener_manager.lds.update_success: 1"), "\(envoyStats)")
        // --drain-time-s is the drain timeout.
        weir.signal(SIGTERM)
        #expect(weir.waitForExit(seconds: 20) == 0)
        #expect(weir.log.contains("draining (up to 45s)"), "\(weir.log.suffix(500))")
    }
}
