// The two flows of a TCP session: bytes received on one socket into ring buffers are queued
// until sent on the other, with backpressure (a recv is cancelled at the queue cap) and half-close.
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
    @inline(__always) func sourceFD(_ c: UnsafeMutablePointer<Connection>, _ f: Int) -> Int32 {
        f == 0 ? c.pointee.downstreamFD : c.pointee.upstreamFD
    }

    @inline(__always) func destinationFD(_ c: UnsafeMutablePointer<Connection>, _ f: Int) -> Int32 {
        f == 0 ? c.pointee.upstreamFD : c.pointee.downstreamFD
    }

    func armRecv(_ c: UnsafeMutablePointer<Connection>, _ f: Int) {
        let flow = c.flow(f)
        assert(flow.pointee.recv != .armed && flow.pointee.recv != .cancelling, "one recv per socket")
        flow.pointee.recv = .armed
        c.pointee.inflight += 1
        // The byte limit ends the multishot once the queue could be full, so a fast sender facing
        // a slow receiver takes at most `queueCap` buffers from the shared pool even within one
        // kernel burst (a multishot recv retries many times per wake-up). The cancel at the cap
        // in onRecv remains for small reads, which use a buffer each.
        let room = recvLimit ? UInt32(max(1, queueCap - flow.pointee.queued)) * UInt32(buffers.bufferBytes) : 0
        ring.recvMultishot(fd: sourceFD(c, f), group: buffers.group, limitBytes: room,
                           userData: UserData(op: Op.recv, sub: UInt8(f), slot: slot(of: c), generation: c.pointee.generation))
    }

    /// Re-arms the recv of a flow that stopped, once its queue has room (half the cap, so a
    /// connection at the cap does not cancel and re-arm on every buffer).
    func rearmIfRoom(_ c: UnsafeMutablePointer<Connection>, _ f: Int) {
        // A stream has no socket of its own: room on its queue opens the client's window instead.
        if c.pointee.carrier == .h2Stream { if f == 0 { h2StreamWindow(c) }; return }
        let flow = c.flow(f)
        // Before the upstream is there, the client's side still reads (a ClientHello to route,
        // TLS to terminate); its bytes wait queued.
        guard c.pointee.state == .open || (f == 0 && c.pointee.state.beforeUpstream), flow.pointee.recv == .idle, !flow.pointee.sourceEnded,
              flow.pointee.queued <= queueCap / 2 else { return }
        armRecv(c, f)
    }

    func onRecv(_ ud: UserData, _ res: Int32, _ flags: UInt32) {
        let c = connections + ud.slot
        precondition(c.pointee.generation == ud.generation, "a slot is reused only after its last completion")
        let f = Int(ud.sub)
        let flow = c.flow(f)
        let bid = bufferID(flags: flags)
        if bid != nil { buffers.didTake() }
        if !hasMore(flags: flags) {
            flow.pointee.recv = .idle
            c.pointee.inflight -= 1
        }
        if c.pointee.state.beforeUpstream && f == 0 {
            // Client bytes before the upstream is there (a ClientHello being routed by name):
            // kept queued, sent once connected.
            if res > 0, let bid {
                if c.pointee.isTLS {
                    var closeNotify = false
                    guard tlsReceive(c, bid: Int(bid), count: Int(res), closeNotify: &closeNotify) != nil else { return }
                    if closeNotify { flow.pointee.sourceEnded = true }
                } else {
                    enqueueReceived(flow, bid: bid, length: res)
                }
                flow.pointee.bytes += Int64(res)
                c.pointee.lastActivity = now
                if c.pointee.state == .peeking { helloArrived(c) } else if c.pointee.state == .inspecting { inspectArrived(c) }
                if c.pointee.state.beforeUpstream && flow.pointee.recv == .armed && flow.pointee.queued >= queueCap {
                    flow.pointee.recv = .cancelling
                    ring.cancel(ud, on: sourceFD(c, f), userData: UserData(op: Op.ignore, slot: 0, generation: 0))
                }
                return
            }
            if let bid { buffers.recycle(bid) }
            switch res {
            case 0:
                flow.pointee.sourceEnded = true
                if c.pointee.state == .peeking { helloArrived(c) } else if c.pointee.state == .inspecting { inspectArrived(c) }
            case -ENOBUFS:
                starve(c, 0)
            case -ECANCELED: break
            default: abort(c)
            }
            return
        }
        if c.pointee.state != .open {
            if let bid { buffers.recycle(bid) }
            return finishIfIdle(c)
        }
        if c.pointee.kind == .http { return onHTTPRecv(c, ud, res, bid) }
        if c.pointee.kind == .h2 { return onH2Recv(c, ud, res, bid) }
        if res > 0, let bid {
            var closeNotify = false
            if f == 0 && c.pointee.isTLS {
                guard let plain = tlsReceive(c, bid: Int(bid), count: Int(res), closeNotify: &closeNotify) else { return }
                flow.pointee.bytes += Int64(res)
                c.pointee.lastActivity = now
                if plain > 0 && !flow.pointee.sending { sendHead(c, f) }
                if closeNotify {
                    flow.pointee.sourceEnded = true
                    if !flow.pointee.sending && flow.pointee.queued == 0 { shutDestination(c, f) }
                    return
                }
                if !flow.pointee.recv.pending { rearmIfRoom(c, f) }
                return
            }
            if f == 1 && c.pointee.upstreamIsTLS {
                flow.pointee.bytes += Int64(res)
                c.pointee.lastActivity = now
                guard upTLSReceive(c, bid: Int(bid), count: Int(res)) else { return }
                if flow.pointee.recv == .armed && flow.pointee.queued >= queueCap {
                    flow.pointee.recv = .cancelling
                    ring.cancel(ud, on: sourceFD(c, f), userData: UserData(op: Op.ignore, slot: 0, generation: 0))
                } else if !flow.pointee.recv.pending {
                    rearmIfRoom(c, f)
                }
                return
            }
            enqueueReceived(flow, bid: bid, length: res)
            flow.pointee.bytes += Int64(res)
            c.pointee.lastActivity = now
            if !flow.pointee.sending { sendHead(c, f) }
            if flow.pointee.recv == .armed && flow.pointee.queued >= queueCap {
                // Backpressure: the destination is slower than the source. Stop reading so this
                // connection cannot drain the shard's shared buffer pool.
                flow.pointee.recv = .cancelling
                ring.cancel(ud, on: sourceFD(c, f), userData: UserData(op: Op.ignore, slot: 0, generation: 0))
            } else if !flow.pointee.recv.pending {
                rearmIfRoom(c, f)
            }
            return
        }
        if let bid { buffers.recycle(bid) }
        if f == 1 && c.pointee.upstreamIsTLS && !upTLS(c).pointee.handshakeDone && res != -ENOBUFS && res != -ECANCELED {
            // The upstream closed (or failed) before the handshake ended: a failed connect.
            return upTLSFailed(c, res == 0 ? "the endpoint closed the connection during the handshake" : String(cString: strerror(-res)))
        }
        switch res {
        case 0:
            flow.pointee.sourceEnded = true
            if !flow.pointee.sending && flow.pointee.queued == 0 { shutDestination(c, f) }
        case -ENOBUFS:
            starve(c, f)
        case -ECANCELED:
            rearmIfRoom(c, f)
        default:
            // The upstream resetting a session counts against it for outlier detection.
            if f == 1 && res == -ECONNRESET { noteConnect(c, failed: true) }
            Log.debug("shard \(index): receive on \(f == 0 ? "client" : "upstream") side failed: \(String(cString: strerror(-res)))")
            abort(c)
        }
    }

    /// Sends what is queued: the rest of the head buffer alone with a plain send, or up to
    /// `maxVectors` buffers in one gather send when more wait (fewer operations per byte when the
    /// destination is slower than the source).
    func sendHead(_ c: UnsafeMutablePointer<Connection>, _ f: Int) {
        let flow = c.flow(f)
        let bid = Int(flow.pointee.head)
        let offset = Int(flow.pointee.sendOffset)
        if f == 1 && c.pointee.isTLS {
            // Encrypt the head buffer's unsent bytes; tlsSent credits them when the ciphertext is out.
            return tlsSend(c, bufferPointer(bid) + offset, Int(bufferLength[bid]) - offset)
        }
        if f == 0 && c.pointee.upstreamIsTLS {
            return upTLSStartSend(c, bufferPointer(bid) + offset, Int(bufferLength[bid]) - offset)
        }
        flow.pointee.sending = true
        c.pointee.inflight += 1
        let ud = UserData(op: Op.send, sub: UInt8(f), slot: slot(of: c), generation: c.pointee.generation)
        if flow.pointee.queued == 1 {
            ring.send(fd: destinationFD(c, f), buffer: bufferPointer(Int(bid)) + offset,
                      count: Int(bufferLength[bid]) - offset, userData: ud)
            return
        }
        let index = slot(of: c) * 2 + f
        let vectors = sendVectors + index * Shard.maxVectors
        var count = 0
        var b = bid
        while b >= 0 && count < Shard.maxVectors {
            let skip = count == 0 ? offset : 0
            vectors[count] = iovec(iov_base: bufferPointer(Int(b)) + skip, iov_len: Int(bufferLength[b]) - skip)
            count += 1
            b = Int(bufferNext[b])
        }
        let message = sendMessages + index
        message.pointee = msghdr()
        message.pointee.msg_iov = vectors
        message.pointee.msg_iovlen = count
        ring.sendmsg(fd: destinationFD(c, f), message: message, userData: ud)
    }

    func onSend(_ ud: UserData, _ sent: Int32) {
        let c = connections + ud.slot
        precondition(c.pointee.generation == ud.generation, "a slot is reused only after its last completion")
        if c.pointee.kind == .http { return onHTTPSend(c, sent) }
        if c.pointee.kind == .h2 { return onH2Send(c, sent) }
        let f = Int(ud.sub)
        let flow = c.flow(f)
        flow.pointee.sending = false
        c.pointee.inflight -= 1
        if c.pointee.state != .open && !(c.pointee.state == .connecting && c.pointee.isTLS) { return finishIfIdle(c) }
        guard sent > 0 else {
            // The upstream refused the handshake's own records: a failed connect of that endpoint.
            if f == 0 && c.pointee.upstreamIsTLS && !upTLS(c).pointee.handshakeDone {
                return upTLSFailed(c, sent == 0 ? "nothing sent" : String(cString: strerror(-sent)))
            }
            if f == 0 && (sent == -ECONNRESET || sent == -EPIPE) { noteConnect(c, failed: true) }
            Log.debug("shard \(index): send to \(f == 0 ? "upstream" : "client") failed: \(sent == 0 ? "nothing sent" : String(cString: strerror(-sent)))")
            return abort(c)
        }
        var res = sent
        if f == 1 && c.pointee.isTLS {
            guard let credit = tlsSent(c, sent) else { return }
            // Starting the next ciphertext send may have ended the session (no head buffer).
            guard c.pointee.state == .open || c.pointee.state == .connecting else { return }
            if credit == 0 {
                // Handshake records or tickets went out: data may wait behind them.
                if c.pointee.state == .open && flow.pointee.queued > 0 && !flow.pointee.sending { sendHead(c, f) }
                else if c.pointee.state == .open && flow.pointee.sourceEnded && flow.pointee.queued == 0 { shutDestination(c, f) }
                return
            }
            res = credit
        }
        if f == 0 && c.pointee.upstreamIsTLS {
            guard let credit = upTLSSent(c, sent) else { return }
            guard c.pointee.state == .open else { return }
            if credit == 0 {
                // Handshake records went out: client bytes may wait behind them (before the
                // handshake ends, sendHead sends nothing, so what OpenSSL has pending goes).
                if flow.pointee.queued > 0 && !flow.pointee.sending { sendHead(c, f) }
                if !flow.pointee.sending { upTLSFlush(c) }
                if !flow.pointee.sending && flow.pointee.sourceEnded && flow.pointee.queued == 0 { shutDestination(c, f) }
                return
            }
            res = credit
        }
        c.pointee.lastActivity = now
        // Retire every buffer the send finished; a short send leaves an offset into the next.
        countBytes(c, f, Int64(res))
        var sent = res
        while sent > 0 {
            let head = Int(flow.pointee.head)
            let left = bufferLength[head] - flow.pointee.sendOffset
            if sent < left { flow.pointee.sendOffset += sent; break }
            sent -= left
            flow.pointee.head = bufferNext[head]
            if flow.pointee.head < 0 { flow.pointee.tail = -1 }
            flow.pointee.queued -= 1
            flow.pointee.sendOffset = 0
            releaseBuffer(head)
        }
        if flow.pointee.queued > 0 {
            sendHead(c, f)
        } else if flow.pointee.sourceEnded {
            shutDestination(c, f)
        }
        rearmIfRoom(c, f)
    }

    /// Propagates a half-close: the source sent FIN and everything it sent is flushed, so send FIN
    /// on the destination. The other direction keeps flowing until it ends too.
    func shutDestination(_ c: UnsafeMutablePointer<Connection>, _ f: Int) {
        let flow = c.flow(f)
        guard !flow.pointee.destinationShut else { return }
        if f == 1 && c.pointee.isTLS && tlsCloseNotify(c) { return }
        if f == 0 && c.pointee.upstreamIsTLS && upTLSCloseNotify(c) { return }
        // Sending close_notify may have ended the session (no head buffer for it).
        guard c.pointee.state == .open else { return }
        flow.pointee.destinationShut = true
        ring.shutdown(fd: destinationFD(c, f), how: Int32(SHUT_WR))
        if c.flow(0).pointee.destinationShut && c.flow(1).pointee.destinationShut {
            control.stats.pointee.completed += 1
            c.pointee.state = .closing
            finishIfIdle(c)
        }
    }
}
