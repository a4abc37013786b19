// Envoy's bootstrap as Weir's configuration, so Weir runs where pilot-agent (Istio's proxy agent)
// starts Envoy: the node (id, cluster, metadata), the admin address, the ADS stream's cluster
// (a Unix socket, ./etc/istio/proxy/XDS, or an address), and the static listeners and clusters
// (Istio's 15090 Prometheus and 15021 health listeners) translated as xDS resources are. What a
// bootstrap holds that changes nothing Weir does (stats, tracing, runtime, overload) is ignored
// with one warning each; what Weir cannot honour refuses it.
import Foundation
import SwiftProtobuf
import WeirConfig
import WeirXDSProtos

public enum Bootstrap {
    /// Whether a file looks like an Envoy bootstrap (JSON with Envoy's top-level keys).
    public static func recognizes(_ data: Data) -> Bool {
        guard let first = data.first(where: { ![9, 10, 13, 32].contains($0) }), first == UInt8(ascii: "{"),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return false }
        return object["static_resources"] != nil || object["dynamic_resources"] != nil || object["node"] != nil
    }

    /// What Envoy's command line adds: --drain-time-s, --concurrency, --service-cluster and
    /// --service-node (used when the bootstrap's node does not say).
    public struct Flags: Sendable {
        public var drainSeconds: Int?
        public var serviceCluster: String?
        public var serviceNode: String?
        public init(drainSeconds: Int? = nil, serviceCluster: String? = nil, serviceNode: String? = nil) {
            self.drainSeconds = drainSeconds; self.serviceCluster = serviceCluster; self.serviceNode = serviceNode
        }
    }

    /// The document, and warnings (one per ignored key) for the log.
    public static func document(_ data: Data, path: String, flags: Flags = Flags()) throws -> (ConfigDocument, [String]) {
        let p = SourcePosition(file: path, line: 1, column: 1)
        func fail(_ m: String) -> ConfigErrors { ConfigErrors([ConfigError(p, "envoy bootstrap: \(m)")]) }
        guard let root = try JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw fail("not a JSON object") }
        var doc = ConfigDocument(source: path, position: p)
        var warnings: [String] = []
        let known: Set<String> = ["node", "admin", "static_resources", "dynamic_resources"]
        for key in root.keys.sorted() where !known.contains(key) {
            warnings.append("envoy bootstrap: '\(key)' is ignored (it changes neither where traffic goes nor who may send it)")
        }
        // The node, as the control plane will know it.
        let node = root["node"] as? [String: Any] ?? [:]
        let id = (node["id"] as? String) ?? flags.serviceNode ?? ""
        let cluster = (node["cluster"] as? String) ?? flags.serviceCluster ?? ""
        doc.node["id"] = Located(id, at: p)
        doc.node["cluster"] = Located(cluster, at: p)
        if let m = node["metadata"] {
            let json = String(decoding: try JSONSerialization.data(withJSONObject: m), as: UTF8.self)
            // Sent as a protobuf Struct: one that does not convert is refused now, not dropped.
            do { _ = try Google_Protobuf_Struct(jsonString: json) } catch { throw fail("node.metadata: \(error)") }
            doc.nodeMetadataJSON = json
        }
        if let loc = node["locality"] as? [String: Any] {
            let parts = [loc["region"], loc["zone"], loc["sub_zone"]].map { ($0 as? String) ?? "" }
            doc.node["locality"] = Located(parts.joined(separator: "/"), at: p)
        }
        for k in node.keys.sorted() where !["id", "cluster", "metadata", "locality"].contains(k) {
            warnings.append("envoy bootstrap: node.\(k) is not sent to the control plane")
        }
        // Admin: Istio binds 127.0.0.1:15000 and scrapes /stats/prometheus through 15090.
        if let admin = root["admin"] as? [String: Any] {
            if let a = (admin["address"] as? [String: Any])?["socket_address"] as? [String: Any] {
                doc.adminAddress = Located(try socketText(a, fail), at: p)
                doc.adminPosition = p
            }
            for k in admin.keys.sorted() where k != "address" { warnings.append("envoy bootstrap: admin.\(k) is ignored") }
        }
        if let seconds = flags.drainSeconds { doc.drainTimeout = Located(Int64(min(max(seconds, 0), 3600)) * 1_000_000_000, at: p) }
        // Static clusters: the ADS one and the SDS one are how Weir reaches the agent; the others
        // are served (as xDS clusters are).
        let statics = root["static_resources"] as? [String: Any] ?? [:]
        var clustersByName: [String: [String: Any]] = [:]
        for c in statics["clusters"] as? [[String: Any]] ?? [] { if let n = c["name"] as? String { clustersByName[n] = c } }
        var xdsCluster: String? = nil
        if let dynamic = root["dynamic_resources"] as? [String: Any] {
            guard let ads = dynamic["ads_config"] as? [String: Any],
                  let service = (ads["grpc_services"] as? [[String: Any]])?.first,
                  let name = (service["envoy_grpc"] as? [String: Any])?["cluster_name"] as? String else {
                throw fail("dynamic_resources needs ads_config with an envoy_grpc cluster (Weir speaks ADS only)")
            }
            guard let c = clustersByName[name] else { throw fail("the ADS cluster '\(name)' is not among static_resources.clusters") }
            xdsCluster = name
            doc.xds = ["address": Located(try endpointText(c, fail), at: p)]
            // Envoy writes durations as "15s" or "0.5s"; 0s means no timeout (Weir's 0 too).
            if let lds = dynamic["lds_config"] as? [String: Any], let t = lds["initial_fetch_timeout"] as? String {
                guard t.hasSuffix("s"), let seconds = Double(t.dropLast()), seconds >= 0, seconds <= 600 else {
                    throw fail("dynamic_resources.lds_config.initial_fetch_timeout '\(t)' is not a duration up to 600s")
                }
                doc.xds?["initial_fetch_timeout"] = Located("\(Int((seconds * 1000).rounded()))ms", at: p)
            }
            if let api = ads["api_type"] as? String, api != "GRPC" { throw fail("ads_config.api_type \(api) is not supported (GRPC, state of the world, is)") }
            for k in dynamic.keys.sorted() where !["lds_config", "cds_config", "ads_config"].contains(k) {
                warnings.append("envoy bootstrap: dynamic_resources.\(k) is ignored")
            }
            doc.xdsPosition = p
        }
        // pilot-agent's SDS socket: the workload certificate and root CA come from there.
        if let c = clustersByName["sds-grpc"], let e = try? endpointText(c, fail), e.hasPrefix("unix:") {
            if doc.xds == nil { warnings.append("envoy bootstrap: the sds-grpc cluster is not used without dynamic_resources") }
            doc.xds?["sds_address"] = Located(e, at: p)
        }
        var r = XDSResources()
        for (name, c) in clustersByName where name != xdsCluster {
            // The agent's SDS socket and tracing collectors are not traffic targets Weir serves.
            if (try? endpointText(c, fail))?.hasPrefix("unix:") == true { continue }
            if let t = c["type"] as? String, t == "STRICT_DNS" || t == "LOGICAL_DNS" {
                warnings.append("envoy bootstrap: static cluster '\(name)' (\(t)) is left out: Weir does not resolve names")
                continue
            }
            do { r.clusters[name] = try EnvoyCluster(jsonString: String(decoding: try JSONSerialization.data(withJSONObject: c), as: UTF8.self)) }
            catch { throw fail("static cluster '\(name)': \(error)") }
        }
        for (i, l) in (statics["listeners"] as? [[String: Any]] ?? []).enumerated() {
            var listener: EnvoyListener
            do { listener = try EnvoyListener(jsonString: String(decoding: try JSONSerialization.data(withJSONObject: l), as: UTF8.self)) }
            catch { throw fail("static listener \(i): \(error)") }
            if listener.name.isEmpty, case .socketAddress(let sa)? = listener.address.address { listener.name = "static_\(sa.portValue)" }
            if listener.name.isEmpty || r.listeners[listener.name] != nil { listener.name = "static_\(i)" }
            r.listeners[listener.name] = listener
        }
        let t = translateEach(r)
        if let e = t.rejected.first { throw fail("static resources: \(e)") }
        if let w = t.warming.first { throw fail("static resources: \(w.key) needs \(w.why), which only xDS could bring") }
        doc.listeners = t.listeners
        doc.clusters = t.clusters
        return (doc, warnings)
    }

    static func socketText(_ a: [String: Any], _ fail: (String) -> ConfigErrors) throws -> String {
        guard let host = a["address"] as? String else { throw fail("a socket_address needs an address") }
        guard let port = (a["port_value"] as? Int) ?? Int(a["port_value"] as? String ?? ""), (0...65535).contains(port) else {
            throw fail("socket_address \(host) needs a port_value")
        }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// A static cluster's one endpoint: "IP:PORT" or "unix:PATH" (a pipe).
    static func endpointText(_ c: [String: Any], _ fail: (String) -> ConfigErrors) throws -> String {
        let name = c["name"] as? String ?? "?"
        guard let la = c["load_assignment"] as? [String: Any], let eps = (la["endpoints"] as? [[String: Any]])?.first,
              let lb = (eps["lb_endpoints"] as? [[String: Any]])?.first,
              let address = (lb["endpoint"] as? [String: Any])?["address"] as? [String: Any] else {
            throw fail("cluster '\(name)' needs one endpoint in load_assignment")
        }
        if let pipe = address["pipe"] as? [String: Any], let path = pipe["path"] as? String { return "unix:\(path)" }
        if let sa = address["socket_address"] as? [String: Any] { return try socketText(sa, fail) }
        throw fail("cluster '\(name)': its endpoint needs a socket_address or a pipe")
    }
}
