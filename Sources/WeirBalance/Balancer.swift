// The contract every balancer meets. Balancers are values: built from an immutable table when a
// snapshot compiles, owned and mutated by exactly one shard, and they do no I/O and read no clock.

/// Endpoints a pick must avoid (those whose connect just failed). Holds up to four inline so a
/// retry never allocates; more than four exclusions means the caller's retry bound is too high.
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
        let v = Int32(index)
        return storage.0 == v || storage.1 == v || storage.2 == v || storage.3 == v
    }
}

/// What every balancer does on a shard.
public protocol Balancer {
    /// The endpoint index to use next, or nil when every endpoint is excluded.
    mutating func pick(excluding: Exclusions) -> Int?
    var endpointCount: Int { get }
}
