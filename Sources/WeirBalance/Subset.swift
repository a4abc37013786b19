// A balancer over some of a cluster's endpoints (the healthy ones), answering in the cluster's
// own indices. Built when a snapshot with new health is adopted; the inner balancer never sees
// the endpoints left out, so round robin and least request keep their exact behaviour.

public struct Subset<Inner: Balancer>: Balancer {
    @usableFromInline var inner: Inner
    /// Inner index -> cluster index.
    @usableFromInline let members: [Int32]
    /// Cluster index -> inner index, or -1.
    @usableFromInline let position: [Int32]

    /// - Parameters:
    ///   - eligible: per cluster endpoint, whether it is in the subset (at least one must be).
    ///   - make: builds the inner balancer from the members' cluster indices.
    public init(eligible: [Bool], make: ([Int]) -> Inner) {
        let members = eligible.indices.filter { eligible[$0] }
        precondition(!members.isEmpty, "Eligibility always leaves at least one endpoint (panic otherwise)")
        var position = [Int32](repeating: -1, count: eligible.count)
        for (k, i) in members.enumerated() { position[i] = Int32(k) }
        self.members = members.map(Int32.init)
        self.position = position
        self.inner = make(members)
    }

    public var endpointCount: Int { position.count }

    @inlinable
    public mutating func pick(_ context: inout PickContext, excluding: Exclusions) -> Int? {
        var translated = Exclusions()
        if !excluding.isEmpty {
            for i in position.indices where excluding.contains(i) && position[i] >= 0 { translated.insert(Int(position[i])) }
        }
        return inner.pick(&context, excluding: translated).map { Int(members[$0]) }
    }

    public mutating func started(_ endpoint: Int) { if position[endpoint] >= 0 { inner.started(Int(position[endpoint])) } }
    public mutating func ended(_ endpoint: Int) { if position[endpoint] >= 0 { inner.ended(Int(position[endpoint])) } }
    public mutating func refresh(nowNanoseconds: Int64) -> Bool { inner.refresh(nowNanoseconds: nowNanoseconds) }
}
