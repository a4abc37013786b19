// The compiled, immutable configuration every shard reads. Built on the control thread, never
// mutated, published whole by SnapshotStore.
import WeirBalance
import WeirCore
import WeirHealth
import WeirHTTP

public enum ListenerProtocol: String, Sendable { case tcp, http }
public struct Endpoint: Sendable, Equatable {
    public let address: SocketAddress
    public let weight: Int32
    /// Its priority level: 0 is the highest (levels are numbered densely at compile).
    public var priority: UInt8 = 0
    /// When a reload added it (monotonic ns), for slow start; nil for endpoints present at start.
    public var addedAt: Int64? = nil
    /// The cluster speaks TLS, but not to this endpoint (xDS transport_socket_matches).
    public var plaintext = false
}

public final class Cluster: Sendable {
    public let name: String
    public let balancer: BalancerKind
    public let options: BalancerOptions
    public let slowStart: SlowStart?
    /// Tables built once when the snapshot compiles and shared read-only by every shard.
    public let table: BalancerTable
    public let connectTimeoutNanoseconds: Int64
    /// Endpoints tried for one downstream connection before giving up, the first included.
    public let connectAttempts: Int
    public let endpoints: [Endpoint]
    public var weights: [Int32] { endpoints.map(\.weight) }
    public let health: HealthPolicy
    /// HTTP upstream connection pools (per shard, per endpoint).
    public let pool: PoolSettings
    /// TLS to the endpoints, or nil.
    public let tls: UpstreamTLS?
    /// The TLS to endpoint `i`: the cluster's, unless that endpoint is known to be plaintext
    /// (an index it does not have gets the cluster's: never plaintext by mistake).
    @inlinable public func tls(forEndpoint i: Int) -> UpstreamTLS? {
        endpoints.indices.contains(i) && endpoints[i].plaintext ? nil : tls
    }
    /// Per endpoint: may new traffic use it (healthy and not ejected)? Published by the health
    /// checker as new snapshot generations.
    public let available: [Bool]
    /// What the balancer picks from: the available endpoints, or all of them in panic.
    public let eligibility: Eligibility
    /// Priority levels: percent a level's healthy share is stretched before traffic spills.
    public let overprovisioningPercent: Int
    /// More than one priority level.
    public var hasLevels: Bool { !eligibility.cumulativeLoad.isEmpty }
    /// ORIGINAL_DST: no endpoints of its own; each connection goes to the address its client
    /// asked for (the accepted socket's original destination).
    public let originalDestination: Bool
    /// Upstream sockets bind to this address first (upstream_bind_config; port 0 for any), or nil.
    public let sourceAddress: SocketAddress?

    init(name: String, balancer: BalancerKind, options: BalancerOptions, slowStart: SlowStart?,
         connectTimeoutNanoseconds: Int64, connectAttempts: Int, endpoints: [Endpoint], health: HealthPolicy,
         pool: PoolSettings = PoolSettings(), tls: UpstreamTLS? = nil, available: [Bool]? = nil, table: BalancerTable? = nil,
         overprovisioningPercent: Int = 140, originalDestination: Bool = false, sourceAddress: SocketAddress? = nil) {
        self.originalDestination = originalDestination
        self.sourceAddress = sourceAddress
        self.overprovisioningPercent = overprovisioningPercent
        self.pool = pool
        self.tls = tls
        self.name = name; self.balancer = balancer; self.options = options; self.slowStart = slowStart
        self.connectTimeoutNanoseconds = connectTimeoutNanoseconds
        self.connectAttempts = connectAttempts; self.endpoints = endpoints
        self.health = health
        let available = available ?? Array(repeating: health.startHealthy || health.probe == nil, count: endpoints.count)
        self.available = available
        let levelOf = endpoints.contains { $0.priority != 0 } ? endpoints.map(\.priority) : []
        self.eligibility = Eligibility(available: available, panicThresholdPercent: health.panicThresholdPercent,
                                       levelOf: levelOf, overprovisioningPercent: overprovisioningPercent)
        self.table = table ?? BalancerTable(balancer, options: options, endpoints: endpoints)
    }

    /// The same cluster with endpoints stamped with when they were added (for slow start).
    func with(endpoints: [Endpoint]) -> Cluster {
        Cluster(name: name, balancer: balancer, options: options, slowStart: slowStart,
                connectTimeoutNanoseconds: connectTimeoutNanoseconds, connectAttempts: connectAttempts, endpoints: endpoints,
                health: health, pool: pool, tls: tls, available: available, table: table,
                overprovisioningPercent: overprovisioningPercent, originalDestination: originalDestination, sourceAddress: sourceAddress)
    }

    /// The same cluster with other availability; the balancer tables are shared, not rebuilt.
    public func with(available: [Bool]) -> Cluster {
        Cluster(name: name, balancer: balancer, options: options, slowStart: slowStart,
                connectTimeoutNanoseconds: connectTimeoutNanoseconds, connectAttempts: connectAttempts, endpoints: endpoints,
                health: health, pool: pool, tls: tls, available: available, table: table,
                overprovisioningPercent: overprovisioningPercent, originalDestination: originalDestination, sourceAddress: sourceAddress)
    }
}

public struct Listener: Sendable {
    public let name: String
    public let address: SocketAddress
    public let proto: ListenerProtocol
    /// Index into `Snapshot.clusters`.
    public let clusterIndex: Int
    public let idleTimeoutNanoseconds: Int64
    public let backlog: Int32
    /// Routes, limits and timeouts of a `protocol: http` listener.
    public var http: HTTPListener? = nil
    /// TLS termination (`tls:`), or nil.
    public var tls: TLSContext? = nil
    /// tcp listeners routing TLS they pass through by the ClientHello's server name; empty
    /// means every connection goes to `clusterIndex`.
    public var sniRoutes: [SNIRoute] = []
    public var clientHelloTimeoutNanoseconds: Int64 = 5_000_000_000
    /// tcp listeners splitting connections across clusters by weight (`weighted_clusters`), or
    /// nil for one cluster (`clusterIndex`).
    public var clusterWeights: ClusterWeights? = nil
    /// false: no socket of its own; it serves connections another listener hands it (by
    /// original destination). A chain's listener never binds.
    public var bindToPort = true
    /// Each connection goes to the listener of its original destination (SO_ORIGINAL_DST, else
    /// the address it reached): exact address first, then the unspecified address on its port;
    /// this listener serves it only when there is none (Envoy's use_original_dst).
    public var useOriginalDestination = false
    /// Connections are served by the listener of the chain they match (filter_chains), not by
    /// this one's own settings (which are then unused).
    public var chains: FilterChains? = nil
    /// A chain's listener: the index of the listener it is a chain of.
    public var chainOf: Int? = nil
    /// Whether it has sockets of its own.
    public var binds: Bool { bindToPort && chainOf == nil }
}

public struct ClusterWeights: Sendable {
    public var clusters: [Int]
    /// Running totals of the weights: a draw below cumulative[i] (and not below the one before)
    /// picks clusters[i].
    public var cumulative: [UInt32]

    /// The cluster for a uniform random draw.
    @inlinable public func pick(_ random: UInt64) -> Int {
        let r = UInt32(truncatingIfNeeded: random % UInt64(cumulative[cumulative.count - 1]))
        var i = 0
        while cumulative[i] <= r { i += 1 }
        return clusters[i]
    }
}

public struct SNIRoute: Sendable {
    /// Empty: any connection (also those without SNI, or not TLS at all).
    public var names: [HostPattern]
    public var clusterIndex: Int
}

/// Sizes fixed when the shards start: a reload that changes them is reported and applies on the
/// next restart, since the slabs and buffer rings are allocated once.
public struct Limits: Sendable, Equatable {
    public var maxConnectionsPerShard: Int
    public var bufferBytes: Int
    public var buffersPerShard: Int
    public var maxQueuedBuffersPerDirection: Int
    /// How TCP bytes move: `copy` through the buffer ring (default), or `splice` through a pipe
    /// per direction driven by readiness polls (kept to measure against; see Benchmarks/RESULTS.md).
    public var dataPath: DataPath = .copy
    /// HTTP: buffers (of buffer_bytes) for the heads Weir writes and TLS records; an HTTP/1.1
    /// request holds one only while its head is being sent, an HTTP/2 stream one for as long as
    /// it is in flight (its request). Reserved, not touched: unused ones cost no resident memory.
    public var headBuffersPerShard = 4096
    /// Which I/O backend runs the shards: io_uring where the kernel allows it, else epoll (`auto`,
    /// the default), or one of them forced.
    public var io: IOSetting = .auto

    public enum DataPath: String, Sendable, CaseIterable { case copy, splice }
    public enum IOSetting: String, Sendable, CaseIterable { case auto, ioUring = "io_uring", epoll }

    public static let defaults = Limits(maxConnectionsPerShard: 16384, bufferBytes: 64 * 1024,
                                        buffersPerShard: 1024, maxQueuedBuffersPerDirection: 16)
}

/// The xDS control plane and how Weir introduces itself to it.
public struct XDSSettings: Sendable, Equatable {
    public var address: SocketAddress
    public var initialFetchTimeoutNanoseconds: Int64
    public var nodeID: String
    public var nodeCluster: String
    public var nodeMetadata: [String: String]
    /// The control plane on a Unix socket (pilot-agent's ./etc/istio/proxy/XDS) instead of
    /// `address`.
    public var unixPath: String? = nil
    /// The node's metadata as JSON (an Envoy bootstrap's node.metadata, nested values and all),
    /// sent instead of `nodeMetadata` when set.
    public var nodeMetadataJSON: String? = nil
    /// The SDS server on a Unix socket (pilot-agent's sds-grpc, ./var/run/secrets/workload-spiffe-uds/socket):
    /// secrets whose sds_config names the sds-grpc cluster are asked for there, on their own
    /// stream; nil: they are asked for on ADS with the others.
    public var sdsUnixPath: String? = nil
    /// The node's locality (region, zone, sub-zone; empty parts unset), which Istio uses to
    /// order endpoints by priority relative to this proxy.
    public var nodeLocality: [String] = []
    /// Where the control plane is, for logs.
    public var target: String { unixPath.map { "unix:\($0)" } ?? address.description }
}

/// The admin API's listener. Bound once at start; a reload that changes it applies at restart.
public struct AdminSettings: Sendable, Equatable {
    public var address: SocketAddress
    public var allowRemote: Bool
}

public final class Snapshot: Sendable {
    /// Increases by one for each snapshot a store publishes.
    public let generation: UInt64
    /// Where it came from: a file path, "demo", or later "xds".
    public let source: String
    /// nil means one per CPU.
    public let shards: Int?
    public let drainTimeoutNanoseconds: Int64
    public let logLevel: String
    public let limits: Limits
    public let listeners: [Listener]
    public let clusters: [Cluster]
    public let admin: AdminSettings?
    /// Listeners that are not chains, by address: where a connection is handed by its original
    /// destination.
    public let listenerByAddress: [AddressKey: Int]
    /// Reload when the file changes (checked twice a second).
    public let watchConfig: Bool
    /// Listeners and clusters also come from this control plane (xDS), or nil.
    public var xds: XDSSettings? { xdsBox }
    let xdsBox: XDSSettings?

    init(generation: UInt64, source: String, shards: Int?, drainTimeoutNanoseconds: Int64, logLevel: String,
         limits: Limits, listeners: [Listener], clusters: [Cluster], admin: AdminSettings? = nil, watchConfig: Bool = false,
         xds: XDSSettings? = nil) {
        self.xdsBox = xds
        self.admin = admin
        self.watchConfig = watchConfig
        self.generation = generation; self.source = source; self.shards = shards
        self.drainTimeoutNanoseconds = drainTimeoutNanoseconds; self.logLevel = logLevel
        self.limits = limits; self.listeners = listeners; self.clusters = clusters
        var byAddress: [AddressKey: Int] = [:]
        for (i, l) in listeners.enumerated() where l.chainOf == nil { byAddress[AddressKey(l.address)] = i }
        listenerByAddress = byAddress
    }

    /// The listener a connection with this original destination is handed to, if any besides
    /// `from`: one at that exact address, else one at the unspecified address of its port.
    @inlinable public func handOff(_ destination: AddressKey, from: Int) -> Int? {
        if let i = listenerByAddress[destination], i != from { return i }
        if let i = listenerByAddress[destination.anyAddress], i != from { return i }
        return nil
    }

    /// This snapshot carrying what `previous` knew about endpoints it shares (same cluster name
    /// and address): when each was added (slow start) and whether it is available (health).
    /// Endpoints `previous` did not have are stamped `now` and start as their policy says.
    public func inheritingEndpointState(from previous: Snapshot, now: Int64) -> Snapshot {
        let before = Dictionary(previous.clusters.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let clusters = self.clusters.map { c -> Cluster in
            guard let old = before[c.name] else { return c.with(endpoints: c.endpoints.map { var e = $0; e.addedAt = now; return e }) }
            var known: [SocketAddress: (Int64?, Bool)] = [:]
            for (i, e) in old.endpoints.enumerated() { known[e.address] = (e.addedAt, old.available[i]) }
            let endpoints = c.endpoints.map { e -> Endpoint in
                var e = e
                e.addedAt = known[e.address].map { $0.0 } ?? now
                return e
            }
            let available = c.endpoints.enumerated().map { i, e in known[e.address]?.1 ?? c.available[i] }
            return c.with(endpoints: endpoints).with(available: available)
        }
        return Snapshot(generation: generation, source: source, shards: shards, drainTimeoutNanoseconds: drainTimeoutNanoseconds,
                        logLevel: logLevel, limits: limits, listeners: listeners, clusters: clusters, admin: admin, watchConfig: watchConfig, xds: xds)
    }

    /// This snapshot with some clusters replaced (by index); every other cluster object is shared.
    public func replacing(clusters changed: [Int: Cluster]) -> Snapshot {
        let clusters = self.clusters.enumerated().map { changed[$0.offset] ?? $0.element }
        return Snapshot(generation: generation, source: source, shards: shards, drainTimeoutNanoseconds: drainTimeoutNanoseconds,
                        logLevel: logLevel, limits: limits, listeners: listeners, clusters: clusters, admin: admin, watchConfig: watchConfig, xds: xds)
    }

    /// The same configuration under another generation number (the store numbers snapshots).
    func numbered(_ generation: UInt64) -> Snapshot {
        Snapshot(generation: generation, source: source, shards: shards, drainTimeoutNanoseconds: drainTimeoutNanoseconds,
                 logLevel: logLevel, limits: limits, listeners: listeners, clusters: clusters, admin: admin, watchConfig: watchConfig, xds: xds)
    }
}

extension Snapshot {
    /// No listeners, no clusters: what is left after a drain.
    public static let empty = Snapshot(generation: 0, source: "empty", shards: nil, drainTimeoutNanoseconds: 0,
                                       logLevel: "info", limits: .defaults, listeners: [], clusters: [])
}
