// Turns the intermediate form into a Snapshot, or into every error that stops it.
import WeirBalance
import WeirCore

public enum Compiler {
    public static let weightRange = 1...10_000
    /// At most as many attempts as a connection can remember failed endpoints.
    public static let connectAttemptsRange = 1...Exclusions.capacity
    public static let defaultConnectTimeoutNanoseconds: Int64 = 5_000_000_000
    public static let defaultIdleTimeoutNanoseconds: Int64 = 3_600_000_000_000
    public static let defaultDrainTimeoutNanoseconds: Int64 = 30_000_000_000
    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// - Parameter previous: the running snapshot, if any: a cluster whose balancer, options and
    ///   endpoints did not change reuses its balancer table instead of rebuilding it.
    public static func compile(_ doc: ConfigDocument, generation: UInt64 = 0, previous: Snapshot? = nil) throws -> Snapshot {
        let previousClusters = Dictionary((previous?.clusters ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var errors: [ConfigError] = doc.shapeErrors
        func fail(_ p: SourcePosition, _ m: String) { errors.append(ConfigError(p, m)) }

        if let s = doc.shards, !(1...1024).contains(s.value) { fail(s.position, "shards must be auto or 1 to 1024, not \(s.value)") }
        if let d = doc.drainTimeout, d.value > 3_600_000_000_000 { fail(d.position, "drain_timeout must be at most 1h") }
        if let l = doc.logLevel, !logLevels.contains(l.value) {
            fail(l.position, "log_level must be one of \(logLevels.joined(separator: ", ")), not '\(l.value)'")
        }
        let limits = compileLimits(doc.limits, fail: fail)

        // Clusters first: listeners refer to them by name.
        var clusterIndex: [String: Int] = [:]
        var clusters: [Cluster] = []
        // Clusters with errors of their own: a listener naming one gets no second, cascaded error.
        var invalidClusters = Set<String>()
        // Where each name was first defined, so a clash (a file and xDS using one name) says both.
        var clusterDefined: [String: SourcePosition] = [:]
        for c in doc.clusters {
            guard let name = c.name else { fail(c.position, "a cluster needs a 'name'"); continue }
            if name.value.isEmpty { fail(name.position, "a cluster name must not be empty"); continue }
            if let first = clusterDefined[name.value] {
                fail(name.position, "duplicate cluster name '\(name.value)' (also defined at \(first.file):\(first.line))"); continue
            }
            clusterDefined[name.value] = name.position
            guard let compiled = compileCluster(c, name: name.value, previous: previousClusters[name.value], fail: fail) else { invalidClusters.insert(name.value); continue }
            clusterIndex[name.value] = clusters.count
            clusters.append(compiled)
        }

        var listeners: [Listener] = []
        var listenerDefined: [String: SourcePosition] = [:]
        var listenerAddresses: [SocketAddress: String] = [:]
        /// A listener's own settings (protocol, cluster or routes, TLS), or a chain's: the
        /// Listener that serves its connections, or nil (and errors).
        func compileBody(_ l: ListenerDocument, name: Located<String>, address: SocketAddress) -> Listener? {
            let proto: ListenerProtocol
            switch l.proto?.value ?? "tcp" {
            case "tcp": proto = .tcp
            case "http": proto = .http
            case let other: fail(l.proto!.position, "protocol must be 'tcp' or 'http', not '\(other)'"); return nil
            }
            if let b = l.backlog, !(1...65535).contains(b.value) { fail(b.position, "backlog must be 1 to 65535") }
            if let t = l.idleTimeout, t.value < 1_000_000 { fail(t.position, "idle_timeout must be at least 1ms") }
            let backlog = Int32(l.backlog?.value ?? 4096)
            var tls: TLSContext? = nil
            if let t = l.tls {
                if !l.routes.isEmpty && proto == .tcp {
                    fail(t.position, "listener '\(name.value)': routes by sni pass TLS through untouched; remove 'tls' (or the routes) to terminate it here"); return nil
                }
                var t = t
                // HTTP listeners offer h2 first by default (as Envoy and HAProxy set up for h2),
                // and HTTP/1.1 only with `http2: false`.
                let http2Off = l.http?["http2"]?.value == "false"
                if proto == .http && t.alpn.isEmpty {
                    t.alpn = (http2Off ? ["http/1.1"] : ["h2", "http/1.1"]).map { Located($0, at: t.position) }
                }
                // Without HTTP/2 a client must not be told h2 was chosen (xDS's HTTP1 codec
                // beside an alpn list that names it).
                if proto == .http && http2Off { t.alpn.removeAll { $0.value == "h2" } }
                guard let context = compileTLS(t, listener: name.value, fail: fail) else { return nil }
                tls = context
            }
            if let w = l.weightedClusters, proto == .http || !l.routes.isEmpty {
                _ = w
                fail(l.weightedClustersPosition ?? l.position, "listener '\(name.value)': weighted_clusters on a listener is for tcp listeners without routes; \(proto == .http ? "http listeners split by weight in a route" : "give either 'weighted_clusters' or 'routes'")")
                return nil
            }
            if proto == .http {
                guard let http = compileHTTPListener(l, name: name.value, clusterIndex: clusterIndex, invalidClusters: invalidClusters,
                                                     clusters: clusters, fail: fail) else { return nil }
                if http.limits.maxHeaderBytes > limits.bufferBytes - 4096 {
                    fail(l.httpPosition ?? l.position, "listener '\(name.value)': max_header_bytes (\(http.limits.maxHeaderBytes)) must be at most limits.buffer_bytes - 4KiB (\(limits.bufferBytes - 4096)): a request head is parsed in one receive buffer")
                    return nil
                }
                var listener = Listener(name: name.value, address: address, proto: .http, clusterIndex: -1,
                                        idleTimeoutNanoseconds: l.idleTimeout?.value ?? defaultHTTPIdleTimeoutNanoseconds, backlog: backlog)
                listener.http = http
                listener.tls = tls
                return listener
            }
            if let h = l.http { _ = h; fail(l.httpPosition ?? l.position, "listener '\(name.value)': 'http' settings need protocol: http"); return nil }
            if !l.routes.isEmpty {
                guard l.cluster == nil else { fail(l.cluster!.position, "listener '\(name.value)': give either 'cluster' or 'routes', not both"); return nil }
                guard let routes = compileSNIRoutes(l, name: name.value, clusterIndex: clusterIndex, invalidClusters: invalidClusters,
                                                    clusters: clusters, fail: fail) else { return nil }
                var listener = Listener(name: name.value, address: address, proto: .tcp,
                                        clusterIndex: routes.first { $0.names.isEmpty }?.clusterIndex ?? -1,
                                        idleTimeoutNanoseconds: l.idleTimeout?.value ?? defaultIdleTimeoutNanoseconds, backlog: backlog)
                listener.sniRoutes = routes
                if let t = l.clientHelloTimeout {
                    if (1_000_000...300_000_000_000).contains(t.value) { listener.clientHelloTimeoutNanoseconds = t.value }
                    else { fail(t.position, "listener '\(name.value)': client_hello_timeout must be 1ms to 5m"); return nil }
                }
                return listener
            }
            /// The cluster a tcp listener sends to, checked; nil (and an error) when it cannot.
            func tcpCluster(_ clusterName: Located<String>) -> Int? {
                guard let ci = clusterIndex[clusterName.value] else {
                    if invalidClusters.contains(clusterName.value) { return nil }
                    let known = (Array(clusterIndex.keys) + invalidClusters).sorted().joined(separator: ", ")
                    fail(clusterName.position, "listener '\(name.value)' refers to cluster '\(clusterName.value)', which is not defined (defined: \(known.isEmpty ? "none" : known))")
                    return nil
                }
                if clusters[ci].options.hashKey.isHTTP && clusters[ci].balancer.usesHash {
                    fail(clusterName.position, "listener '\(name.value)' is tcp, but cluster '\(clusterName.value)' hashes an HTTP hash_key; tcp listeners hash source_ip")
                    return nil
                }
                return ci
            }
            var weights: ClusterWeights? = nil
            if let w = l.weightedClusters {
                if let c = l.cluster { fail(c.position, "listener '\(name.value)': give either 'cluster' or 'weighted_clusters', not both"); return nil }
                guard let compiled = compileWeights(w, at: l.weightedClustersPosition ?? l.position, cluster: tcpCluster,
                                                    bad: { fail($0, "listener '\(name.value)': \($1)") }) else { return nil }
                weights = compiled
            }
            var ci = weights?.clusters[0] ?? -1
            if weights == nil {
                guard let clusterName = l.cluster else {
                    fail(l.position, "listener '\(name.value)' needs a 'cluster' (or 'weighted_clusters', or 'routes' by server name)"); return nil
                }
                guard let i = tcpCluster(clusterName) else { return nil }
                ci = i
            }
            var listener = Listener(name: name.value, address: address, proto: proto, clusterIndex: ci,
                                    idleTimeoutNanoseconds: l.idleTimeout?.value ?? defaultIdleTimeoutNanoseconds, backlog: backlog)
            listener.tls = tls
            listener.clusterWeights = weights
            return listener
        }
        for l in doc.listeners {
            guard let name = l.name else { fail(l.position, "a listener needs a 'name'"); continue }
            if let first = listenerDefined[name.value] {
                fail(name.position, "duplicate listener name '\(name.value)' (also defined at \(first.file):\(first.line))"); continue
            }
            listenerDefined[name.value] = name.position
            guard let addressText = l.address else { fail(l.position, "listener '\(name.value)' needs an 'address'"); continue }
            let address: SocketAddress
            do { address = try SocketAddress.parse(addressText.value) } catch {
                fail(addressText.position, "listener '\(name.value)': \(error)"); continue
            }
            if let other = listenerAddresses[address] {
                fail(addressText.position, "listener '\(name.value)' has the same address as listener '\(other)'"); continue
            }
            listenerAddresses[address] = name.value
            let bind = l.bindToPort?.value ?? true
            let handOff = l.useOriginalDestination?.value ?? false
            if l.chains.isEmpty {
                guard var listener = compileBody(l, name: name, address: address) else { continue }
                listener.bindToPort = bind
                listener.useOriginalDestination = handOff
                listeners.append(listener)
                continue
            }
            compileChains(l, name: name, address: address, bindToPort: bind, useOriginalDestination: handOff,
                          into: &listeners, body: compileBody, fail: fail)
        }
        // A chain's listener is named LISTENER/CHAIN: one may not clash with a listener's name.
        var named: [String: Int] = [:]
        for (i, l) in listeners.enumerated() {
            if let other = named[l.name] {
                let chain = listeners[i].chainOf != nil ? i : other
                let parent = listeners[listeners[chain].chainOf!].name
                fail(listenerDefined[l.name] ?? listenerDefined[parent] ?? doc.position, "listener name '\(l.name)' is also the name of a filter chain (listener '\(listeners[listeners[chain].chainOf!].name)', chain '\(l.name)'); rename one")
            } else { named[l.name] = i }
        }
        var xds: XDSSettings? = nil
        if let x = doc.xds {
            let pos = doc.xdsPosition ?? doc.position
            if let a = x["address"] {
                do {
                    let unix = a.value.hasPrefix("unix:") ? String(a.value.dropFirst(5)) : nil
                    if let unix, unix.isEmpty { fail(a.position, "xds address unix: needs a socket path") }
                    let address = unix != nil ? SocketAddress(ipv4: 0, 0, 0, 0, port: 0) : try SocketAddress.parse(a.value)
                    var timeout: Int64 = 15_000_000_000
                    if let t = x["initial_fetch_timeout"] {
                        if let ns = parseDurationNanoseconds(t.value), (0...600_000_000_000).contains(ns) { timeout = ns }
                        else { fail(t.position, "xds initial_fetch_timeout must be a duration up to 10m") }
                    }
                    let id = doc.node["id"]?.value ?? ""
                    if id.isEmpty { fail(doc.node["id"]?.position ?? pos, "xds needs node.id (how the control plane knows this weir; Istio expects router~IP~ID~DOMAIN)") }
                    xds = XDSSettings(address: address, initialFetchTimeoutNanoseconds: timeout, nodeID: id,
                                      nodeCluster: doc.node["cluster"]?.value ?? "", nodeMetadata: doc.nodeMetadata,
                                      unixPath: unix, nodeMetadataJSON: doc.nodeMetadataJSON)
                    if let loc = doc.node["locality"] {
                        let parts = loc.value.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
                        if parts.count > 3 || parts.contains(where: { $0.contains(" ") }) { fail(loc.position, "node locality is region/zone/sub_zone") }
                        else { xds?.nodeLocality = parts }
                    }
                    if let sds = x["sds_address"] {
                        if sds.value.hasPrefix("unix:") && sds.value.count > 5 { xds?.sdsUnixPath = String(sds.value.dropFirst(5)) }
                        else { fail(sds.position, "xds sds_address must be unix:PATH (pilot-agent's SDS socket)") }
                    }
                } catch {
                    fail(a.position, "xds address: \(error) (an IP:PORT, such as 127.0.0.1:18000, or unix:PATH)")
                }
            } else {
                fail(pos, "xds needs an 'address' (the control plane's IP:PORT)")
            }
        }
        if doc.listeners.isEmpty && doc.xds == nil { fail(doc.position, "there are no listeners: add a 'listeners:' list (or 'xds:' to get them from a control plane)") }
        var watch = false
        if let w = doc.watchConfig {
            switch w.value {
            case "true": watch = true
            case "false": watch = false
            default: fail(w.position, "watch_config must be true or false")
            }
        }
        var admin: AdminSettings? = nil
        if let pos = doc.adminPosition {
            let allowRemote: Bool
            switch doc.adminAllowRemote?.value ?? "false" {
            case "true": allowRemote = true
            case "false": allowRemote = false
            default: fail(doc.adminAllowRemote!.position, "allow_remote must be true or false"); allowRemote = false
            }
            let text = doc.adminAddress?.value ?? "127.0.0.1:9901"
            do {
                let address = try SocketAddress.parse(text)
                if !address.isLoopback && !allowRemote {
                    fail(doc.adminAddress?.position ?? pos, "admin address \(address) is not loopback; the admin API can reload and drain weir, so set admin.allow_remote: true to expose it on purpose")
                } else if listenerAddresses[address] != nil {
                    fail(doc.adminAddress?.position ?? pos, "admin address \(address) is also a listener's address")
                } else {
                    admin = AdminSettings(address: address, allowRemote: allowRemote)
                }
            } catch {
                fail(doc.adminAddress?.position ?? pos, "admin: \(error)")
            }
        }

        if !errors.isEmpty {
            throw ConfigErrors(errors.sorted { ($0.position.line, $0.position.column) < ($1.position.line, $1.position.column) })
        }
        return Snapshot(generation: generation, source: doc.source, shards: doc.shards?.value,
                        drainTimeoutNanoseconds: doc.drainTimeout?.value ?? defaultDrainTimeoutNanoseconds,
                        logLevel: doc.logLevel?.value ?? "info", limits: limits, listeners: listeners, clusters: clusters, admin: admin, watchConfig: watch,
                        xds: xds)
    }

    static func compileLimits(_ d: LimitsDocument, fail: (SourcePosition, String) -> Void) -> Limits {
        var limits = Limits.defaults
        if let v = d.maxConnectionsPerShard {
            if (1...1_000_000).contains(v.value) { limits.maxConnectionsPerShard = v.value }
            else { fail(v.position, "max_connections_per_shard must be 1 to 1000000") }
        }
        if let v = d.bufferBytes {
            if (1024...(1 << 20)).contains(v.value) { limits.bufferBytes = v.value }
            else { fail(v.position, "buffer_bytes must be 1KiB to 1MiB") }
        }
        if let v = d.buffersPerShard {
            // The kernel's provided-buffer ring holds a power of two entries, at most 32768.
            if (16...32768).contains(v.value) && v.value & (v.value - 1) == 0 { limits.buffersPerShard = v.value }
            else { fail(v.position, "buffers_per_shard must be a power of two from 16 to 32768") }
        }
        if let v = d.maxQueuedBuffersPerDirection {
            if (1...1024).contains(v.value) { limits.maxQueuedBuffersPerDirection = v.value }
            else { fail(v.position, "max_queued_buffers must be 1 to 1024") }
        }
        if let v = d.headBuffersPerShard {
            if (4...65536).contains(v.value) { limits.headBuffersPerShard = v.value }
            else { fail(v.position, "head_buffers_per_shard must be 4 to 65536") }
        }
        if let v = d.dataPath {
            if let p = Limits.DataPath(rawValue: v.value) { limits.dataPath = p }
            else { fail(v.position, "data_path must be copy or splice, not '\(v.value)'") }
        }
        if let v = d.io {
            if let io = Limits.IOSetting(rawValue: v.value) { limits.io = io }
            else { fail(v.position, "io must be auto, io_uring or epoll, not '\(v.value)'") }
        }
        return limits
    }

    static func compileCluster(_ c: ClusterDocument, name: String, previous: Cluster?,
                               fail: (SourcePosition, String) -> Void) -> Cluster? {
        var ok = true
        let balancer = compileBalancer(c, name: name, fail: fail)
        if balancer == nil { ok = false }
        let health = compileHealth(c, name: name, fail: fail)
        if health == nil { ok = false }
        let pool = compilePool(c, name: name, fail: fail)
        if pool == nil { ok = false }
        var upstreamTLS: UpstreamTLS? = nil
        if let t = c.upstreamTLS {
            upstreamTLS = compileUpstreamTLS(t, cluster: name, fail: fail)
            if upstreamTLS == nil { ok = false }
        } else if let t = c.tls {
            upstreamTLS = compileUpstreamTLS(t, position: c.tlsPosition ?? c.position, cluster: name, fail: fail)
            if upstreamTLS == nil { ok = false }
        }
        if let t = c.connectTimeout, !(1_000_000...300_000_000_000).contains(t.value) {
            fail(t.position, "cluster '\(name)': connect_timeout must be 1ms to 5m"); ok = false
        }
        if let a = c.connectAttempts, !connectAttemptsRange.contains(a.value) {
            fail(a.position, "cluster '\(name)': connect_attempts must be \(connectAttemptsRange.lowerBound) to \(connectAttemptsRange.upperBound)"); ok = false
        }
        let originalDestination = c.originalDestination?.value ?? false
        if originalDestination {
            // Its endpoint is each connection's original destination: nothing to list or probe.
            if let e = c.endpoints.first { fail(e.position, "cluster '\(name)' is original_destination: it lists no endpoints (each connection goes where its client asked)"); ok = false }
            if let h = c.healthCheckPosition { fail(h, "cluster '\(name)' is original_destination: it has no endpoints to health-check"); ok = false }
            if c.tls != nil || c.upstreamTLS != nil { fail(c.tlsPosition ?? c.position, "cluster '\(name)' is original_destination: TLS to original destinations is not supported"); ok = false }
        } else if c.endpoints.isEmpty && !c.mayBeEmpty { fail(c.position, "cluster '\(name)' has no endpoints"); ok = false }
        var sourceAddress: SocketAddress? = nil
        if let a = c.sourceAddress {
            // An IP alone binds any port; IP:PORT a fixed one.
            sourceAddress = (try? SocketAddress.parse(a.value)) ?? (try? SocketAddress.parse(a.value.contains(":") ? "[\(a.value)]:0" : "\(a.value):0"))
            if sourceAddress == nil { fail(a.position, "cluster '\(name)': source_address '\(a.value)' is not an IP"); ok = false }
            // One fixed source port could serve one upstream connection at a time.
            else if sourceAddress!.port != 0 { fail(a.position, "cluster '\(name)': source_address takes an IP (or IP:0), not a fixed port"); ok = false }
        }
        var overprovisioning = 140
        if let o = c.overprovisioningFactor {
            if (100...1000).contains(o.value) { overprovisioning = o.value }
            else { fail(o.position, "cluster '\(name)': overprovisioning_factor must be 100 to 1000 (percent), not \(o.value)"); ok = false }
        }
        var priorities: [Int] = []
        var endpoints: [Endpoint] = []
        var seen = Set<SocketAddress>()
        for e in c.endpoints {
            guard let a = e.address else { fail(e.position, "cluster '\(name)': an endpoint needs an 'address'"); ok = false; continue }
            do {
                let address = try SocketAddress.parse(a.value)
                if address.port == 0 { fail(a.position, "cluster '\(name)': endpoint port must not be 0"); ok = false; continue }
                if !seen.insert(address).inserted { fail(a.position, "cluster '\(name)': endpoint \(address) is listed twice"); ok = false; continue }
                let w = e.weight?.value ?? 1
                if !weightRange.contains(w) {
                    fail(e.weight!.position, "cluster '\(name)': weight must be \(weightRange.lowerBound) to \(weightRange.upperBound), not \(w)")
                    ok = false; continue
                }
                let priority = e.priority?.value ?? 0
                if !(0...127).contains(priority) {
                    fail(e.priority!.position, "cluster '\(name)': priority must be 0 (the highest) to 127, not \(priority)")
                    ok = false; continue
                }
                priorities.append(priority)
                var endpoint = Endpoint(address: address, weight: Int32(w))
                endpoint.plaintext = e.plaintext && upstreamTLS != nil
                endpoints.append(endpoint)
            } catch {
                fail(a.position, "cluster '\(name)': \(error)"); ok = false
            }
        }
        guard ok, let (kind, options, slowStart) = balancer, let health, let pool else { return nil }
        // Levels are numbered densely: priorities 0 and 5 become levels 0 and 1.
        let ranks = Dictionary(uniqueKeysWithValues: Set(priorities).sorted().enumerated().map { ($1, UInt8($0)) })
        for i in endpoints.indices { endpoints[i].priority = ranks[priorities[i]]! }
        if kind == .maglev && options.maglevTableSize <= endpoints.count { return nil }
        let unchanged = previous.flatMap { p in
            p.balancer == kind && p.options == options
                && p.endpoints.elementsEqual(endpoints) { $0.address == $1.address && $0.weight == $1.weight } ? p.table : nil
        }
        return Cluster(name: name, balancer: kind, options: options, slowStart: slowStart,
                       connectTimeoutNanoseconds: c.connectTimeout?.value ?? defaultConnectTimeoutNanoseconds,
                       connectAttempts: c.connectAttempts?.value ?? 3, endpoints: endpoints, health: health, pool: pool, tls: upstreamTLS, table: unchanged,
                       overprovisioningPercent: overprovisioning, originalDestination: originalDestination, sourceAddress: sourceAddress)
    }
}
