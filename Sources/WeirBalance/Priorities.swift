// Priority levels (Envoy's endpoint priorities): level 0 takes the traffic its healthy share
// can carry, and what it cannot spills to level 1, then 2. The shares are computed when health
// changes (Eligibility, in WeirHealth); here each pick draws a level by those shares and asks
// that level's own balancer. Built only for clusters with more than one level, so a cluster
// without priorities pays nothing.

public struct Priorities: Balancer {
    /// Per cluster endpoint, its level.
    @usableFromInline let levelOf: [UInt8]
    /// Per level, the cumulative share of traffic in 1/10000 (the last level that takes any
    /// ends at 10000).
    @usableFromInline let cumulative: [UInt32]
    /// Per level, its balancer over its eligible endpoints (in cluster indices), or nil when the
    /// level takes no traffic.
    @usableFromInline var levels: [(any Balancer)?]
    /// Hashing balancers draw the level from the request's hash, so a key keeps its level.
    @usableFromInline let byHash: Bool

    public init(levelOf: [UInt8], cumulative: [UInt32], levels: [(any Balancer)?], byHash: Bool) {
        precondition(cumulative.count == levels.count && levels.contains { $0 != nil })
        self.levelOf = levelOf; self.cumulative = cumulative; self.levels = levels; self.byHash = byHash
    }

    public var endpointCount: Int { levelOf.count }

    @inlinable
    public mutating func pick(_ context: inout PickContext, excluding: Exclusions) -> Int? {
        let draw = UInt32(truncatingIfNeeded: (byHash ? context.hash >> 17 : context.random.next()) % 10000)
        var chosen = -1
        for l in 0..<cumulative.count where draw < cumulative[l] && levels[l] != nil { chosen = l; break }
        if chosen >= 0, let e = levels[chosen]!.pick(&context, excluding: excluding) { return e }
        // The drawn level is exhausted for this request (its endpoints failed): try the others in
        // priority order.
        for l in 0..<levels.count where l != chosen && levels[l] != nil {
            if let e = levels[l]!.pick(&context, excluding: excluding) { return e }
        }
        return nil
    }

    public mutating func started(_ endpoint: Int) { levels[Int(levelOf[endpoint])]?.started(endpoint) }
    public mutating func ended(_ endpoint: Int) { levels[Int(levelOf[endpoint])]?.ended(endpoint) }
    public mutating func refresh(nowNanoseconds: Int64) -> Bool {
        var ramping = false
        for l in levels.indices where levels[l] != nil {
            if levels[l]!.refresh(nowNanoseconds: nowNanoseconds) { ramping = true }
        }
        return ramping
    }
}

/// A cluster with no endpoints (from xDS: scaled to zero, or not yet assigned): every pick fails,
/// so TCP connections close and HTTP requests get 503.
public struct NoEndpoints: Balancer {
    public init() {}
    public var endpointCount: Int { 0 }
    public mutating func pick(_ context: inout PickContext, excluding: Exclusions) -> Int? { nil }
}
