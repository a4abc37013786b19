// The compiled, immutable configuration every shard reads. Built on the control thread, never
// mutated, published whole by SnapshotStore.
import WeirBalance
import WeirCore

public enum ListenerProtocol: String, Sendable { case tcp }
public struct Endpoint: Sendable, Equatable {
    public let address: SocketAddress
    public let weight: Int32
    /// When a reload added it (monotonic ns), for slow start; nil for endpoints present at start.
    public var addedAt: Int64? = nil
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

    init(name: String, balancer: BalancerKind, options: BalancerOptions, slowStart: SlowStart?,
         connectTimeoutNanoseconds: Int64, connectAttempts: Int, endpoints: [Endpoint]) {
        self.name = name; self.balancer = balancer; self.options = options; self.slowStart = slowStart
        self.connectTimeoutNanoseconds = connectTimeoutNanoseconds
        self.connectAttempts = connectAttempts; self.endpoints = endpoints
        self.table = BalancerTable(balancer, options: options, endpoints: endpoints)
    }

    /// The same cluster with endpoints stamped with when they were added (for slow start).
    func with(endpoints: [Endpoint]) -> Cluster {
        Cluster(name: name, balancer: balancer, options: options, slowStart: slowStart,
                connectTimeoutNanoseconds: connectTimeoutNanoseconds, connectAttempts: connectAttempts, endpoints: endpoints)
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

    public enum DataPath: String, Sendable, CaseIterable { case copy, splice }

    public static let defaults = Limits(maxConnectionsPerShard: 16384, bufferBytes: 64 * 1024,
                                        buffersPerShard: 1024, maxQueuedBuffersPerDirection: 16)
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

    init(generation: UInt64, source: String, shards: Int?, drainTimeoutNanoseconds: Int64, logLevel: String,
         limits: Limits, listeners: [Listener], clusters: [Cluster]) {
        self.generation = generation; self.source = source; self.shards = shards
        self.drainTimeoutNanoseconds = drainTimeoutNanoseconds; self.logLevel = logLevel
        self.limits = limits; self.listeners = listeners; self.clusters = clusters
    }

    /// This snapshot with each endpoint's `addedAt` carried from `previous` (same cluster name and
    /// address), and `now` for endpoints `previous` did not have. Slow start ramps those.
    public func inheritingEndpointAges(from previous: Snapshot, now: Int64) -> Snapshot {
        let before = Dictionary(previous.clusters.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let clusters = self.clusters.map { c -> Cluster in
            guard let old = before[c.name] else { return c.with(endpoints: c.endpoints.map { var e = $0; e.addedAt = now; return e }) }
            let ages = Dictionary(old.endpoints.map { ($0.address, $0.addedAt) }, uniquingKeysWith: { a, _ in a })
            return c.with(endpoints: c.endpoints.map { e in
                var e = e
                if let known = ages[e.address] { e.addedAt = known } else { e.addedAt = now }
                return e
            })
        }
        return Snapshot(generation: generation, source: source, shards: shards, drainTimeoutNanoseconds: drainTimeoutNanoseconds,
                        logLevel: logLevel, limits: limits, listeners: listeners, clusters: clusters)
    }

    /// The same configuration under another generation number (the store numbers snapshots).
    func numbered(_ generation: UInt64) -> Snapshot {
        Snapshot(generation: generation, source: source, shards: shards, drainTimeoutNanoseconds: drainTimeoutNanoseconds,
                 logLevel: logLevel, limits: limits, listeners: listeners, clusters: clusters)
    }
}

extension Snapshot {
    /// No listeners, no clusters: what is left after a drain.
    public static let empty = Snapshot(generation: 0, source: "empty", shards: nil, drainTimeoutNanoseconds: 0,
                                       logLevel: "info", limits: .defaults, listeners: [], clusters: [])
}
