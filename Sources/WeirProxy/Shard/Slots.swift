// The connection slab: taking a slot for an accepted socket, and ending a connection (abort, then
// the slot is freed only once no operation refers to it; its generation moves on).
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
    /// A fresh connection slot for an accepted socket, counted against its listener; nil (and
    /// the socket closed) when the slab is full.
    func takeSlot(fd: Int32, listener li: Int) -> UnsafeMutablePointer<Connection>? {
        guard freeCount > 0, li >= 0 else {
            control.stats.pointee.rejectedNoSlot += 1
            if li >= 0 { control.named.listeners[Int(listenerSlots[li])].rejected += 1 }
            ring.close(fd: fd)
            return nil
        }
        freeCount -= 1
        let slot = Int(freeSlots[freeCount])
        highWater = max(highWater, slot + 1)
        active += 1
        control.stats.pointee.accepted += 1
        let c = connections + slot
        let gen = c.pointee.generation
        c.pointee = Connection()
        c.pointee.generation = gen
        c.pointee.downstreamFD = fd
        c.pointee.snapshot = Unmanaged.passRetained(snapshot)
        c.pointee.lastActivity = now
        c.pointee.listenerSlot = listenerSlots[li]
        control.named.listeners[Int(listenerSlots[li])].accepted += 1
        control.named.listeners[Int(listenerSlots[li])].active += 1
        return c
    }

    func slot(of c: UnsafeMutablePointer<Connection>) -> Int { c - connections }

    @inline(__always) func snapshotOf(_ c: UnsafeMutablePointer<Connection>) -> Snapshot { c.pointee.snapshot!.takeUnretainedValue() }

    /// Ends a connection abnormally: shuts both sockets so pending operations complete, cancels
    /// what is left, and frees the slot when the last completion is in.
    func abort(_ c: UnsafeMutablePointer<Connection>) {
        guard c.pointee.state != .closing && c.pointee.state != .free else { return }
        if c.pointee.kind == .http { detachUpstream(c, reuse: false); endEndpoint(c) }
        c.pointee.state = .closing
        if c.pointee.kind == .h2 { h2EndStreams(c) }
        control.stats.pointee.aborted += 1
        for side in 0..<2 {
            let fd = side == 0 ? c.pointee.downstreamFD : c.pointee.upstreamFD
            guard fd >= 0 else { continue }
            ring.shutdown(fd: fd, how: Int32(SHUT_RDWR))
            if c.pointee.inflight > 0 { ring.cancelAll(fd: fd, userData: UserData(op: Op.ignore, slot: 0, generation: 0)) }
        }
        finishIfIdle(c)
        // Last: the reset may run the stream's close at once, which frees the slot.
        if c.pointee.carrier == .h2Stream && c.pointee.state == .closing { h2StreamAborted(c) }
    }

    /// Frees a closing connection once no operation refers to it any more.
    func finishIfIdle(_ c: UnsafeMutablePointer<Connection>) {
        guard c.pointee.state == .closing, c.pointee.inflight == 0 else { return }
        if c.pointee.kind == .h2 { h2EndStreams(c); endH2(c) }
        if c.pointee.carrier == .h2Stream { h2StreamFreed(c) }
        if c.pointee.downstreamFD >= 0 { ring.close(fd: c.pointee.downstreamFD) }
        if c.pointee.upstreamFD >= 0 { ring.close(fd: c.pointee.upstreamFD) }
        for f in 0..<2 {
            let flow = c.flow(f)
            if flow.pointee.pipeRead >= 0 { ring.closePipe(fd: flow.pointee.pipeRead); ring.closePipe(fd: flow.pointee.pipeWrite) }
            var b = flow.pointee.head
            while b >= 0 { releaseBuffer(Int(b)); b = bufferNext[Int(b)] }
            clearOut(flow)
            if f == 0 { control.stats.pointee.bytesDownstreamToUpstream += flow.pointee.bytes }
            else { control.stats.pointee.bytesUpstreamToDownstream += flow.pointee.bytes }
        }
        endActive(c)
        if c.pointee.isTLS { endTLS(c) }
        if c.pointee.upstreamIsTLS { endTCPUpstreamTLS(c) }
        if c.pointee.endpointSlot >= 0 { control.named.endpoints[Int(c.pointee.endpointSlot)].active -= 1 }
        if c.pointee.listenerSlot >= 0 && c.pointee.carrier == .socket { control.named.listeners[Int(c.pointee.listenerSlot)].active -= 1 }
        c.pointee.snapshot?.release()
        let gen = (c.pointee.generation &+ 1) & UserData.generationMask
        c.pointee = Connection()
        c.pointee.generation = gen
        freeSlots[freeCount] = Int32(slot(of: c))
        freeCount += 1
        active -= 1
    }
}
