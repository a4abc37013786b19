// References to slab slots (connections, upstream connections) that outlive the moment they were
// made: wait lists, waiters, timers. A slot is freed and reused by another connection, so every
// such reference carries the generation the slot had, and every use checks it first.

/// A slot and the generation it had when the reference was made; `sub` says which part of it
/// (a flow, a kind of wait).
public struct SlotRef: Equatable, Sendable {
    public var slot: Int32
    public var generation: UInt32
    public var sub: UInt8
    @inlinable public init(slot: Int, generation: UInt32, sub: UInt8 = 0) {
        self.slot = Int32(slot); self.generation = generation; self.sub = sub
    }
}

/// A first-in first-out queue of slot references, allocated once with a fixed capacity, so
/// waiting costs no allocation on the data path. When it is full, `append` first drops the
/// entries its caller says are stale (their slot moved on), which bounds it by the live waiters.
public final class SlotRefQueue {
    @usableFromInline let storage: UnsafeMutablePointer<SlotRef>
    public let capacity: Int
    @usableFromInline var head = 0
    public private(set) var count = 0

    public init(capacity: Int) {
        self.capacity = max(1, capacity)
        storage = .allocate(capacity: self.capacity)
    }
    deinit { storage.deallocate() }

    public var isEmpty: Bool { count == 0 }

    /// Adds `ref` at the back. When full, keeps only the entries `isLive` accepts and tries
    /// again; false when even the live entries fill it (the caller's bound is wrong).
    @discardableResult
    public func append(_ ref: SlotRef, isLive: (SlotRef) -> Bool) -> Bool {
        if count == capacity { compact(isLive) }
        guard count < capacity else { return false }
        storage[(head + count) % capacity] = ref
        count += 1
        return true
    }

    /// The oldest entry, taken out; nil when empty.
    public func removeFirst() -> SlotRef? {
        guard count > 0 else { return nil }
        let r = storage[head]
        head = (head + 1) % capacity
        count -= 1
        return r
    }

    /// Drops the entries `isLive` rejects, keeping the order of the rest.
    public func compact(_ isLive: (SlotRef) -> Bool) {
        var kept = 0
        for i in 0..<count {
            let r = storage[(head + i) % capacity]
            if isLive(r) { storage[(head + kept) % capacity] = r; kept += 1 }
        }
        count = kept
    }
}
