// random: each pick independent, proportional to weight (an alias table, O(1)).

public struct RandomBalancer: Balancer {
    public let table: AliasTable
    public init(table: AliasTable) { self.table = table }
    public var endpointCount: Int { table.count }

    @inlinable
    public mutating func pick(_ context: inout PickContext, excluding: Exclusions) -> Int? {
        for _ in 0..<8 {
            let i = table.sample(&context.random)
            if !excluding.contains(i) { return i }
        }
        return firstAllowed(from: context.random.below(table.count), count: table.count, excluding: excluding)
    }
}
