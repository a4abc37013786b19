// Walker/Vose alias table: O(1) sampling proportional to weight, built once per snapshot.

public final class AliasTable: Sendable {
    /// Chance (scaled to 2^32) of keeping column i rather than taking its alias.
    @usableFromInline let keep: [UInt32]
    @usableFromInline let alias: [Int32]

    public init(weights: [Double]) {
        let n = weights.count
        let sum = weights.reduce(0, +)
        var scaled = weights.map { $0 * Double(n) / sum }
        var keep = [UInt32](repeating: UInt32.max, count: n)
        var alias = [Int32](repeating: 0, count: n)
        var small = scaled.indices.filter { scaled[$0] < 1 }
        var large = scaled.indices.filter { scaled[$0] >= 1 }
        while let s = small.popLast(), let l = large.last {
            keep[s] = UInt32(min(Double(UInt32.max), scaled[s] * 4294967296))
            alias[s] = Int32(l)
            scaled[l] -= 1 - scaled[s]
            if scaled[l] < 1 { large.removeLast(); small.append(l) }
        }
        for i in alias.indices where keep[i] == UInt32.max { alias[i] = Int32(i) }
        self.keep = keep
        self.alias = alias
    }

    public var count: Int { keep.count }

    @inlinable
    public func sample(_ random: inout SplitMix64) -> Int {
        let r = random.next()
        let column = Int(truncatingIfNeeded: (UInt64(UInt32(truncatingIfNeeded: r)) &* UInt64(keep.count)) >> 32)
        return UInt32(truncatingIfNeeded: r >> 32) < keep[column] ? column : Int(alias[column])
    }
}
