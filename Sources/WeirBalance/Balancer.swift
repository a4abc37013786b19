// The contract every balancer meets. Balancers are values: their tables are built when a snapshot
// compiles (and shared read-only by every shard), their small mutable state is owned by exactly
// one shard, and they do no I/O and read no clock: time and randomness are passed in.

/// Endpoints a pick must avoid (those whose connect just failed). Holds up to four inline so a
/// retry never allocates; the config caps connect attempts at four.
public struct Exclusions: Sendable {
    @usableFromInline var storage: (Int32, Int32, Int32, Int32) = (-1, -1, -1, -1)
    public private(set) var count = 0
    public init() {}

    public static let capacity = 4

    /// Adds `index`; beyond `capacity` the oldest is forgotten (it may then be tried again).
    public mutating func insert(_ index: Int) {
        let v = Int32(index)
        switch count % Self.capacity {
        case 0: storage.0 = v
        case 1: storage.1 = v
        case 2: storage.2 = v
        default: storage.3 = v
        }
        count += 1
    }

    @inlinable public func contains(_ index: Int) -> Bool {
        guard count > 0 else { return false }
        let v = Int32(index)
        return storage.0 == v || storage.1 == v || storage.2 == v || storage.3 == v
    }

    @inlinable public var isEmpty: Bool { count == 0 }
}

/// What a pick may depend on besides the balancer's own state.
public struct PickContext {
    /// The request's hash key (for TCP, the client address hashed); used by ring_hash and maglev.
    public var hash: UInt64
    /// The shard's random source.
    public var random: SplitMix64
    public init(hash: UInt64 = 0, random: SplitMix64) { self.hash = hash; self.random = random }
}

/// What every balancer does on a shard.
public protocol Balancer {
    /// The endpoint index to use next, or nil when every endpoint is excluded.
    mutating func pick(_ context: inout PickContext, excluding: Exclusions) -> Int?
    /// A connection (or request) to `endpoint` started or ended; least_request counts them.
    mutating func started(_ endpoint: Int)
    mutating func ended(_ endpoint: Int)
    /// Slow start: recompute effective weights for time `nowNanoseconds`. Returns false once no
    /// endpoint is ramping any more (the caller can stop calling).
    mutating func refresh(nowNanoseconds: Int64) -> Bool
    var endpointCount: Int { get }
}

extension Balancer {
    public mutating func started(_ endpoint: Int) {}
    public mutating func ended(_ endpoint: Int) {}
    public mutating func refresh(nowNanoseconds: Int64) -> Bool { false }
}

/// The first endpoint at or after `start` (wrapping) that is not excluded; the fallback every
/// balancer uses when its own retries keep landing on excluded endpoints.
@inlinable
func firstAllowed(from start: Int, count: Int, excluding: Exclusions) -> Int? {
    for k in 0..<count {
        let i = (start + k) % count
        if !excluding.contains(i) { return i }
    }
    return nil
}
