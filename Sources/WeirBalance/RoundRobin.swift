// Smooth weighted round robin with nginx's order (weights 5,1,1 give a a b a c a a; every cycle
// of sum(weights) picks honours the weights exactly), computed per group of equal weight so a
// pick costs O(distinct weights), not O(endpoints).
//
// Why it is the same order: nginx picks argmax over endpoints of t*w - W*c (t = picks so far in
// the cycle, W = sum of weights, c = times picked). Endpoints of equal weight differ only in c,
// and nginx's tie-break (lowest index) makes them take turns in index order. So each group keeps
// one count C and its candidate is member[C % m], picked c = C / m times; the pick is the best
// candidate over groups.

public struct RoundRobin: Balancer {
    public let weights: [Int32]
    let slowStart: SlowStart?
    let addedAt: [Int64?]
    @usableFromInline var groupWeight: [Int64] = []
    @usableFromInline var groupStart: [Int32] = []
    @usableFromInline var groupSize: [Int32] = []
    @usableFromInline var members: [Int32] = []
    @usableFromInline var groupPicks: [Int64] = []
    @usableFromInline var step: Int64 = 0
    @usableFromInline var total: Int64 = 0

    /// - Parameters:
    ///   - weights: one positive weight per endpoint.
    ///   - startOffset: picks to skip first, so shards do not all hit the same endpoint first.
    ///   - slowStart: ramp endpoints with an `addedAt` time; call `refresh` to move the ramp.
    public init(weights: [Int32], startOffset: Int = 0, slowStart: SlowStart? = nil, addedAt: [Int64?] = [], now: Int64 = 0) {
        precondition(weights.allSatisfy { $0 > 0 }, "weights are validated positive by the config compiler")
        self.weights = weights
        self.slowStart = slowStart
        self.addedAt = addedAt
        if slowStart != nil { _ = refresh(nowNanoseconds: now) } else { build(weights.map(Int64.init)) }
        var context = PickContext(random: SplitMix64(seed: 0))
        for _ in 0..<startOffset { _ = pick(&context, excluding: Exclusions()) }
    }

    /// The usual offset for shard `index` of `count`: shards spread evenly over (at most the first
    /// 1024 picks of) one cycle.
    public static func startOffset(shard index: Int, of count: Int, weights: [Int32]) -> Int {
        let cycle = min(1024, weights.reduce(0) { $0 + Int($1) })
        return count == 0 ? 0 : (index * cycle) / max(count, 1)
    }

    public var endpointCount: Int { weights.count }

    mutating func build(_ effective: [Int64]) {
        let order = effective.indices.sorted { (effective[$0], $0) < (effective[$1], $1) }
        groupWeight = []; groupStart = []; groupSize = []; members = []
        for i in order {
            if groupWeight.last != effective[i] {
                groupWeight.append(effective[i]); groupStart.append(Int32(members.count)); groupSize.append(0)
            }
            members.append(Int32(i))
            groupSize[groupSize.count - 1] += 1
        }
        groupPicks = Array(repeating: 0, count: groupWeight.count)
        step = 0
        total = effective.reduce(0, +)
    }

    public mutating func refresh(nowNanoseconds now: Int64) -> Bool {
        guard let slowStart else { return false }
        var ramping = false
        let effective: [Int64] = weights.indices.map { i in
            let f = slowStart.factor(addedAt: i < addedAt.count ? addedAt[i] : nil, now: now)
            if f < 1 { ramping = true }
            // Hundredths of a weight, so a ramp moves in small steps.
            return max(1, Int64((Double(weights[i]) * 100 * f).rounded()))
        }
        build(effective)
        return ramping
    }

    @inlinable
    mutating func next() -> Int {
        step += 1
        var bestGroup = 0
        var bestValue = Int64.min
        var bestIndex = Int32.max
        for g in 0..<groupWeight.count {
            let size = Int64(groupSize[g])
            let c = groupPicks[g]
            let candidate = members[Int(groupStart[g]) + Int(c % size)]
            let value = step * groupWeight[g] - total * (c / size)
            if value > bestValue || (value == bestValue && candidate < bestIndex) {
                bestValue = value; bestGroup = g; bestIndex = candidate
            }
        }
        groupPicks[bestGroup] += 1
        if step == total {
            // Every endpoint got exactly its weight this cycle; start the next one clean.
            step = 0
            for g in 0..<groupPicks.count { groupPicks[g] = 0 }
        }
        return Int(bestIndex)
    }

    @inlinable
    public mutating func pick(_ context: inout PickContext, excluding: Exclusions) -> Int? {
        if excluding.isEmpty { return next() }
        // Retries after a failed connect: keep the rotation moving, skipping excluded endpoints.
        for _ in 0..<min(64, weights.count + 8) {
            let i = next()
            if !excluding.contains(i) { return i }
        }
        return firstAllowed(from: 0, count: weights.count, excluding: excluding)
    }
}
