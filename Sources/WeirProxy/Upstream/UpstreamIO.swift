// The I/O of a pooled upstream connection: connect (and TLS handshake), its recv (which watches an
// idle connection for the upstream closing it), and request sends.
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
    func onUpstreamConnect(_ ud: UserData, _ res: Int32) {
        let u = upstreams + ud.slot
        precondition(u.pointee.generation == ud.generation, "an upstream slot is reused only after its last completion")
        u.pointee.inflight -= 1
        if u.pointee.state == .closing { return finishUpstream(u) }
        guard let c = owner(u) else { return closeUpstream(u) }
        let e = Int(c.pointee.endpointSlot)
        if res == 0 {
            control.stats.pointee.upstreamConnected += 1
            if e >= 0 { control.named.endpoints[e].connections += 1 }
            let cluster = snapshotOf(c).clusters[Int(c.pointee.clusterIndex)]
            if let tls = cluster.tls(forEndpoint: Int(c.pointee.endpointIndex)) {
                // TCP is up; the TLS handshake comes next (the request waits in its head buffer).
                guard startUpstreamTLS(u, tls) else { return upstreamConnectFailed(c, u, timedOut: false) }
                u.pointee.state = .handshaking
                armUpstreamRecv(u)
                return upstreamTLSSend(c, u, nil, 0)
            }
            u.pointee.state = .busy
            noteConnect(c, failed: false)
            armUpstreamRecv(u)
            c.pointee.ex.phase = .forwarding
            return sendRequestHead(c, parsed: nil)
        }
        upstreamConnectFailed(c, u, timedOut: res == -ECANCELED)
    }

    /// The connect (or the TLS handshake after it) failed: count it, and try the next endpoint
    /// while the cluster's connect_attempts allow, else 503.
    func upstreamConnectFailed(_ c: UnsafeMutablePointer<Connection>, _ u: UnsafeMutablePointer<Upstream>, timedOut: Bool) {
        let e = Int(c.pointee.endpointSlot)
        let res: Int32 = timedOut ? -ECANCELED : -ECONNREFUSED
        if res == -ECANCELED { control.stats.pointee.connectTimeouts += 1 } else { control.stats.pointee.connectFailures += 1 }
        if e >= 0 {
            if res == -ECANCELED { control.named.endpoints[e].connectTimeouts += 1 } else { control.named.endpoints[e].connectFailures += 1 }
        }
        noteConnect(c, failed: true)
        c.pointee.ex.upstream = -1
        // A handshake record still in flight reads the upstream's own buffer, not the request's.
        c.flow(0).pointee.sending = false
        closeUpstream(u)
        endEndpoint(c)
        c.pointee.exclusions.insert(Int(c.pointee.endpointIndex))
        c.pointee.attempts += 1
        let cluster = snapshotOf(c).clusters[Int(c.pointee.clusterIndex)]
        if Int(c.pointee.attempts) < cluster.connectAttempts {
            connectHTTP(c)
        } else {
            localResponse(c, status: 503, close: false)
        }
    }

    func armUpstreamRecv(_ u: UnsafeMutablePointer<Upstream>) {
        assert(u.pointee.recv != .armed && u.pointee.recv != .cancelling, "one recv per socket")
        u.pointee.recv = .armed
        u.pointee.inflight += 1
        var room: UInt32 = UInt32(buffers.bufferBytes)
        if u.pointee.state == .busy, let c = owner(u) {
            room = UInt32(max(1, queueCap - c.flow(1).pointee.queued)) * UInt32(buffers.bufferBytes)
        }
        ring.recvMultishot(fd: u.pointee.fd, group: buffers.group, limitBytes: recvLimit ? room : 0,
                           userData: UserData(op: Op.upRecv, slot: u - upstreams, generation: u.pointee.generation))
    }

    /// Re-arms the upstream's recv once the response queue has room again.
    func rearmUpstreamIfRoom(_ c: UnsafeMutablePointer<Connection>) {
        guard c.pointee.ex.upstream >= 0 else { return }
        let u = upstreams + Int(c.pointee.ex.upstream)
        guard u.pointee.state == .busy, u.pointee.recv == .idle, !u.pointee.ended,
              c.flow(1).pointee.queued <= queueCap / 2 else { return }
        armUpstreamRecv(u)
    }

    func onUpstreamRecv(_ ud: UserData, _ res: Int32, _ flags: UInt32) {
        let u = upstreams + ud.slot
        precondition(u.pointee.generation == ud.generation, "an upstream slot is reused only after its last completion")
        let bid = bufferID(flags: flags)
        if bid != nil { buffers.didTake() }
        if !hasMore(flags: flags) {
            u.pointee.recv = .idle
            u.pointee.inflight -= 1
        }
        switch u.pointee.state {
        case .handshaking:
            guard let c = owner(u) else {
                if let bid { buffers.recycle(bid) }
                return closeUpstream(u)
            }
            guard res > 0, let bid else {
                if let bid { buffers.recycle(bid) }
                if res == -ENOBUFS { starveUpstream(u); return }
                if res == -ECANCELED { if u.pointee.recv == .idle { armUpstreamRecv(u) }; return }
                return upstreamConnectFailed(c, u, timedOut: false)
            }
            switch tlsIngest(upstreamTLS + ud.slot, bid: Int(bid), count: Int(res), into: c.flow(1)) {
            case .failed:
                Log.warning("shard \(index): TLS to upstream \(snapshotOf(c).clusters[Int(c.pointee.clusterIndex)].endpoints[Int(c.pointee.endpointIndex)].address) failed: \(openSSLErrors())")
                return upstreamConnectFailed(c, u, timedOut: false)
            case .handshaking:
                // The recv of a connection not yet busy is bounded to one buffer: a server's
                // first flight may take several.
                if u.pointee.recv == .idle { armUpstreamRecv(u) }
                return upstreamTLSSend(c, u, nil, 0)
            case .data:
                u.pointee.state = .busy
                noteConnect(c, failed: false)
                c.pointee.ex.phase = .forwarding
                if u.pointee.recv == .idle { armUpstreamRecv(u) }
                return sendRequestHead(c, parsed: nil)
            }
        case .idle:
            if let bid, res > 0, u.pointee.isTLS {
                // Session tickets and other TLS records may arrive on an idle connection; data may not.
                if case .data(0, false, _) = tlsIngest(upstreamTLS + ud.slot, bid: Int(bid), count: Int(res), into: discardFlow) {
                    if u.pointee.recv == .idle { armUpstreamRecv(u) }
                    return
                }
                dropQueue(discardFlow)
                return closeUpstream(u)
            }
            if let bid { buffers.recycle(bid) }
            if res == -ENOBUFS { starveUpstream(u); return }
            if res == -ECANCELED { if u.pointee.recv == .idle { armUpstreamRecv(u) }; return }
            // Data, EOF or an error on an idle connection: the upstream is done with it.
            return closeUpstream(u)
        case .busy:
            guard let c = owner(u) else {
                if let bid { buffers.recycle(bid) }
                return closeUpstream(u)
            }
            if res > 0, let bid {
                let flow = c.flow(1)
                if u.pointee.isTLS {
                    switch tlsIngest(upstreamTLS + ud.slot, bid: Int(bid), count: Int(res), into: flow) {
                    case .failed, .handshaking:
                        u.pointee.ended = true
                        return upstreamFailed(c, .reset)
                    case .data(let plain, let closeNotify, _):
                        if closeNotify { u.pointee.ended = true }
                        if plain == 0 {
                            if closeNotify { return upstreamEnded(c) }
                            if !u.pointee.recv.pending { rearmUpstreamIfRoom(c) }
                            return
                        }
                    }
                } else {
                    enqueueReceived(flow, bid: bid, length: res)
                }
                flow.pointee.bytes += Int64(res)
                c.pointee.lastActivity = now
                if c.pointee.ex.responseHeadDone { pumpResponse(c) } else { processResponse(c) }
                guard u.pointee.state == .busy, owner(u) == c else { return }
                // TLS close_notify came with the last data: the upstream has ended.
                if u.pointee.ended { return upstreamEnded(c) }
                if u.pointee.recv == .armed && flow.pointee.queued >= queueCap {
                    u.pointee.recv = .cancelling
                    ring.cancel(ud, on: u.pointee.fd, userData: UserData(op: Op.ignore, slot: 0, generation: 0))
                } else if !u.pointee.recv.pending {
                    rearmUpstreamIfRoom(c)
                }
                return
            }
            if let bid { buffers.recycle(bid) }
            switch res {
            case 0:
                u.pointee.ended = true
                upstreamEnded(c)
            case -ENOBUFS:
                starveUpstream(u)
            case -ECANCELED:
                rearmUpstreamIfRoom(c)
            default:
                u.pointee.ended = true
                // A reset after the whole response came is the upstream's business, not the
                // client's; inside a tunnel it ends both sides.
                if c.pointee.ex.phase != .tunnel { upstreamEnded(c) } else { upstreamFailed(c, .reset) }
            }
        default:
            if let bid { buffers.recycle(bid) }
            finishUpstream(u)
        }
    }

    /// The upstream closed its side (or reset) while serving this exchange. Before the response
    /// head, that is a failure (retried when it may be). After it, what arrived before the end
    /// may hold the whole response (an upstream that says `Connection: close` closes at once):
    /// it goes on to the client, and the response counts as cut short only if its framing runs
    /// past the bytes that came (pumpResponse sees that).
    func upstreamEnded(_ c: UnsafeMutablePointer<Connection>) {
        let flow = c.flow(1)
        let headPending = flow.pointee.queued > 0 || flow.pointee.sending || c.pointee.ex.response == .waitingForHeadBuffer
        guard c.pointee.ex.responseHeadDone || c.pointee.ex.phase == .tunnel || headPending else { return upstreamFailed(c, .reset) }
        // The final head may be here already, waiting behind a 1xx being sent or for a head
        // buffer: processResponse parses what came and fails only a head cut short.
        flow.pointee.sourceEnded = true
        if c.pointee.ex.response == .waitingForHeadBuffer { return }
        if c.pointee.ex.responseHeadDone || c.pointee.ex.phase == .tunnel { pumpResponse(c) } else { processResponse(c) }
    }

    func upstreamSend(_ c: UnsafeMutablePointer<Connection>, _ u: UnsafeMutablePointer<Upstream>, _ pointer: UnsafeMutableRawPointer, _ count: Int) {
        if u.pointee.isTLS { return upstreamTLSSend(c, u, pointer, count) }
        c.flow(0).pointee.sending = true
        u.pointee.inflight += 1
        ring.send(fd: u.pointee.fd, buffer: pointer, count: count,
                  userData: UserData(op: Op.upSend, slot: u - upstreams, generation: u.pointee.generation))
    }

    func onUpstreamSend(_ ud: UserData, _ sent: Int32) {
        let u = upstreams + ud.slot
        precondition(u.pointee.generation == ud.generation, "an upstream slot is reused only after its last completion")
        u.pointee.inflight -= 1
        if u.pointee.pendingOut >= 0 { releaseHeadBuffer(u.pointee.pendingOut); u.pointee.pendingOut = -1 }
        guard u.pointee.state == .busy || u.pointee.state == .handshaking, let c = owner(u) else {
            if u.pointee.state == .closing { finishUpstream(u) }
            return
        }
        let flow = c.flow(0)
        flow.pointee.sending = false
        guard sent > 0 else {
            if u.pointee.state == .handshaking { return upstreamConnectFailed(c, u, timedOut: false) }
            return upstreamFailed(c, .reset)
        }
        var res = sent
        if u.pointee.isTLS {
            guard let credit = upstreamTLSSent(c, u, sent) else { return }
            if credit == 0 {
                if u.pointee.state == .busy { pumpRequest(c) }
                return
            }
            res = credit
        }
        credit(c, flow, 0, res)
        pumpRequest(c)
        rearmIfRoom(c, 0)
    }
}
