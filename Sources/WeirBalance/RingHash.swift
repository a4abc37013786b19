// ring_hash: consistent hashing on a ring of points, each endpoint owning points in proportion to
// its weight. Built once per snapshot; a pick is a binary search.
//
// Point k of an endpoint hashes (endpoint key bytes, k), so an endpoint's points do not depend on
// the others: removing one endpoint moves only the keys it owned. Points per unit of weight are a
// power of two (the smallest that reaches minimum_ring_size), so adding or removing a few
// endpoints usually leaves every other endpoint's points exactly where they were.

public final class RingHashTable: Sendable {
    @usableFromInline let hashes: [UInt64]
    @usableFromInline let owners: [Int32]
    public let endpointCount: Int
    public let pointsPerWeight: Int

    /// - Parameters:
    ///   - keys: a stable identity per endpoint (its address bytes), hashed to place its points.
    public init(keys: [[UInt8]], weights: [Int32], minimumRingSize: Int = 1024, maximumRingSize: Int = 8 << 20) {
        precondition(keys.count == weights.count && !keys.isEmpty)
        let totalWeight = weights.reduce(0) { $0 + Int($1) }
        var perWeight = 1
        while perWeight * totalWeight < minimumRingSize { perWeight <<= 1 }
        while perWeight > 1 && perWeight * totalWeight > maximumRingSize { perWeight >>= 1 }
        pointsPerWeight = perWeight
        endpointCount = keys.count
        var points: [(UInt64, Int32)] = []
        points.reserveCapacity(perWeight * totalWeight)
        for (i, key) in keys.enumerated() {
            var bytes = key + [UInt8](repeating: 0, count: 8)
            for k in 0..<(perWeight * Int(weights[i])) {
                withUnsafeBytes(of: UInt64(k).littleEndian) { for j in 0..<8 { bytes[key.count + j] = $0[j] } }
                points.append((XXHash64.hash(bytes), Int32(i)))
            }
        }
        points.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        hashes = points.map(\.0)
        owners = points.map(\.1)
    }

    public var size: Int { hashes.count }

    /// The first point at or after `hash`, wrapping past the end.
    @inlinable
    public func slot(for hash: UInt64) -> Int {
        var lo = 0, hi = hashes.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            if hashes[mid] < hash { lo = mid + 1 } else { hi = mid }
        }
        return lo == hashes.count ? 0 : lo
    }

    @inlinable public func owner(at slot: Int) -> Int { Int(owners[slot]) }
}

public struct RingHash: Balancer {
    public let table: RingHashTable
    /// Per endpoint, whether new traffic may go there (health); nil means all.
    public let eligible: [Bool]?
    public init(table: RingHashTable, eligible: [Bool]? = nil) { self.table = table; self.eligible = eligible }
    public var endpointCount: Int { table.endpointCount }

    @inlinable
    public mutating func pick(_ context: inout PickContext, excluding: Exclusions) -> Int? {
        var s = table.slot(for: context.hash)
        // An excluded or unhealthy endpoint's keys go to the next point clockwise owned by someone
        // else, the same place they would go if it were removed: everyone else's keys stay put.
        for _ in 0..<table.size {
            let owner = table.owner(at: s)
            if !excluding.contains(owner) && (eligible?[owner] ?? true) { return owner }
            s = s + 1 == table.size ? 0 : s + 1
        }
        return nil
    }
}
