// The splice data path (limits.data_path: splice), kept to measure against the buffer-ring copy:
// each direction moves bytes source -> pipe -> destination with non-blocking splice(2) on the
// shard thread, driven by one-shot readiness polls on the ring. No bytes enter user space.
import WeirCore
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

extension Shard {
    /// Bytes one splice call may move; also the pipe size asked for.
    static var spliceChunk: Int { 1 << 20 }

    func startSplice(_ c: UnsafeMutablePointer<Connection>) {
        // splice(2) honours SPLICE_F_NONBLOCK only on the pipe side; a blocking socket would
        // block the whole shard, so both sockets go non-blocking.
        ring.setNonBlocking(fd: c.pointee.downstreamFD)
        ring.setNonBlocking(fd: c.pointee.upstreamFD)
        for f in 0..<2 {
            guard let pipe = ring.makePipe(bytes: Shard.spliceChunk) else { return abort(c) }
            c.flow(f).pointee.pipeRead = pipe.read
            c.flow(f).pointee.pipeWrite = pipe.write
        }
        pump(c, 0)
        pump(c, 1)
    }

    func onPoll(_ ud: UserData, _ res: Int32) {
        let c = connections + ud.slot
        precondition(c.pointee.generation == ud.generation, "a slot is reused only after its last completion")
        c.pointee.inflight -= 1
        c.flow(Int(ud.sub)).pointee.pollArmed = false
        if c.pointee.state != .open { return finishIfIdle(c) }
        if res < 0 && res != -ECANCELED { return abort(c) }
        pump(c, Int(ud.sub))
    }

    /// Moves what it can for flow `f` without blocking, then waits for the readiness it lacks:
    /// POLLOUT on the destination while the pipe holds bytes, else POLLIN on the source. Bounded
    /// rounds per call so one busy connection cannot hold the shard.
    func pump(_ c: UnsafeMutablePointer<Connection>, _ f: Int) {
        let flow = c.flow(f)
        guard !flow.pointee.pollArmed else { return }
        for _ in 0..<8 {
            if flow.pointee.pipeBytes > 0 {
                let m = ring.splice(from: flow.pointee.pipeRead, to: destinationFD(c, f), count: flow.pointee.pipeBytes)
                if m > 0 { flow.pointee.pipeBytes -= m; c.pointee.lastActivity = now; countBytes(c, f, Int64(m)); continue }
                if m == -Int(EAGAIN) { return armPoll(c, f, out: true) }
                return abort(c)
            }
            if flow.pointee.sourceEnded { return shutDestination(c, f) }
            let n = ring.splice(from: sourceFD(c, f), to: flow.pointee.pipeWrite, count: Shard.spliceChunk)
            if n > 0 { flow.pointee.pipeBytes += n; flow.pointee.bytes += Int64(n); c.pointee.lastActivity = now; continue }
            if n == 0 { flow.pointee.sourceEnded = true; continue }
            if n == -Int(EAGAIN) { return armPoll(c, f, out: false) }
            return abort(c)
        }
        // Still busy after a fair share: come back on the next loop turn via a poll that is
        // ready at once.
        armPoll(c, f, out: flow.pointee.pipeBytes > 0)
    }

    func armPoll(_ c: UnsafeMutablePointer<Connection>, _ f: Int, out: Bool) {
        c.flow(f).pointee.pollArmed = true
        c.pointee.inflight += 1
        ring.poll(fd: out ? destinationFD(c, f) : sourceFD(c, f), events: UInt32(out ? POLLOUT : POLLIN),
                  userData: UserData(op: out ? Op.pollOut : Op.pollIn, sub: UInt8(f), slot: slot(of: c), generation: c.pointee.generation))
    }
}
