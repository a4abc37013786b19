// Publishes snapshots to the shards. The control thread swaps in a whole new snapshot; a shard
// reads the generation (one atomic load per loop turn) and takes the new snapshot only when it
// moved, so the lock here is touched once per reload per shard, never per request.
import Synchronization

public final class SnapshotStore: Sendable {
    private let current: Mutex<Snapshot>
    private let published: Atomic<UInt64>

    public init(_ first: Snapshot) {
        let numbered = first.numbered(1)
        current = Mutex(numbered)
        published = Atomic(1)
    }

    /// The generation last published; cheap enough to read every loop turn.
    public var generation: UInt64 { published.load(ordering: .acquiring) }

    public var snapshot: Snapshot { current.withLock { $0 } }

    /// Publishes `next` as the newest generation and returns it numbered. Callers then wake the
    /// shards so they adopt it without waiting for traffic.
    @discardableResult
    public func publish(_ next: Snapshot) -> Snapshot {
        publish { _ in next }!
    }

    /// Publishes what `make` builds from the current snapshot, atomically with respect to every
    /// other publisher (a reload and the health checker never overwrite each other's news).
    /// `make` returning nil publishes nothing.
    @discardableResult
    public func publish(_ make: (Snapshot) -> Snapshot?) -> Snapshot? {
        current.withLock { cur in
            guard let next = make(cur) else { return nil }
            let numbered = next.numbered(cur.generation + 1)
            cur = numbered
            published.store(numbered.generation, ordering: .releasing)
            return numbered
        }
    }
}
