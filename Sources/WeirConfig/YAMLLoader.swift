// Reads a YAML file into the intermediate form. Checks shapes and types here (unknown keys, a
// string where a number belongs); meaning (names, references, ranges) is the compiler's job.
import Foundation
import WeirCore
import Yams

public enum YAMLLoader {
    /// Only merge keys ("<<") are resolved: Weir reads every scalar as text and parses numbers,
    /// durations and booleans itself, so the default resolver's per-scalar regular expressions
    /// (int, float, bool, null, timestamp) were pure cost: most of a large file's load time.
    static let resolver = Resolver.basic.appending(Resolver.Rule.merge)

    /// Reads and parses `path`. Throws `ConfigErrors` when the file cannot be read or is not YAML;
    /// other problems are carried in the document for the compiler to report.
    public static func load(path: String) throws -> ConfigDocument {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigErrors([ConfigError(SourcePosition(file: path, line: 0, column: 0),
                                            "cannot read the file (does it exist, and may weir read it?)")])
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigErrors([ConfigError(SourcePosition(file: path, line: 0, column: 0), "the file is not UTF-8 text")])
        }
        return try parse(text, file: path)
    }

    /// Parses YAML text; `file` names it in errors.
    public static func parse(_ text: String, file: String) throws -> ConfigDocument {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text, YAMLLoader.resolver)
        } catch let e as YamlError {
            throw ConfigErrors([yamlSyntaxError(e, file: file)])
        }
        var reader = Reader(file: file)
        var doc = reader.document(node)
        // Shape errors travel with the document so the compiler reports them beside its own,
        // and `weir check` lists every problem in one run.
        doc.shapeErrors = reader.errors
        return doc
    }

    static func yamlSyntaxError(_ e: YamlError, file: String) -> ConfigError {
        switch e {
        case let .scanner(_, problem, mark, _), let .parser(_, problem, mark, _), let .composer(_, problem, mark, _):
            return ConfigError(SourcePosition(file: file, line: mark.line, column: mark.column), "YAML syntax: \(problem)")
        case let .duplicatedKeysInMapping(duplicates, context):
            return ConfigError(SourcePosition(file: file, line: context.mark.line, column: context.mark.column),
                               "duplicate key(s) \(duplicates.joined(separator: ", ")) in one mapping")
        default:
            return ConfigError(SourcePosition(file: file, line: 1, column: 1), "YAML: \(e)")
        }
    }
}

/// Walks the YAML tree, collecting every error rather than stopping at the first.
struct Reader {
    let file: String
    var errors: [ConfigError] = []

    init(file: String) { self.file = file }

    func pos(_ node: Node?) -> SourcePosition {
        guard let m = node?.mark else { return SourcePosition(file: file, line: 1, column: 1) }
        return SourcePosition(file: file, line: m.line, column: m.column)
    }

    mutating func fail(_ node: Node?, _ message: String) { errors.append(ConfigError(pos(node), message)) }

    /// The mapping's pairs by key, reporting keys not in `allowed`.
    mutating func fields(_ node: Node, allowed: [String], what: String) -> [String: (key: Node, value: Node)] {
        guard let mapping = node.mapping else {
            fail(node, "\(what) must be a mapping (key: value)")
            return [:]
        }
        var out: [String: (key: Node, value: Node)] = [:]
        for (k, v) in mapping {
            guard let key = k.string else { fail(k, "keys must be strings"); continue }
            if !allowed.contains(key) {
                let hint = closest(key, in: allowed).map { "; did you mean '\($0)'?" } ?? ""
                fail(k, "unknown key '\(key)' in \(what) (known: \(allowed.joined(separator: ", ")))\(hint)")
                continue
            }
            out[key] = (k, v)
        }
        return out
    }

    mutating func string(_ f: (key: Node, value: Node)?, _ name: String) -> Located<String>? {
        guard let f else { return nil }
        guard case .scalar(let s) = f.value else { fail(f.value, "'\(name)' must be a string"); return nil }
        return Located(s.string, at: pos(f.value))
    }

    mutating func int(_ f: (key: Node, value: Node)?, _ name: String) -> Located<Int>? {
        guard let f else { return nil }
        guard case .scalar(let s) = f.value, let v = Int(s.string) else {
            fail(f.value, "'\(name)' must be a whole number"); return nil
        }
        return Located(v, at: pos(f.value))
    }

    mutating func duration(_ f: (key: Node, value: Node)?, _ name: String) -> Located<Int64>? {
        guard let f else { return nil }
        guard case .scalar(let s) = f.value, let ns = parseDurationNanoseconds(s.string) else {
            fail(f.value, "'\(name)' must be a duration such as 500ms, 2s, 1m or 1h"); return nil
        }
        return Located(ns, at: pos(f.value))
    }

    mutating func bool(_ f: (key: Node, value: Node)?, _ name: String) -> Located<Bool>? {
        guard let f else { return nil }
        guard case .scalar(let s) = f.value, s.string == "true" || s.string == "false" else {
            fail(f.value, "'\(name)' must be true or false"); return nil
        }
        return Located(s.string == "true", at: pos(f.value))
    }

    /// A list of strings (one string alone counts as a list of one).
    mutating func strings(_ f: (key: Node, value: Node)?, _ name: String) -> [Located<String>] {
        guard let f else { return [] }
        if case .scalar(let s) = f.value { return [Located(s.string, at: pos(f.value))] }
        return list(f, name).compactMap { n in
            if let v = n.string { return Located(v, at: pos(n)) }
            fail(n, "'\(name)' must list strings"); return nil
        }
    }

    mutating func bytes(_ f: (key: Node, value: Node)?, _ name: String) -> Located<Int>? {
        guard let f else { return nil }
        guard case .scalar(let s) = f.value, let b = parseByteSize(s.string) else {
            fail(f.value, "'\(name)' must be a size such as 16384, 16KiB or 1MiB"); return nil
        }
        return Located(b, at: pos(f.value))
    }

    mutating func list(_ f: (key: Node, value: Node)?, _ name: String) -> [Node] {
        guard let f else { return [] }
        guard let seq = f.value.sequence else { fail(f.value, "'\(name)' must be a list"); return [] }
        return Array(seq)
    }

    mutating func document(_ root: Node?) -> ConfigDocument {
        var doc = ConfigDocument(source: file, position: pos(root))
        guard let root else { fail(nil, "the file is empty; it needs at least 'listeners' and 'clusters'"); return doc }
        let f = fields(root, allowed: ["shards", "drain_timeout", "log_level", "watch_config", "limits", "admin", "listeners", "clusters",
                                       "xds", "node"], what: "the top level")
        if let x = f["xds"] {
            doc.xdsPosition = pos(x.value)
            doc.xds = flatMapping(x.value, allowed: ["address", "initial_fetch_timeout", "sds_address"], what: "xds")
        }
        if let n = f["node"] {
            var nf = fields(n.value, allowed: ["id", "cluster", "metadata", "locality"], what: "node")
            if let m = nf.removeValue(forKey: "metadata") {
                if let mapping = m.value.mapping {
                    for (k, v) in mapping {
                        if let key = k.string, case .scalar(let sv) = v { doc.nodeMetadata[key] = sv.string } else { fail(k, "node metadata must map names to plain values") }
                    }
                } else { fail(m.value, "node metadata must be a mapping") }
            }
            for (k, v) in nf { if let s = string(v, k) { doc.node[k] = s } }
        }
        if let s = f["shards"] {
            if s.value.string == "auto" { doc.shards = nil } else { doc.shards = int(s, "shards (a number or auto)") }
        }
        doc.drainTimeout = duration(f["drain_timeout"], "drain_timeout")
        doc.logLevel = string(f["log_level"], "log_level")
        doc.watchConfig = string(f["watch_config"], "watch_config")
        if let l = f["limits"] {
            let lf = fields(l.value, allowed: ["max_connections_per_shard", "buffer_bytes", "buffers_per_shard",
                                               "max_queued_buffers", "data_path", "head_buffers_per_shard", "io"], what: "limits")
            doc.limits.maxConnectionsPerShard = int(lf["max_connections_per_shard"], "max_connections_per_shard")
            doc.limits.bufferBytes = bytes(lf["buffer_bytes"], "buffer_bytes")
            doc.limits.buffersPerShard = int(lf["buffers_per_shard"], "buffers_per_shard")
            doc.limits.maxQueuedBuffersPerDirection = int(lf["max_queued_buffers"], "max_queued_buffers")
            doc.limits.dataPath = string(lf["data_path"], "data_path")
            doc.limits.io = string(lf["io"], "io")
            doc.limits.headBuffersPerShard = int(lf["head_buffers_per_shard"], "head_buffers_per_shard")
        }
        if let a = f["admin"] {
            doc.adminPosition = pos(a.value)
            let af = fields(a.value, allowed: ["address", "allow_remote"], what: "admin")
            doc.adminAddress = string(af["address"], "address")
            doc.adminAllowRemote = string(af["allow_remote"], "allow_remote")
        }
        for node in list(f["listeners"], "listeners") { doc.listeners.append(listener(node)) }
        for node in list(f["clusters"], "clusters") { doc.clusters.append(cluster(node)) }
        return doc
    }

    static let listenerBodyKeys = ["protocol", "cluster", "weighted_clusters", "idle_timeout", "http", "routes", "tls", "client_hello_timeout"]

    mutating func listener(_ node: Node) -> ListenerDocument {
        var l = ListenerDocument(position: pos(node))
        let f = fields(node, allowed: ["name", "address", "backlog", "bind_to_port", "use_original_destination", "chains", "default_chain",
                                       "inspectors", "inspect_timeout", "continue_on_inspect_timeout"] + Reader.listenerBodyKeys, what: "a listener")
        l.name = string(f["name"], "name")
        l.address = string(f["address"], "address")
        l.backlog = int(f["backlog"], "backlog")
        l.bindToPort = bool(f["bind_to_port"], "bind_to_port")
        l.useOriginalDestination = bool(f["use_original_destination"], "use_original_destination")
        if let c = f["chains"] {
            l.chainsPosition = pos(c.value)
            for n in list(c, "chains") { l.chains.append(chain(n, isDefault: false)) }
        }
        if let d = f["default_chain"] { l.chains.append(chain(d.value, isDefault: true)) }
        if let i = f["inspectors"] { l.inspectors = strings(i, "inspectors") }
        l.inspectTimeout = duration(f["inspect_timeout"], "inspect_timeout")
        l.continueOnInspectTimeout = bool(f["continue_on_inspect_timeout"], "continue_on_inspect_timeout")
        listenerBody(f, into: &l)
        return l
    }

    /// One of `chains:` (a name, a match, and what a listener would say) or `default_chain:`.
    mutating func chain(_ node: Node, isDefault: Bool) -> ChainDocument {
        let f = fields(node, allowed: (isDefault ? ["name"] : ["name", "match"]) + Reader.listenerBodyKeys, what: isDefault ? "default_chain" : "a chain")
        var body = ListenerDocument(position: pos(node))
        listenerBody(f, into: &body)
        var c = ChainDocument(position: pos(node), body: body)
        c.name = string(f["name"], "name")
        if isDefault { return c }
        var m = ChainMatchDocument(position: pos(f["match"]?.value ?? node))
        if let mf = f["match"] {
            let g = fields(mf.value, allowed: ["destination_port", "prefix_ranges", "server_names", "transport_protocol", "application_protocols",
                                               "source_prefix_ranges", "source_ports"], what: "match")
            m.destinationPort = int(g["destination_port"], "destination_port")
            m.destinationPrefixes = strings(g["prefix_ranges"], "prefix_ranges")
            m.serverNames = strings(g["server_names"], "server_names")
            m.transportProtocol = string(g["transport_protocol"], "transport_protocol")
            m.applicationProtocols = strings(g["application_protocols"], "application_protocols")
            m.sourcePrefixes = strings(g["source_prefix_ranges"], "source_prefix_ranges")
            m.sourcePorts = list(g["source_ports"], "source_ports").compactMap { n in
                if let v = n.string.flatMap({ Int($0) }) { return Located(v, at: pos(n)) }
                fail(n, "source_ports must list port numbers"); return nil
            }
        }
        c.match = m
        return c
    }

    /// What a listener and a chain share: protocol, cluster or routes, TLS, HTTP settings.
    mutating func listenerBody(_ f: [String: (key: Node, value: Node)], into l: inout ListenerDocument) {
        l.proto = string(f["protocol"], "protocol")
        l.cluster = string(f["cluster"], "cluster")
        if let w = f["weighted_clusters"] {
            l.weightedClustersPosition = pos(w.value)
            l.weightedClusters = weightedClusters(w)
        }
        l.idleTimeout = duration(f["idle_timeout"], "idle_timeout")
        l.clientHelloTimeout = duration(f["client_hello_timeout"], "client_hello_timeout")
        if let h = f["http"] {
            l.httpPosition = pos(h.value)
            l.http = flatMapping(h.value, allowed: ["strip_host_port", "normalize_path", "request_header_timeout", "max_request_line_bytes", "max_header_bytes",
                                                   "max_headers", "max_body_bytes", "access_log", "forward_client_cert", "client_cert_details",
                                                   "http2", "http2_max_concurrent_streams", "http2_stream_window_bytes", "http2_connection_window_bytes",
                                                   "http2_reset_burst", "http2_resets_per_second", "http2_max_continuations", "http2_max_pending_acks",
                                                   "http2_max_settings_entries"], what: "http")
        }
        if let t = f["tls"] {
            var d = TLSDocument(position: pos(t.value))
            let tf = fields(t.value, allowed: ["certificates", "min_version", "max_version", "ciphers", "ciphersuites", "curves", "alpn", "client_ca",
                                               "client_san", "ticket_key_rotation"], what: "tls")
            for n in list(tf["certificates"], "certificates") {
                var c = CertificateDocument(position: pos(n))
                let cf = fields(n, allowed: ["cert", "key", "server_names", "ocsp_staple"], what: "a certificate")
                c.cert = string(cf["cert"], "cert")
                c.key = string(cf["key"], "key")
                c.ocspStaple = string(cf["ocsp_staple"], "ocsp_staple")
                c.serverNames = list(cf["server_names"], "server_names").compactMap { s in
                    if let v = s.string { return Located(v, at: pos(s)) }
                    fail(s, "server_names must list names"); return nil
                }
                d.certificates.append(c)
            }
            d.minVersion = string(tf["min_version"], "min_version")
            d.maxVersion = string(tf["max_version"], "max_version")
            // A list or one ':'-separated string, as OpenSSL and Envoy write them.
            func names(_ key: String) -> Located<String>? {
                guard let n = tf[key] else { return nil }
                if let v = n.value.string { return Located(v, at: pos(n.value)) }
                let items = list(n, key).compactMap { s -> String? in
                    if let v = s.string { return v }
                    fail(s, "\(key) must list names"); return nil
                }
                return Located(items.joined(separator: ":"), at: pos(n.value))
            }
            d.ciphers = names("ciphers")
            d.cipherSuites = names("ciphersuites")
            d.curves = names("curves")
            d.alpn = list(tf["alpn"], "alpn").compactMap { s in
                if let v = s.string { return Located(v, at: pos(s)) }
                fail(s, "alpn must list protocol names"); return nil
            }
            d.clientCA = string(tf["client_ca"], "client_ca")
            d.clientSAN = list(tf["client_san"], "client_san").compactMap { s in
                if let v = s.string { return Located(SANMatcher(text: v), at: pos(s)) }
                fail(s, "client_san must list names"); return nil
            }
            d.ticketKeyRotation = duration(tf["ticket_key_rotation"], "ticket_key_rotation")
            l.tls = d
        }
        if let r = f["routes"] {
            l.routesPosition = pos(r.value)
            for node in list(r, "routes") { l.routes.append(route(node)) }
        }
    }

    /// `weighted_clusters: [{ cluster: a, weight: 90 }, ...]` on a route or a tcp listener.
    mutating func weightedClusters(_ w: (key: Node, value: Node)) -> [WeightedClusterDocument] {
        list(w, "weighted_clusters").map { n in
            var d = WeightedClusterDocument(position: pos(n))
            let wf = fields(n, allowed: ["cluster", "weight"], what: "a weighted cluster")
            d.cluster = string(wf["cluster"], "cluster")
            d.weight = int(wf["weight"], "weight")
            return d
        }
    }

    mutating func route(_ node: Node) -> RouteDocument {
        var r = RouteDocument(position: pos(node))
        let f = fields(node, allowed: ["match", "cluster", "weighted_clusters", "direct_response", "redirect", "timeout", "idle_timeout",
                                       "retries", "prefix_rewrite", "host_rewrite", "request_headers_to_add", "request_headers_to_remove",
                                       "response_headers_to_add", "response_headers_to_remove", "hash_key"], what: "a route")
        if let m = f["match"] {
            var inner = fields(m.value, allowed: ["host", "path_prefix", "path_exact", "path_regex", "methods", "headers", "sni"], what: "match")
            if let h = inner.removeValue(forKey: "headers") { r.matchHeaders = headerList(h, "headers", valueRequired: false) }
            for (key, pair) in inner {
                switch pair.value {
                case .scalar(let s): r.match[key] = Located(s.string, at: pos(pair.value))
                case .sequence(let seq):
                    let items = seq.compactMap { $0.string }
                    if items.count != seq.count { fail(pair.value, "'\(key)' must be a list of plain values"); continue }
                    r.match[key] = Located(items.joined(separator: ","), at: pos(pair.value))
                default: fail(pair.value, "'\(key)' must be a plain value or a list")
                }
            }
        }
        r.cluster = string(f["cluster"], "cluster")
        if let w = f["weighted_clusters"] {
            r.weightedClustersPosition = pos(w.value)
            r.weightedClusters = weightedClusters(w)
        }
        if let d = f["direct_response"] {
            r.directResponsePosition = pos(d.value)
            r.directResponse = flatMapping(d.value, allowed: ["status", "body"], what: "direct_response")
        }
        if let d = f["redirect"] {
            r.redirectPosition = pos(d.value)
            r.redirect = flatMapping(d.value, allowed: ["status", "scheme", "host", "path", "prefix"], what: "redirect")
        }
        r.timeout = duration(f["timeout"], "timeout")
        r.idleTimeout = duration(f["idle_timeout"], "idle_timeout")
        if let t = f["retries"] {
            r.retries = flatMapping(t.value, allowed: ["attempts", "on", "backoff", "non_idempotent"], what: "retries")
        }
        r.prefixRewrite = string(f["prefix_rewrite"], "prefix_rewrite")
        r.hashKey = string(f["hash_key"], "hash_key")
        r.hostRewrite = string(f["host_rewrite"], "host_rewrite")
        if let h = f["request_headers_to_add"] { r.requestHeadersToAdd = headerList(h, "request_headers_to_add", valueRequired: true) }
        if let h = f["response_headers_to_add"] { r.responseHeadersToAdd = headerList(h, "response_headers_to_add", valueRequired: true) }
        r.requestHeadersToRemove = list(f["request_headers_to_remove"], "request_headers_to_remove").compactMap { n in
            if let s = n.string { return Located(s, at: pos(n)) }
            fail(n, "request_headers_to_remove must list header names"); return nil
        }
        r.responseHeadersToRemove = list(f["response_headers_to_remove"], "response_headers_to_remove").compactMap { n in
            if let s = n.string { return Located(s, at: pos(n)) }
            fail(n, "response_headers_to_remove must list header names"); return nil
        }
        return r
    }

    /// Headers written as a mapping (`X-A: b`) or a list of `{ name: X-A, value: b }`.
    mutating func headerList(_ f: (key: Node, value: Node), _ what: String, valueRequired: Bool) -> [HeaderDocument] {
        var out: [HeaderDocument] = []
        if let mapping = f.value.mapping {
            for (k, v) in mapping {
                var h = HeaderDocument(position: pos(k))
                guard let name = k.string, case .scalar(let s) = v else { fail(k, "\(what): names and values must be plain text"); continue }
                h.name = Located(name, at: pos(k))
                h.value = Located(s.string, at: pos(v))
                out.append(h)
            }
            return out
        }
        for n in list(f, what) {
            var h = HeaderDocument(position: pos(n))
            let matchKeys = ["prefix", "suffix", "contains", "regex", "present", "ignore_case", "invert"]
            let hf = fields(n, allowed: ["name", "value"] + (valueRequired ? [] : matchKeys), what: "a header in \(what)")
            h.name = string(hf["name"], "name")
            h.value = string(hf["value"], "value")
            h.prefix = string(hf["prefix"], "prefix")
            h.suffix = string(hf["suffix"], "suffix")
            h.contains = string(hf["contains"], "contains")
            h.regex = string(hf["regex"], "regex")
            h.present = string(hf["present"], "present")
            h.ignoreCase = string(hf["ignore_case"], "ignore_case")
            h.invert = string(hf["invert"], "invert")
            if h.name == nil { fail(n, "a header in \(what) needs a 'name'") }
            if valueRequired && h.value == nil { fail(n, "a header in \(what) needs a 'value'") }
            out.append(h)
        }
        return out
    }

    /// A mapping of plain values (a list becomes its items joined by commas), keys checked.
    mutating func flatMapping(_ node: Node, allowed: [String], what: String) -> [String: Located<String>] {
        var out: [String: Located<String>] = [:]
        for (key, pair) in fields(node, allowed: allowed, what: what) {
            switch pair.value {
            case .scalar(let s): out[key] = Located(s.string, at: pos(pair.value))
            case .sequence(let seq):
                let items = seq.compactMap { $0.string }
                if items.count != seq.count { fail(pair.value, "'\(key)' must be a list of plain values"); continue }
                out[key] = Located(items.joined(separator: ","), at: pos(pair.value))
            default: fail(pair.value, "'\(key)' must be a plain value or a list")
            }
        }
        return out
    }

    mutating func cluster(_ node: Node) -> ClusterDocument {
        var c = ClusterDocument(position: pos(node))
        let f = fields(node, allowed: ["name", "balancer", "balancer_options", "slow_start", "connect_timeout",
                                       "connect_attempts", "health_check", "outlier_detection", "panic_threshold",
                                       "pool", "tls", "endpoints", "overprovisioning_factor", "original_destination", "source_address"], what: "a cluster")
        c.originalDestination = bool(f["original_destination"], "original_destination")
        c.sourceAddress = string(f["source_address"], "source_address")
        c.name = string(f["name"], "name")
        c.balancer = string(f["balancer"], "balancer")
        c.connectTimeout = duration(f["connect_timeout"], "connect_timeout")
        c.connectAttempts = int(f["connect_attempts"], "connect_attempts")
        c.overprovisioningFactor = int(f["overprovisioning_factor"], "overprovisioning_factor")
        if let o = f["balancer_options"] {
            c.balancerOptionsPosition = pos(o.value)
            if let mapping = o.value.mapping {
                for (k, v) in mapping {
                    guard let key = k.string, case .scalar(let scalar) = v else { fail(k, "balancer_options values must be plain values"); continue }
                    c.balancerOptions[key] = Located(scalar.string, at: pos(k))
                }
            } else {
                fail(o.value, "balancer_options must be a mapping (key: value)")
            }
        }
        if let h = f["health_check"] {
            c.healthCheckPosition = pos(h.value)
            c.healthCheck = flatMapping(h.value, allowed: ["type", "path", "host", "expect_status", "interval", "timeout", "jitter",
                                                         "unhealthy_threshold", "healthy_threshold", "unhealthy_interval",
                                                         "initial", "port", "send", "expect"], what: "health_check")
        }
        if let o = f["outlier_detection"] {
            c.outlierDetectionPosition = pos(o.value)
            c.outlierDetection = flatMapping(o.value, allowed: ["consecutive_failures", "base_ejection_time", "max_ejection_percent"],
                                             what: "outlier_detection")
        }
        c.panicThreshold = string(f["panic_threshold"], "panic_threshold")
        if let t = f["tls"] {
            c.tlsPosition = pos(t.value)
            c.tls = flatMapping(t.value, allowed: ["sni", "ca", "verify", "cert", "key", "verify_san", "alpn"], what: "tls")
        }
        if let p = f["pool"] {
            c.pool = flatMapping(p.value, allowed: ["max_connections", "max_idle", "idle_timeout", "max_requests_per_connection"], what: "pool")
        }
        if let ss = f["slow_start"] {
            var d = SlowStartDocument(position: pos(ss.value))
            let sf = fields(ss.value, allowed: ["window", "aggression", "min_weight_percent"], what: "slow_start")
            d.window = duration(sf["window"], "window")
            d.aggression = string(sf["aggression"], "aggression")
            d.minWeightPercent = string(sf["min_weight_percent"], "min_weight_percent")
            c.slowStart = d
        }
        for e in list(f["endpoints"], "endpoints") {
            var ep = EndpointDocument(position: pos(e))
            let ef = fields(e, allowed: ["address", "weight", "priority"], what: "an endpoint")
            ep.address = string(ef["address"], "address")
            ep.weight = int(ef["weight"], "weight")
            ep.priority = int(ef["priority"], "priority")
            c.endpoints.append(ep)
        }
        return c
    }
}

/// The allowed key closest to a misspelt one, when it is close enough to be a likely typo.
func closest(_ word: String, in candidates: [String]) -> String? {
    func distance(_ a: [Character], _ b: [Character]) -> Int {
        var prev = Array(0...b.count)
        for (i, ca) in a.enumerated() {
            var cur = [i + 1] + Array(repeating: 0, count: b.count)
            for (j, cb) in b.enumerated() {
                cur[j + 1] = min(prev[j + 1] + 1, cur[j] + 1, prev[j] + (ca == cb ? 0 : 1))
            }
            prev = cur
        }
        return prev[b.count]
    }
    let w = Array(word)
    let best = candidates.map { ($0, distance(w, Array($0))) }.min { $0.1 < $1.1 }
    guard let best, best.1 <= max(1, word.count / 3) else { return nil }
    return best.0
}
