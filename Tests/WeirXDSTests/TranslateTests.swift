// xDS resources to Weir's documents, compiled: lb configs, route hash policies, priorities and
// the load assignment's policy, warming and its activation. Resources are written in proto3 JSON
// as a control plane would send them.
import Testing
import WeirBalance
import WeirConfig
@testable import WeirXDS
import SwiftProtobuf
import WeirXDSProtos

func cluster(_ json: String) throws -> EnvoyCluster { try EnvoyCluster(jsonString: json) }
func assignment(_ json: String) throws -> EnvoyLoadAssignment { try EnvoyLoadAssignment(jsonString: json) }

/// Compiles xDS documents the way `weir` does (a file with nothing but what xDS sent).
func compile(_ t: Translation) throws -> Snapshot {
    var doc = try YAMLLoader.parse("shards: 1\nnode: { id: t }\nxds: { address: 127.0.0.1:1 }\n", file: "t.yaml")
    doc.listeners = t.listeners
    doc.clusters = t.clusters
    return try Compiler.compile(doc)
}

/// The error a translation throws, as text ("" when it does not throw).
func refusal(_ body: () throws -> Void) -> String {
    do { try body(); return "" } catch { return "\(error)" }
}

let endpointsJSON = """
{"cluster_name": "app", "endpoints": [{"lb_endpoints": [
  {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9001}}}},
  {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9002}}}}]}]}
"""

@Suite struct TranslateTests {
    @Test func lbConfigsBecomeBalancerOptions() throws {
        var r = XDSResources()
        r.clusters["ring"] = try cluster("""
            {"name": "ring", "type": "EDS", "lb_policy": "RING_HASH",
             "ring_hash_lb_config": {"minimum_ring_size": "2048", "maximum_ring_size": "4096"}}
            """)
        r.clusters["mag"] = try cluster("""
            {"name": "mag", "type": "EDS", "lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": "131"}}
            """)
        r.clusters["lr"] = try cluster("""
            {"name": "lr", "type": "EDS", "lb_policy": "LEAST_REQUEST",
             "least_request_lb_config": {"choice_count": 3, "active_request_bias": {"default_value": 0.5, "runtime_key": "k"},
               "slow_start_config": {"slow_start_window": "10s", "aggression": {"default_value": 2, "runtime_key": "a"}, "min_weight_percent": {"value": 20}}}}
            """)
        for name in ["ring", "mag", "lr"] {
            var la = try assignment(endpointsJSON)
            la.clusterName = name
            r.loadAssignments[name] = la
        }
        let snap = try compile(try translate(r))
        let byName = Dictionary(uniqueKeysWithValues: snap.clusters.map { ($0.name, $0) })
        #expect(byName["ring"]?.balancer == .ringHash)
        #expect(byName["ring"]?.options.minimumRingSize == 2048 && byName["ring"]?.options.maximumRingSize == 4096)
        #expect(byName["mag"]?.balancer == .maglev && byName["mag"]?.options.maglevTableSize == 131)
        #expect(byName["lr"]?.options.choiceCount == 3 && byName["lr"]?.options.activeRequestBias == 0.5)
        #expect(byName["lr"]?.slowStart?.windowNanoseconds == 10_000_000_000)
        #expect(byName["lr"]?.slowStart?.aggression == 2)
        #expect(byName["lr"]?.slowStart?.minimumWeightFraction == 0.2)
    }

    @Test func lbConfigsWeirCannotHonourAreRefusedByName() throws {
        let murmur = try cluster("""
            {"name": "m", "type": "STATIC", "lb_policy": "RING_HASH", "ring_hash_lb_config": {"hash_function": "MURMUR_HASH_2"}}
            """)
        #expect(refusal { _ = try translateCluster(murmur, nil) }.contains("hash_function"))
        let mismatched = try cluster("""
            {"name": "m", "type": "STATIC", "lb_policy": "ROUND_ROBIN", "maglev_lb_config": {"table_size": "131"}}
            """)
        #expect(refusal { _ = try translateCluster(mismatched, nil) }.contains("maglev_lb_config needs lb_policy MAGLEV"))
        // A prime table size is Weir's rule too: the compile refuses 100 with the reason.
        var r = XDSResources()
        r.clusters["m"] = try cluster("""
            {"name": "m", "type": "EDS", "lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": "100"}}
            """)
        var la = try assignment(endpointsJSON); la.clusterName = "m"
        r.loadAssignments["m"] = la
        #expect(refusal { _ = try compile(try translate(r)) }.contains("table_size must be a whole number from 101"))
    }

    @Test func prioritiesAndTheOverprovisioningFactorCarryThrough() throws {
        let la = try assignment("""
            {"cluster_name": "app", "policy": {"overprovisioning_factor": 200}, "endpoints": [
              {"priority": 0, "lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9001}}}}]},
              {"priority": 3, "lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9002}}}},
                                               {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9003}}}, "health_status": "DRAINING"}]}]}
            """)
        var r = XDSResources()
        r.clusters["app"] = try cluster(#"{"name": "app", "type": "EDS"}"#)
        r.loadAssignments["app"] = la
        let snap = try compile(try translate(r))
        let c = try #require(snap.clusters.first)
        #expect(c.endpoints.map(\.address.port) == [9001, 9002], "the DRAINING endpoint is left out")
        #expect(c.endpoints.map(\.priority) == [0, 1], "priorities 0 and 3 become levels 0 and 1")
        #expect(c.overprovisioningPercent == 200)
        #expect(c.hasLevels)
        let drops = try assignment("""
            {"cluster_name": "app", "policy": {"drop_overloads": [{"category": "x", "drop_percentage": {"numerator": 5}}]}}
            """)
        #expect(refusal { _ = try translateEndpoints(drops, cluster: "app", position("cluster", "app")) }.contains("dropOverloads"))
    }

    @Test func anEDSClusterWithNoEndpointsCompiles() throws {
        var r = XDSResources()
        r.clusters["app"] = try cluster(#"{"name": "app", "type": "EDS"}"#)
        r.loadAssignments["app"] = try assignment(#"{"cluster_name": "app"}"#)
        let snap = try compile(try translate(r))
        #expect(snap.clusters.first?.endpoints.isEmpty == true)
        var b = snap.clusters[0].makeBalancer(shard: 0, of: 1, now: 0)
        var context = PickContext(random: SplitMix64(seed: 1))
        #expect(b.pick(&context, excluding: Exclusions()) == nil, "nothing to pick: the request gets 503")
    }

    @Test func routeHashPoliciesSetTheRoutesHashKey() throws {
        func routes(_ hashPolicy: String) throws -> EnvoyRouteConfiguration {
            try EnvoyRouteConfiguration(jsonString: """
                {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                  {"match": {"prefix": "/"}, "route": {"cluster": "app", "hash_policy": \(hashPolicy)}}]}]}
                """)
        }
        let (docs, _, _) = try translateRoutes(try routes(#"[{"header": {"header_name": "X-User"}}]"#), listener: "l", knownClusters: ["app"])
        #expect(docs.first?.hashKey?.value == "header:X-User")
        let (cookie, _, _) = try translateRoutes(try routes(#"[{"cookie": {"name": "session"}}]"#), listener: "l", knownClusters: ["app"])
        #expect(cookie.first?.hashKey?.value == "cookie:session")
        let (ip, _, _) = try translateRoutes(try routes(#"[{"connection_properties": {"source_ip": true}}]"#), listener: "l", knownClusters: ["app"])
        #expect(ip.first?.hashKey?.value == "source_ip")
        #expect(refusal { _ = try translateRoutes(try routes(#"[{"cookie": {"name": "s", "ttl": "10s"}}]"#), listener: "l", knownClusters: ["app"]) }
            .contains("does not generate cookies"))
        #expect(refusal { _ = try translateRoutes(try routes(#"[{"query_parameter": {"name": "u"}}]"#), listener: "l", knownClusters: ["app"]) }
            .contains("hash_policy"))
    }

    @Test func safeRegexBecomesAPathRegex() throws {
        let config = try EnvoyRouteConfiguration(jsonString: """
            {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
              {"match": {"safe_regex": {"regex": "/u/[0-9]+"}}, "route": {"cluster": "app"}}]}]}
            """)
        let (docs, _, _) = try translateRoutes(config, listener: "l", knownClusters: ["app"])
        #expect(docs.first?.match["path_regex"]?.value == "/u/[0-9]+")
        let bad = try EnvoyRouteConfiguration(jsonString: """
            {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
              {"match": {"safe_regex": {"regex": "/u/(?i)x"}}, "route": {"cluster": "app"}}]}]}
            """)
        // A pattern Weir cannot run is refused when the snapshot compiles, naming the pattern.
        var r = XDSResources()
        r.clusters["app"] = try cluster(#"{"name": "app", "type": "EDS"}"#)
        var la = try assignment(endpointsJSON); la.clusterName = "app"
        r.loadAssignments["app"] = la
        r.routes["r"] = bad
        _ = Google_Protobuf_Any.register(messageType: HCM.self)
        r.listeners["l"] = try EnvoyListener(jsonString: """
            {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}, "filter_chains": [{"filters": [
              {"name": "hcm", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
               "stat_prefix": "l", "rds": {"route_config_name": "r", "config_source": {"ads": {}}}}}]}]}
            """)
        #expect(refusal { _ = try compile(try translate(r)) }.contains("only (?:...) groups are supported"))
    }

    @Test func healthChecksTranslateStrictly() throws {
        let http = try cluster("""
            {"name": "h", "type": "STATIC", "health_checks": [{"timeout": "1s", "interval": "5s", "unhealthy_threshold": 3, "healthy_threshold": 2,
              "interval_jitter_percent": 10, "unhealthy_interval": "10s",
              "http_health_check": {"path": "/healthz", "host": "h.local", "expected_statuses": [{"start": 200, "end": 300}, {"start": 404, "end": 405}]}}]}
            """)
        let hd = try translateCluster(http, nil)
        #expect(hd.healthCheck?["expect_status"]?.value == "200-299,404-404")
        #expect(hd.healthCheck?["jitter"]?.value == "10" && hd.healthCheck?["unhealthy_interval"]?.value == "10000ms")
        #expect(hd.healthCheck?["path"]?.value == "/healthz" && hd.healthCheck?["host"]?.value == "h.local")
        // TCP payloads are hex in Envoy: "PING" is 50494E47.
        let tcp = try cluster("""
            {"name": "t", "type": "STATIC", "health_checks": [{"timeout": "1s", "interval": "5s", "unhealthy_threshold": 3, "healthy_threshold": 2,
              "tcp_health_check": {"send": {"text": "50494E470D0A"}, "receive": [{"text": "504F4E47"}]}}]}
            """)
        let td = try translateCluster(tcp, nil)
        #expect(td.healthCheck?["send"]?.value == "PING\r\n" && td.healthCheck?["expect"]?.value == "PONG")
        let noTraffic = try cluster("""
            {"name": "n", "type": "STATIC", "health_checks": [{"timeout": "1s", "interval": "5s", "unhealthy_threshold": 3, "healthy_threshold": 2,
              "no_traffic_interval": "60s", "tcp_health_check": {}}]}
            """)
        #expect(refusal { _ = try translateCluster(noTraffic, nil) }.contains("noTrafficInterval"))
        let binary = try cluster("""
            {"name": "b", "type": "STATIC", "health_checks": [{"timeout": "1s", "interval": "5s", "unhealthy_threshold": 3, "healthy_threshold": 2,
              "tcp_health_check": {"send": {"text": "00FF"}}}]}
            """)
        #expect(refusal { _ = try translateCluster(binary, nil) }.contains("binary payloads are not supported"))
        let grpc = try cluster("""
            {"name": "g", "type": "STATIC", "health_checks": [{"timeout": "1s", "interval": "5s", "unhealthy_threshold": 3, "healthy_threshold": 2,
              "grpc_health_check": {}}]}
            """)
        #expect(refusal { _ = try translateCluster(grpc, nil) }.contains("only http_health_check and tcp_health_check"))
    }

    @Test func absurdDurationsAndWaitingClustersAreRefusedNotTrapped() throws {
        // A control plane's huge timeout saturates into the compiler's range check.
        let huge = try cluster(#"{"name": "c", "type": "STATIC", "connect_timeout": "315576000000s"}"#)
        #expect(try translateCluster(huge, nil).connectTimeout?.value == Int64.max)
        // An EDS cluster still waiting for its endpoints has its own fields checked at once.
        var r = XDSResources()
        r.clusters["w"] = try cluster(#"{"name": "w", "type": "EDS", "lb_policy": "CLUSTER_PROVIDED"}"#)
        let t = translateEach(r)
        #expect(t.rejected.first?.involved[.cluster] == "w" && t.rejected.first?.involved[.endpoint] == nil, "\(t.rejected)")
    }

    @Test func circuitBreakersBeyondMaxConnectionsAreAcceptedAndListed() throws {
        let ok = try cluster(#"{"name": "c", "type": "STATIC", "circuit_breakers": {"thresholds": [{"max_connections": 100}]}}"#)
        #expect(try translateCluster(ok, nil).pool?["max_connections"]?.value == "100")
        // They only shed load with 503s: accepted, ignored, and listed as such.
        let requests = try cluster(#"{"name": "c", "type": "STATIC", "circuit_breakers": {"thresholds": [{"max_connections": 100, "max_requests": 10}]}}"#)
        let notes = Notes()
        _ = try translateCluster(requests, nil, notes: notes)
        #expect(notes.ignored[.cluster]?["circuit_breakers.max_requests"] == ["c"])
        // 4294967295, istiod's "no limit", leaves the pool alone and is nothing to list.
        let istio = try cluster(#"{"name": "c", "type": "STATIC", "circuit_breakers": {"thresholds": [{"max_connections": 4294967295, "max_pending_requests": 4294967295, "max_requests": 4294967295, "max_retries": 4294967295}]}}"#)
        let none = Notes()
        #expect(try translateCluster(istio, nil, notes: none).pool == nil)
        #expect(none.ignored.isEmpty)
        let high = try cluster(#"{"name": "c", "type": "STATIC", "circuit_breakers": {"thresholds": [{"priority": "HIGH", "max_connections": 1}]}}"#)
        #expect(refusal { _ = try translateCluster(high, nil) }.contains("only DEFAULT priority"))
    }

    @Test func istiosDefaultRetryPolicyTranslatesAndOthersAreRefusedByName() throws {
        func routes(_ policy: String) throws -> EnvoyRouteConfiguration {
            try EnvoyRouteConfiguration(jsonString: """
                {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                  {"match": {"prefix": "/"}, "route": {"cluster": "app", "retry_policy": \(policy)}}]}]}
                """)
        }
        // Istio's default (its typed_config, an empty PreviousHostsPredicate, left out here).
        let config = try routes(#"{"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", "num_retries": 2, "retriable_status_codes": [503], "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}], "host_selection_retry_max_attempts": "5"}"#)
        let (docs, _, _) = try translateRoutes(config, listener: "l", knownClusters: ["app"])
        let retries = try #require(docs.first?.retries)
        #expect(retries["on"]?.value == "connect_failure,503" && retries["attempts"]?.value == "2" && retries["non_idempotent"]?.value == "true")
        let (fivexx, _, _) = try translateRoutes(try routes(#"{"retry_on": "5xx", "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}}"#), listener: "l", knownClusters: ["app"])
        #expect(fivexx.first?.retries?["on"]?.value == "5xx,reset" && fivexx.first?.retries?["backoff"]?.value == "100ms")
        #expect(refusal { _ = try translateRoutes(try routes(#"{"retry_on": "5xx", "per_try_timeout": "1s"}"#), listener: "l", knownClusters: ["app"]) }
            .contains("perTryTimeout"))
        #expect(refusal { _ = try translateRoutes(try routes(#"{"retry_on": "5xx", "retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts"}]}"#), listener: "l", knownClusters: ["app"]) }
            .contains("omit_canary_hosts"))
        #expect(refusal { _ = try translateRoutes(try routes(#"{"retry_on": "envoy-ratelimited"}"#), listener: "l", knownClusters: ["app"]) }
            .contains("retry_on 'envoy-ratelimited' is not supported"))
    }

    @Test func aNameInBothTheFileAndXDSIsAnErrorSayingWhere() throws {
        var doc = try YAMLLoader.parse("""
            node: { id: t }
            xds: { address: 127.0.0.1:1 }
            clusters:
              - { name: app, endpoints: [{ address: 127.0.0.1:9000 }] }
            """, file: "weir.yaml")
        var r = XDSResources()
        r.clusters["app"] = try cluster(#"{"name": "app", "type": "EDS"}"#)
        r.loadAssignments["app"] = try assignment(endpointsJSON.replacingOccurrences(of: "\"cluster_name\": \"app\"", with: "\"cluster_name\": \"app\""))
        doc.clusters += try translate(r).clusters
        #expect(refusal { _ = try Compiler.compile(doc) }.contains("duplicate cluster name 'app' (also defined at weir.yaml:4)"))
    }

    @Test func warmingResourcesWaitUnlessActivated() throws {
        var r = XDSResources()
        r.clusters["app"] = try cluster(#"{"name": "app", "type": "EDS"}"#)
        let plain = try translate(r)
        #expect(plain.clusters.isEmpty && plain.warming.map(\.key) == ["cluster app"])
        let activated = try translate(r, activate: ["cluster app"])
        #expect(activated.clusters.count == 1 && activated.warming.isEmpty)
        #expect(activated.activatedIncomplete == ["cluster app"], "activated while its endpoints are missing")
        var la = try assignment(endpointsJSON); la.clusterName = "app"
        r.loadAssignments["app"] = la
        #expect(try translate(r, activate: ["cluster app"]).activatedIncomplete.isEmpty, "complete: no longer an activated one")
        let snap = try compile(activated)
        #expect(snap.clusters.first?.endpoints.isEmpty == true, "activated by initial_fetch_timeout: no endpoints yet")
    }

    /// An Istio-shaped inbound listener: chains by port, prefix (one without prefix_len, which
    /// is /0), transport and ALPN, a refused mTLS chain, the three listener filters.
    @Test func filterChainsTranslateAsEnvoyReadsThem() throws {
        var r = XDSResources()
        r.clusters["echo"] = try cluster(#"{"name": "echo", "type": "STATIC", "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}}}}]}]}}"#)
        r.clusters["passthrough"] = try cluster(#"{"name": "passthrough", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}}}"#)
        let tcp = { (c: String) in #"{"name": "tcp", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "s", "cluster": "\#(c)"}}"# }
        let json = """
            {"name": "virtualInbound", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
             "listener_filters": [
               {"name": "o", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}},
               {"name": "t", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}},
               {"name": "h", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"},
                "filter_disabled": {"or_match": {"rules": [{"destination_port_range": {"start": 9080, "end": 9082}}, {"destination_port_range": {"start": 3306, "end": 3307}}]}}}],
             "listener_filters_timeout": "0s", "continue_on_listener_filters_timeout": true,
             "filter_chains": [
               {"name": "blackhole", "filter_chain_match": {"destination_port": 15006}, "filters": [\(tcp("echo"))]},
               {"name": "virtualInbound", "filter_chain_match": {"prefix_ranges": [{"address_prefix": "0.0.0.0"}], "transport_protocol": "tls"},
                "transport_socket": {"name": "tls", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", "require_client_certificate": true,
                  "common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": {"ads": {}}}],
                    "combined_validation_context": {"default_validation_context": {}, "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": {"ads": {}}}}}}},
                "filters": [\(tcp("passthrough"))]},
               {"name": "virtualInbound", "filter_chain_match": {"prefix_ranges": [{"address_prefix": "0.0.0.0"}], "transport_protocol": "raw_buffer"}, "filters": [\(tcp("passthrough"))]}]}
            """
        r.listeners["virtualInbound"] = try EnvoyListener(jsonString: json)
        #expect(r.sdsNames == ["ROOTCA", "default"])
        #expect(try translate(r).warming.first?.why == "secret default", "the mTLS chain waits for its certificate")
        // Activated without it (initial_fetch_timeout), that chain closes what it gets.
        let t = try translate(r, activate: ["listener virtualInbound"])
        let snap = try compile(t)
        let l = try #require(snap.listeners.first { $0.name == "virtualInbound" })
        let chains = try #require(l.chains)
        #expect(chains.matches.count == 3 && chains.targets[1] == -1, "the mTLS chain is kept, closed")
        #expect(chains.matches[1].destinationPrefixes.first?.length == 0, "no prefix_len: /0")
        #expect(chains.inspectTLS && chains.inspectHTTP && chains.matchOriginalDestination && chains.inspectTimeoutNanoseconds == 0 && chains.continueOnTimeout)
        #expect(chains.httpOffPorts == [9080...9081, 3306...3306])
        #expect(chains.inspectors(port: 9081) == (true, false) && chains.inspectors(port: 9082) == (true, true))
        #expect(snap.listeners.map(\.name).contains("virtualInbound/virtualInbound (filter_chains[2])"), "a repeated name is told apart")
        let passthrough = try #require(snap.clusters.first { $0.name == "passthrough" })
        #expect(passthrough.originalDestination && passthrough.sourceAddress?.description == "127.0.0.6:0")

        // What Weir cannot evaluate refuses the listener, named.
        let suffix = json.replacingOccurrences(of: #""destination_port": 15006"#, with: #""destination_port": 15006, "address_suffix": "::1""#)
        r.listeners["virtualInbound"] = try EnvoyListener(jsonString: suffix)
        #expect(refusal { _ = try translate(r) }.contains("filter_chains[0].filter_chain_match: unsupported field(s)"))
        let proxyProtocol = json.replacingOccurrences(of: "envoy.extensions.filters.listener.original_dst.v3.OriginalDst", with: "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol")
        r.listeners["virtualInbound"] = try EnvoyListener(jsonString: proxyProtocol)
        #expect(refusal { _ = try translate(r) }.contains("proxy_protocol: refused"))
    }

    /// A chain's DownstreamTlsContext names its certificate by SDS: the listener waits for the
    /// secret (and would close that chain's connections if activated without it), then serves
    /// it; what Weir cannot check about clients refuses the listener.
    @Test func aChainsTLSComesFromSDSAndWaitsForIt() throws {
        var r = XDSResources()
        r.clusters["app"] = try cluster(#"{"name": "app", "type": "STATIC", "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}}}}]}]}}"#)
        let tls = #"{"name": "tls", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", "common_tls_context": {"alpn_protocols": ["h2", "http/1.1"], "tls_certificate_sds_secret_configs": [{"name": "kubernetes://gw", "sds_config": {"ads": {}}}]}}}"#
        let json = #"{"name": "gw", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8443}}, "filter_chains": [{"filter_chain_match": {"server_names": ["a.example.com"]}, "transport_socket": \#(tls), "filters": [{"name": "tcp", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "s", "cluster": "app"}}]}]}"#
        r.listeners["gw"] = try EnvoyListener(jsonString: json)
        #expect(r.sdsNames == ["kubernetes://gw"])
        let waiting = try translate(r)
        #expect(waiting.listeners.isEmpty && waiting.warming.first?.why == "secret kubernetes://gw")
        let activated = try translate(r, activate: ["listener gw"])
        #expect(activated.listeners.first?.chains.first?.refused?.contains("has not arrived") == true, "activated without it: closed, never plaintext")
        r.secrets["kubernetes://gw"] = try EnvoySecret(jsonString: #"{"name": "kubernetes://gw", "tls_certificate": {"certificate_chain": {"inline_string": "PEM"}, "private_key": {"inline_string": "KEY"}}}"#)
        let ready = try translate(r)
        let chainTLS = try #require(ready.listeners.first?.chains.first?.body.tls)
        #expect(chainTLS.certificates.first?.inlinePEM?.cert == "PEM" && chainTLS.alpn.map(\.value) == ["h2", "http/1.1"], "h2 is offered (Weir speaks it)")
        // A PEM that does not load is the compiler's to refuse (named by its listener).
        #expect(refusal { _ = try compile(ready) }.contains("cannot load certificate sds:kubernetes://gw"))

        // Client certificates checked by subject alt name (Istio 1.9's inbound prefix spiffe://cluster.local/).
        let san = tls.replacingOccurrences(of: #""common_tls_context": {"#, with: #""require_client_certificate": true, "common_tls_context": {"validation_context": {"trusted_ca": {"inline_string": "CA"}, "match_subject_alt_names": [{"exact": "spiffe://cluster.local/ns/default/sa/app"}], "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/", "ignore_case": true}}]}, "#)
        r.listeners["gw"] = try EnvoyListener(jsonString: json.replacingOccurrences(of: tls, with: san))
        let checked = try #require(try translate(r).listeners.first?.chains.first?.body.tls)
        #expect(checked.clientSAN.map(\.value) == [SANMatcher(.exact, "spiffe://cluster.local/ns/default/sa/app"), SANMatcher(kind: .uri, .prefix, "spiffe://cluster.local/", ignoreCase: true)])
        #expect(checked.clientCAPEM == "CA")
        let regex = san.replacingOccurrences(of: #"{"exact": "spiffe://cluster.local/ns/default/sa/app"}"#, with: #"{"safe_regex": {"regex": "spiffe://.*"}}"#)
        r.listeners["gw"] = try EnvoyListener(jsonString: json.replacingOccurrences(of: tls, with: regex))
        #expect(refusal { _ = try translate(r) }.contains("only exact, prefix, suffix and contains matchers are supported"))
    }

    /// codec_type and http2_protocol_options: HTTP1 turns HTTP/2 off (and h2 leaves the ALPN
    /// list when the listener compiles), AUTO keeps it, the stream limit and windows carry over,
    /// HTTP3 is refused.
    @Test func theCodecTypeAndHTTP2OptionsBecomeTheListenersHTTP2() throws {
        var r = XDSResources()
        r.clusters["app"] = try cluster(#"{"name": "app", "type": "STATIC", "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}}}}]}]}}"#)
        func listener(_ extra: String) throws -> EnvoyListener {
            try EnvoyListener(jsonString: #"{"name": "in", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}}, "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "stat_prefix": "s", \#(extra) "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]}, "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}"#)
        }
        r.listeners["in"] = try listener(#""codec_type": "AUTO", "http2_protocol_options": {"max_concurrent_streams": 50, "initial_stream_window_size": 131072, "initial_connection_window_size": 2097152, "allow_connect": true},"#)
        let auto = try translate(r)
        var settings = HTTP2Settings()
        settings.maxConcurrentStreams = 50
        settings.streamWindowBytes = 131072
        settings.connectionWindowBytes = 2097152
        #expect(try compile(auto).listeners.first?.http?.http2 == settings)
        #expect(auto.notes.ignored[.listener]?.keys.contains { $0.contains("http2_protocol_options") } == true, "the rest is listed as ignored")
        r.listeners["in"] = try listener(#""codec_type": "HTTP1","#)
        #expect(try compile(try translate(r)).listeners.first?.http?.http2 == nil)
        r.listeners["in"] = try listener(#""codec_type": "HTTP3","#)
        #expect(refusal { _ = try translate(r) }.contains("codec_type HTTP3 is not supported"))
    }

    /// forward_client_cert_details and set_current_client_cert_details become the listener's
    /// XFCC policy (Istio's inbound: APPEND_FORWARD with subject, URI and DNS).
    @Test func clientCertDetailsBecomeTheListenersXFCCPolicy() throws {
        var r = XDSResources()
        r.clusters["app"] = try cluster(#"{"name": "app", "type": "STATIC", "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}}}}]}]}}"#)
        func listener(_ xfcc: String) throws -> EnvoyListener {
            try EnvoyListener(jsonString: #"{"name": "in", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}}, "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "stat_prefix": "s", \#(xfcc) "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]}, "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}"#)
        }
        r.listeners["in"] = try listener(#""forward_client_cert_details": "APPEND_FORWARD", "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true, "cert": true},"#)
        let t = try translate(r)
        #expect(t.listeners.first?.http?["forward_client_cert"]?.value == "append_forward")
        #expect(t.listeners.first?.http?["client_cert_details"]?.value == "subject,uri,dns")
        #expect(t.notes.ignored[.listener]?.keys.contains { $0.contains("cert and chain") } == true, "the PEM is not forwarded: listed")
        let snap = try compile(t)
        #expect(snap.listeners.first?.http?.clientCert == ClientCertPolicy(mode: .append_forward, details: 7))
        r.listeners["in"] = try listener("")
        #expect(try compile(try translate(r)).listeners.first?.http?.clientCert.mode == .sanitize, "SANITIZE is the default")
    }

    /// Istio's outbound cluster: endpoints labelled tlsMode istio get mTLS (SDS default and
    /// ROOTCA, the SPIFFE SAN, its SNI), the others plaintext; the cluster warms until the
    /// secrets come, and activated without them leaves its TLS endpoints out.
    @Test func anIstioClusterSpeaksMTLSToItsSidecarEndpointsOnly() throws {
        let sds = #"{"api_config_source": {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}], "set_node_on_first_message_only": true, "transport_api_version": "V3"}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}"#
        let upstream = #"{"name": "envoy.transport_sockets.tls", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "common_tls_context": {"tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"}, "alpn_protocols": ["istio-peer-exchange", "istio"], "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": \#(sds)}], "combined_validation_context": {"default_validation_context": {"match_subject_alt_names": [{"exact": "spiffe://cluster.local/ns/default/sa/reviews"}]}, "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": \#(sds)}}}, "sni": "outbound_.9080_._.reviews.default.svc.cluster.local"}}"#
        let json = #"{"name": "outbound|9080||reviews", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}, "service_name": "outbound|9080||reviews"}, "transport_socket_matches": [{"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": \#(upstream)}, {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}]}"#
        var r = XDSResources()
        r.clusters["outbound|9080||reviews"] = try cluster(json)
        r.loadAssignments["outbound|9080||reviews"] = try EnvoyLoadAssignment(jsonString: #"{"cluster_name": "outbound|9080||reviews", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9001}}}, "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}}, {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9002}}}}]}]}"#)
        #expect(r.sdsNames == ["ROOTCA", "default"], "the cluster's secrets are subscribed")
        let waiting = try translate(r)
        #expect(waiting.clusters.isEmpty && waiting.warming.first?.why == "secret default")
        let activated = try translate(r, activate: ["cluster outbound|9080||reviews"])
        #expect(activated.clusters.first?.endpoints.map { $0.address?.value } == ["127.0.0.1:9002"], "activated without its secrets: the mTLS endpoint is left out, never reached in plaintext")
        #expect(activated.activatedIncomplete.contains("cluster outbound|9080||reviews"))
        r.secrets["default"] = try EnvoySecret(jsonString: #"{"name": "default", "tls_certificate": {"certificate_chain": {"inline_bytes": "Q0VSVA=="}, "private_key": {"inline_bytes": "S0VZ"}}}"#)
        r.secrets["ROOTCA"] = try EnvoySecret(jsonString: #"{"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_bytes": "Q0E="}}}"#)
        let ready = try translate(r)
        let d = try #require(ready.clusters.first)
        #expect(d.endpoints.map(\.plaintext) == [false, true])
        let tls = try #require(d.upstreamTLS)
        #expect(tls.serverName == "outbound_.9080_._.reviews.default.svc.cluster.local" && tls.alpn == ["istio-http/1.1"])
        #expect(tls.certificate?.chain == "CERT" && tls.certificate?.key == "KEY" && tls.trustedCA?.pem == "CA")
        #expect(tls.san == [SANMatcher(.exact, "spiffe://cluster.local/ns/default/sa/reviews")])
        // A new ROOTCA is a new translation of the cluster (not the cached one).
        r.secrets["ROOTCA"] = try EnvoySecret(jsonString: #"{"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_bytes": "Q0Ey"}}}"#)
        let rotated = try translateEach(r, previous: ready)
        #expect(rotated.clusters.first?.upstreamTLS?.trustedCA?.pem == "CA2")

        // A new version that waits for a secret Weir does not hold leaves the serving one serving.
        var next = r
        next.clusters["outbound|9080||reviews"] = try cluster(json.replacingOccurrences(of: #""name": "default""#, with: #""name": "default-v2""#))
        let warmingNext = try translateEach(next, previous: rotated)
        #expect(warmingNext.clusters.first?.upstreamTLS?.trustedCA?.pem == "CA2" && warmingNext.warming.first?.why == "secret default-v2")

        // What does not depend on a secret is judged with the cluster, before its secrets come:
        // a cipher OpenSSL does not know, a health check (probes are plaintext), an empty matcher.
        var early = XDSResources()
        early.loadAssignments = r.loadAssignments
        early.clusters["outbound|9080||reviews"] = try cluster(json.replacingOccurrences(of: #""tls_maximum_protocol_version": "TLSv1_3"}"#, with: #""tls_maximum_protocol_version": "TLSv1_3", "cipher_suites": ["NOT-A-CIPHER"]}"#))
        #expect(refusal { _ = try translate(early) }.contains("ciphers: OpenSSL accepts none of 'NOT-A-CIPHER'"))
        early.clusters["outbound|9080||reviews"] = try cluster(json.replacingOccurrences(of: #""transport_socket_matches""#, with: #""health_checks": [{"timeout": "1s", "interval": "5s", "unhealthy_threshold": 2, "healthy_threshold": 1, "tcp_health_check": {}}], "transport_socket_matches""#))
        #expect(refusal { _ = try translate(early) }.contains("health_checks on a cluster with TLS endpoints"))
        early.clusters["outbound|9080||reviews"] = try cluster(json.replacingOccurrences(of: #"{"exact": "spiffe://cluster.local/ns/default/sa/reviews"}"#, with: #"{"prefix": ""}"#))
        #expect(refusal { _ = try translate(early) }.contains("an empty prefix, suffix or contains matcher would match any name"))

        // Two different TLS sockets in one cluster, and what Weir cannot check, are refused.
        var two = r
        let other = upstream.replacingOccurrences(of: "sa/reviews", with: "sa/other")
        two.clusters["outbound|9080||reviews"] = try cluster(json.replacingOccurrences(of: #"{"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}"#, with: #"{"name": "other", "match": {}, "transport_socket": \#(other)}"#))
        #expect(refusal { _ = try translate(two) }.contains("endpoints use two TLS transport sockets"))
        two.clusters["outbound|9080||reviews"] = try cluster(json.replacingOccurrences(of: #""sni""#, with: #""auto_host_sni": true, "sni""#))
        #expect(refusal { _ = try translate(two) }.contains("unsupported field(s)"))
    }

    /// A listener's new version that warms leaves the previous one serving, but only while the
    /// clusters that one uses are still there.
    @Test func aWarmingNewVersionLeavesThePreviousOneServing() throws {
        var r = XDSResources()
        r.clusters["app"] = try cluster(#"{"name": "app", "type": "STATIC", "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}}}}]}]}}"#)
        let tcp = #"{"name": "tcp", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "s", "cluster": "app"}}"#
        r.listeners["gw"] = try EnvoyListener(jsonString: #"{"name": "gw", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8443}}, "filter_chains": [{"filters": [\#(tcp)]}]}"#)
        let v1 = try translate(r)
        #expect(v1.listeners.map { $0.cluster?.value } == ["app"])
        let tls = #"{"name": "tls", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", "common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": "cert", "sds_config": {"ads": {}}}]}}}"#
        r.listeners["gw"] = try EnvoyListener(jsonString: #"{"name": "gw", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8443}}, "filter_chains": [{"filter_chain_match": {"server_names": ["a.example.com"]}, "transport_socket": \#(tls), "filters": [\#(tcp)]}]}"#)
        let v2 = translateEach(r, previous: v1)
        #expect(v2.warming.map(\.why) == ["secret cert"])
        #expect(v2.listeners.map { $0.cluster?.value } == ["app"] && v2.listeners.first?.chains.isEmpty == true, "version 1 serves while version 2 warms")
        // Its cluster goes: the old version cannot stand in any more (it would not compile).
        r.clusters = [:]
        let v3 = translateEach(r, previous: v2)
        #expect(v3.listeners.isEmpty)
        #expect(v3.rejected.isEmpty == false || v3.warming.isEmpty == false)
    }
}
