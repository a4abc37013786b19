// A provided-buffer ring: a fixed pool of equal buffers the kernel fills on recv, so an idle
// connection holds no buffer. Buffers go back to the kernel in batches, once per loop turn.
import CURing
#if canImport(Glibc)
import Glibc
#endif

public final class BufferRing: ReceiveBuffers {
    public let group: UInt16
    public let count: Int
    public let bufferBytes: Int
    @usableFromInline let ringMemory: UnsafeMutablePointer<io_uring_buf_ring>
    @usableFromInline let storage: UnsafeMutableRawPointer
    @usableFromInline let mask: Int32
    @usableFromInline var pendingAdds: Int32 = 0
    /// Buffers currently owned by Weir (handed out by the kernel and not yet recycled).
    @usableFromInline var outstandingCount = 0
    public var outstanding: Int { outstandingCount }

    /// Registers `count` (a power of two) buffers of `bufferBytes` each as `group` on `ring`.
    public init(ring: Ring, group: UInt16, count: Int, bufferBytes: Int) throws {
        precondition(count > 0 && count & (count - 1) == 0 && count <= 32768, "buffer count is validated as a power of two")
        self.group = group; self.count = count; self.bufferBytes = bufferBytes
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        var mem: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&mem, page, count * MemoryLayout<io_uring_buf>.stride) == 0, let mem else {
            throw RingError(errno: ENOMEM, call: "posix_memalign(buffer ring)")
        }
        ringMemory = mem.bindMemory(to: io_uring_buf_ring.self, capacity: 1)
        var data: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&data, page, count * bufferBytes) == 0, let data else {
            free(mem)
            throw RingError(errno: ENOMEM, call: "posix_memalign(\(count) buffers of \(bufferBytes) bytes)")
        }
        storage = data
        mask = io_uring_buf_ring_mask(UInt32(count))
        io_uring_buf_ring_init(ringMemory)
        var reg = io_uring_buf_reg()
        reg.ring_addr = UInt64(UInt(bitPattern: mem))
        reg.ring_entries = UInt32(count)
        reg.bgid = group
        let rc = io_uring_register_buf_ring(ring.raw, &reg, 0)
        guard rc == 0 else {
            free(mem); free(data)
            throw RingError(errno: -rc, call: "io_uring_register_buf_ring")
        }
        for bid in 0..<count {
            io_uring_buf_ring_add(ringMemory, storage + bid * bufferBytes, UInt32(bufferBytes), UInt16(bid), mask, Int32(bid))
        }
        io_uring_buf_ring_advance(ringMemory, Int32(count))
    }

    deinit {
        free(UnsafeMutableRawPointer(ringMemory))
        free(storage)
    }

    @inlinable public func pointer(_ bid: UInt16) -> UnsafeMutableRawPointer { storage + Int(bid) * bufferBytes }

    /// Notes that the kernel handed out a buffer (for accounting and leak checks).
    @inlinable public func didTake() { outstandingCount += 1 }

    /// Queues `bid` to go back to the kernel at the next `commit`.
    @inlinable public func recycle(_ bid: UInt16) {
        io_uring_buf_ring_add(ringMemory, pointer(bid), UInt32(bufferBytes), bid, mask, pendingAdds)
        pendingAdds += 1
        outstandingCount -= 1
    }

    /// Publishes recycled buffers to the kernel; returns how many.
    @discardableResult @inlinable public func commit() -> Int32 {
        let n = pendingAdds
        if n > 0 { io_uring_buf_ring_advance(ringMemory, n); pendingAdds = 0 }
        return n
    }
}

/// Buffer id of a completion that carried one.
@inlinable public func bufferID(flags: UInt32) -> UInt16? {
    guard flags & weir_cqe_f_buffer() != 0 else { return nil }
    return UInt16(truncatingIfNeeded: flags >> weir_cqe_buffer_shift())
}

@inlinable public func hasMore(flags: UInt32) -> Bool { flags & weir_cqe_f_more() != 0 }
