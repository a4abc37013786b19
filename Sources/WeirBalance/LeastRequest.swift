// least_request: the power of d choices. Sample `choiceCount` endpoints at random and take the one
// with the best weight / (active + 1)^bias (Envoy's formula; with equal weights, the fewest
// active). Active counts are the shard's own (TCP: open connections).

public struct LeastRequest: Balancer {
    public let weights: [Int32]
    public let choiceCount: Int
    public let activeRequestBias: Double
    let slowStart: SlowStart?
    let addedAt: [Int64?]
    @usableFromInline var effective: [Double]
    @usableFromInline var active: [Int32]
    @usableFromInline let equalWeights: Bool

    public init(weights: [Int32], choiceCount: Int = 2, activeRequestBias: Double = 1.0,
                slowStart: SlowStart? = nil, addedAt: [Int64?] = [], now: Int64 = 0) {
        precondition(choiceCount >= 1 && !weights.isEmpty)
        self.weights = weights
        self.choiceCount = choiceCount
        self.activeRequestBias = activeRequestBias
        self.slowStart = slowStart
        self.addedAt = addedAt
        effective = weights.map(Double.init)
        active = Array(repeating: 0, count: weights.count)
        equalWeights = slowStart == nil && Set(weights).count == 1
        if slowStart != nil { _ = refresh(nowNanoseconds: now) }
    }

    public var endpointCount: Int { weights.count }
    public func activeCount(_ endpoint: Int) -> Int { Int(active[endpoint]) }

    public mutating func started(_ endpoint: Int) { active[endpoint] += 1 }
    public mutating func ended(_ endpoint: Int) { if active[endpoint] > 0 { active[endpoint] -= 1 } }

    public mutating func refresh(nowNanoseconds now: Int64) -> Bool {
        guard let slowStart else { return false }
        var ramping = false
        for i in weights.indices {
            let f = slowStart.factor(addedAt: i < addedAt.count ? addedAt[i] : nil, now: now)
            if f < 1 { ramping = true }
            effective[i] = Double(weights[i]) * f
        }
        return ramping
    }

    @inlinable
    func score(_ i: Int) -> Double {
        let a = Double(active[i]) + 1
        let load = activeRequestBias == 1 ? a : (activeRequestBias == 0 ? 1 : pow(a, activeRequestBias))
        return effective[i] / load
    }

    @inlinable
    public mutating func pick(_ context: inout PickContext, excluding: Exclusions) -> Int? {
        let n = weights.count
        var best = -1
        for _ in 0..<choiceCount {
            var i = context.random.below(n)
            if excluding.contains(i) {
                guard let j = firstAllowed(from: i, count: n, excluding: excluding) else { return nil }
                i = j
            }
            if best < 0 { best = i; continue }
            if equalWeights ? active[i] < active[best] : score(i) > score(best) { best = i }
        }
        return best
    }
}

#if canImport(Glibc)
import Glibc
#endif
