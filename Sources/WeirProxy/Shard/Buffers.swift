// Buffers on a shard: the provided-buffer ring and the head buffers, the per-flow queues of them,
// and the waits for them (starved recvs, connections waiting for a head buffer), each a SlotRef
// checked against its slot's generation.
import COpenSSL
import CURing
import WeirBalance
import WeirConfig
import WeirCore
import WeirHTTP
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

extension Shard {
    func takeHeadBuffer() -> Int32? {
        guard headFreeCount > 0 else { return nil }
        headFreeCount -= 1
        return headFree[headFreeCount]
    }

    func releaseHeadBuffer(_ b: Int32) {
        headFree[headFreeCount] = b
        headFreeCount += 1
    }

    @inline(__always) func headBuffer(_ b: Int32) -> UnsafeMutableRawPointer { headStorage + Int(b) * limits.bufferBytes }

    /// A queued buffer's memory: ids below the ring's count are ring buffers, the ones above are
    /// head buffers (TLS plaintext that spilled out of its receive buffer).
    @inline(__always) func bufferPointer(_ bid: Int) -> UnsafeMutableRawPointer {
        bid < buffers.count ? buffers.pointer(UInt16(bid)) : headBuffer(Int32(bid - buffers.count))
    }

    @inline(__always) func releaseBuffer(_ bid: Int) {
        if bid < buffers.count { buffers.recycle(UInt16(bid)) } else { releaseHeadBuffer(Int32(bid - buffers.count)) }
    }

    func clearOut(_ flow: UnsafeMutablePointer<Flow>) {
        if flow.pointee.outBuffer >= 0 { releaseHeadBuffer(flow.pointee.outBuffer) }
        flow.pointee.outBuffer = -1
        flow.pointee.outPointer = nil
        flow.pointee.outLength = 0
        flow.pointee.outSent = 0
    }

    func setOut(_ flow: UnsafeMutablePointer<Flow>, buffer: Int32, count: Int) {
        flow.pointee.outBuffer = buffer
        flow.pointee.outPointer = headBuffer(buffer)
        flow.pointee.outLength = Int32(count)
        flow.pointee.outSent = 0
    }

    /// Drops the head buffer of a flow's queue.
    func popHead(_ flow: UnsafeMutablePointer<Flow>) {
        let head = Int(flow.pointee.head)
        guard head >= 0 else { return }
        flow.pointee.head = bufferNext[head]
        if flow.pointee.head < 0 { flow.pointee.tail = -1 }
        flow.pointee.queued -= 1
        flow.pointee.sendOffset = 0
        releaseBuffer(head)
    }

    func dropQueue(_ flow: UnsafeMutablePointer<Flow>) {
        while flow.pointee.queued > 0 { popHead(flow) }
        flow.pointee.segment = 0
    }

    /// Unread bytes in a flow's queue.
    func unread(_ flow: UnsafeMutablePointer<Flow>) -> Int {
        var n = 0
        var b = flow.pointee.head
        while b >= 0 { n += Int(bufferLength[Int(b)]); b = bufferNext[Int(b)] }
        return n - Int(flow.pointee.sendOffset)
    }

    /// Moves the unread part of the head buffer to its start and appends what fits of the next
    /// buffer, so a head that arrived in pieces is parsed in one place. False when nothing moved.
    func compact(_ flow: UnsafeMutablePointer<Flow>) -> Bool {
        let h = Int(flow.pointee.head)
        let n = Int(bufferNext[h])
        guard h >= 0, n >= 0 else { return false }
        let off = Int(flow.pointee.sendOffset)
        var len = Int(bufferLength[h]) - off
        let base = bufferPointer(Int(h))
        if off > 0 { base.copyMemory(from: base + off, byteCount: len) }
        flow.pointee.sendOffset = 0
        let room = buffers.bufferBytes - len
        let nextLen = Int(bufferLength[n])
        let k = min(room, nextLen)
        guard k > 0 else { bufferLength[h] = Int32(len); return off > 0 }
        let next = bufferPointer(Int(n))
        (base + len).copyMemory(from: next, byteCount: k)
        len += k
        bufferLength[h] = Int32(len)
        if k == nextLen {
            bufferNext[h] = bufferNext[n]
            if flow.pointee.tail == Int32(n) { flow.pointee.tail = Int32(h) }
            flow.pointee.queued -= 1
            releaseBuffer(n)
        } else {
            next.copyMemory(from: next + k, byteCount: nextLen - k)
            bufferLength[n] = Int32(nextLen - k)
        }
        return true
    }

    func enqueue(_ flow: UnsafeMutablePointer<Flow>, bid: Int, length: Int32) {
        let b = Int32(bid)
        bufferLength[Int(bid)] = length
        bufferNext[Int(bid)] = -1
        if flow.pointee.tail >= 0 { bufferNext[Int(flow.pointee.tail)] = b } else { flow.pointee.head = b }
        flow.pointee.tail = b
        flow.pointee.queued += 1
    }

    /// Queues bytes a receive brought, copying them into the tail buffer when they fit there, so
    /// a peer that sends in small pieces holds as many buffers as its bytes need, not one per
    /// piece (the simulator found a shard whose whole pool was pinned by pipelined requests
    /// arriving a few bytes at a time, with no buffer left to read any response). A send in
    /// flight reads only the range it was given, so growing the tail under it is safe.
    func enqueueReceived(_ flow: UnsafeMutablePointer<Flow>, bid: UInt16, length: Int32) {
        enqueueReceived(flow, bid: Int(bid), length: length)
    }

    /// The same for a queue entry that may be a head buffer (TLS plaintext that spilled over).
    func enqueueReceived(_ flow: UnsafeMutablePointer<Flow>, bid: Int, length: Int32) {
        let tail = Int(flow.pointee.tail)
        // Pieces up to a quarter of a buffer are copied (a larger one wastes at most three
        // quarters of its own); bulk streams arrive in near-full buffers and pay no copy.
        if Int(length) <= buffers.bufferBytes / 4 && tail >= 0 && tail < buffers.count
            && Int(bufferLength[tail]) + Int(length) <= buffers.bufferBytes {
            (bufferPointer(tail) + Int(bufferLength[tail])).copyMemory(from: bufferPointer(bid), byteCount: Int(length))
            bufferLength[tail] += length
            releaseBuffer(bid)
            return
        }
        enqueue(flow, bid: bid, length: length)
    }

    /// A flow's recv stopped because the buffer ring was empty: remember it (with its slot's
    /// generation) to re-arm when buffers come back.
    func starve(_ c: UnsafeMutablePointer<Connection>, _ f: Int) {
        c.flow(f).pointee.recv = .starved
        control.stats.pointee.bufferRingDry += 1
        starvedFlows.append(SlotRef(slot: slot(of: c), generation: c.pointee.generation, sub: UInt8(f))) { [connections] r in
            connections[Int(r.slot)].generation == r.generation && (connections + Int(r.slot)).flow(Int(r.sub)).pointee.recv == .starved
        }
    }

    func starveUpstream(_ u: UnsafeMutablePointer<Upstream>) {
        u.pointee.recv = .starved
        control.stats.pointee.bufferRingDry += 1
        starvedUpstreams.append(SlotRef(slot: u - upstreams, generation: u.pointee.generation)) { [upstreams] r in
            upstreams[Int(r.slot)].generation == r.generation && upstreams[Int(r.slot)].recv == .starved
        }
    }

    /// Re-arms recvs that stopped on an empty buffer ring, now that buffers came back. An entry
    /// whose slot was freed (and maybe reused) since is dropped: the connection it named is gone.
    func rearmStarved() {
        for _ in 0..<starvedUpstreams.count {
            guard let r = starvedUpstreams.removeFirst() else { break }
            let u = upstreams + Int(r.slot)
            guard u.pointee.generation == r.generation, u.pointee.recv == .starved else { continue }
            u.pointee.recv = .idle
            if u.pointee.state == .idle || u.pointee.state == .handshaking { armUpstreamRecv(u) }
            else if u.pointee.state == .busy, let c = owner(u) { rearmUpstreamIfRoom(c) }
        }
        for _ in 0..<starvedFlows.count {
            guard let r = starvedFlows.removeFirst() else { break }
            let c = connections + Int(r.slot)
            let f = Int(r.sub)
            guard c.pointee.generation == r.generation, c.flow(f).pointee.recv == .starved else { continue }
            c.flow(f).pointee.recv = .idle
            rearmIfRoom(c, f)
        }
    }

    /// Parks a connection until a head buffer is free: kind 0 to write its request head, 1 to
    /// write its response head. The exchange's progress says it waits, and a waiter counts only
    /// while it still does.
    func waitForHeadBuffer(_ c: UnsafeMutablePointer<Connection>, kind: UInt8) {
        // Already in the queue (a response head retried on each upstream read while waiting).
        guard !isWaitingForHeadBuffer(c, kind: kind) else { return }
        let queued = headWaiters.append(SlotRef(slot: slot(of: c), generation: c.pointee.generation, sub: kind)) { r in
            let w = self.connections + Int(r.slot)
            return w.pointee.generation == r.generation && w.pointee.state == .open && self.isWaitingForHeadBuffer(w, kind: r.sub)
        }
        // A live waiter per connection and kind at most, so the queue (two entries per slot) has
        // room; were it full all the same, the connection must not wait where nobody wakes it.
        guard queued else { return abortHTTP(c) }
        if kind == 0 { c.pointee.ex.request = .waitingForHeadBuffer } else { c.pointee.ex.response = .waitingForHeadBuffer }
    }

    @inline(__always) func isWaitingForHeadBuffer(_ c: UnsafeMutablePointer<Connection>, kind: UInt8) -> Bool {
        kind == 0 ? c.pointee.ex.request == .waitingForHeadBuffer : c.pointee.ex.response == .waitingForHeadBuffer
    }

    /// Gives freed head buffers to the connections waiting for them, oldest first.
    func serveHeadWaiters() {
        while headFreeCount > 0, let w = headWaiters.removeFirst() {
            let c = connections + Int(w.slot)
            guard c.pointee.generation == w.generation, c.pointee.state == .open, isWaitingForHeadBuffer(c, kind: w.sub) else { continue }
            if w.sub == 0 {
                c.pointee.ex.request = .unwritten
                sendRequestHead(c, parsed: nil)
            } else {
                c.pointee.ex.response = .awaitingHead
                processResponse(c)
            }
        }
    }
}
