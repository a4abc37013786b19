// maglev: Google's Maglev lookup table (Eisenbud et al., NSDI 2016). Each endpoint walks its own
// permutation of the table's slots and claims the next free one, in turns weighted by its weight;
// a pick is one table lookup. Built once per snapshot.

public final class MaglevTable: Sendable {
    @usableFromInline let slots: [Int32]
    public let endpointCount: Int

    /// - Parameters:
    ///   - keys: a stable identity per endpoint (its address bytes).
    ///   - size: a prime, larger than the endpoint count (default 65537).
    public init(keys: [[UInt8]], weights: [Int32], size: Int = 65537) {
        precondition(keys.count == weights.count && !keys.isEmpty && size > keys.count)
        let n = keys.count
        let m = UInt64(size)
        let offsets = keys.map { XXHash64.hash($0, seed: 0) % m }
        let skips = keys.map { XXHash64.hash($0, seed: 1) % (m - 1) + 1 }
        var next = [UInt64](repeating: 0, count: n)
        var table = [Int32](repeating: -1, count: size)
        let maxWeight = Double(weights.max()!)
        var credit = [Double](repeating: 0, count: n)
        var filled = 0
        // Each round every endpoint earns weight/maxWeight of a turn; a whole turn claims a slot.
        while filled < size {
            for i in 0..<n where filled < size {
                credit[i] += Double(weights[i]) / maxWeight
                guard credit[i] >= 1 else { continue }
                credit[i] -= 1
                var c = (offsets[i] + next[i] * skips[i]) % m
                while table[Int(c)] >= 0 {
                    next[i] += 1
                    c = (offsets[i] + next[i] * skips[i]) % m
                }
                table[Int(c)] = Int32(i)
                next[i] += 1
                filled += 1
            }
        }
        slots = table
        endpointCount = n
    }

    public var size: Int { slots.count }

    @inlinable public func owner(for hash: UInt64) -> Int { Int(slots[Int(hash % UInt64(slots.count))]) }
}

public struct Maglev: Balancer {
    public let table: MaglevTable
    /// Per endpoint, whether new traffic may go there (health); nil means all.
    public let eligible: [Bool]?
    public init(table: MaglevTable, eligible: [Bool]? = nil) { self.table = table; self.eligible = eligible }
    public var endpointCount: Int { table.endpointCount }

    @inlinable
    public mutating func pick(_ context: inout PickContext, excluding: Exclusions) -> Int? {
        var h = context.hash
        // An excluded endpoint: look again with a rehashed key (deterministic per key, so the
        // same key keeps landing on the same fallback).
        for _ in 0..<8 {
            let owner = table.owner(for: h)
            if !excluding.contains(owner) && (eligible?[owner] ?? true) { return owner }
            h = (h ^ 0x9E3779B97F4A7C15) &* 0xBF58476D1CE4E5B9
        }
        let n = table.endpointCount
        let start = table.owner(for: h)
        for k in 0..<n {
            let i = (start + k) % n
            if !excluding.contains(i) && (eligible?[i] ?? true) { return i }
        }
        return nil
    }
}
