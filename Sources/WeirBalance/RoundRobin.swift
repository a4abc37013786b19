// Smooth weighted round robin (nginx's algorithm): weights 5,1,1 give a a b a c a a, not a burst
// of five a's, and every cycle of sum(weights) picks honours the weights exactly.

public struct RoundRobin: Balancer {
    public let weights: [Int32]
    @usableFromInline var current: [Int64]
    @usableFromInline let total: Int64

    /// - Parameters:
    ///   - weights: one positive weight per endpoint.
    ///   - startOffset: picks to skip first, so shards do not all hit the same endpoint first.
    public init(weights: [Int32], startOffset: Int = 0) {
        precondition(weights.allSatisfy { $0 > 0 }, "weights are validated positive by the config compiler")
        self.weights = weights
        self.current = Array(repeating: 0, count: weights.count)
        self.total = weights.reduce(0) { $0 + Int64($1) }
        let skip = total == 0 ? 0 : startOffset % Int(total)
        for _ in 0..<skip { _ = pick(excluding: Exclusions()) }
    }

    /// The usual offset for shard `index` of `count`: shards spread evenly over one cycle.
    public static func startOffset(shard index: Int, of count: Int, weights: [Int32]) -> Int {
        let total = weights.reduce(0) { $0 + Int($1) }
        return count == 0 ? 0 : (index * total) / max(count, 1)
    }

    public var endpointCount: Int { weights.count }

    @inlinable
    public mutating func pick(excluding: Exclusions) -> Int? {
        var best = -1
        var bestValue = Int64.min
        var eligibleTotal: Int64 = 0
        for i in 0..<weights.count where !(excluding.count > 0 && excluding.contains(i)) {
            current[i] += Int64(weights[i])
            eligibleTotal += Int64(weights[i])
            if current[i] > bestValue { bestValue = current[i]; best = i }
        }
        guard best >= 0 else { return nil }
        current[best] -= eligibleTotal
        return best
    }
}
