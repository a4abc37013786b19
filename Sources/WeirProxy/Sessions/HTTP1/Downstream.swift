// The HTTP/1.1 codec on the client side: reads requests into flow 0's queue and parses each head
// in place, writes responses back through flow 1, keep-alive, lingering close and the timeouts
// of a downstream connection. One exchange at a time per connection: pipelined requests wait in
// the queue and are answered in order. What happens to a parsed request is the exchange's business.
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
    func openHTTP(fd: Int32, listener li: Int) {
        guard let c = takeSlot(fd: fd, listener: li) else { return }
        startHTTP(c, listener: li)
    }

    /// Starts the HTTP/1 session of listener `li` on a connection (just accepted, or handed over
    /// by a filter chain with the bytes its inspectors read queued on flow 0).
    func startHTTP(_ c: UnsafeMutablePointer<Connection>, listener li: Int) {
        let listener = snapshotOf(c).listeners[li]
        c.pointee.kind = .http
        c.pointee.state = .open
        c.pointee.listenerIndex = Int32(li)
        c.pointee.idleTimeout = listener.idleTimeoutNanoseconds
        fillClientAddress(c, fd: c.pointee.downstreamFD)
        if let tls = listener.tls {
            guard startTLS(c, tls) else {
                Log.warning("shard \(index): cannot start TLS: \(openSSLErrors())")
                return closeHTTP(c)
            }
            guard decryptQueued(c), c.pointee.state == .open else { return }
        }
        if c.flow(0).pointee.recv == .idle && !c.flow(0).pointee.sourceEnded { armRecv(c, 0) }
        if c.flow(0).pointee.queued > 0 || c.flow(0).pointee.sourceEnded { processRequest(c) }
    }

    /// Records the client's address as text (for X-Forwarded-For) and its hash (for source_ip).
    func fillClientAddress(_ c: UnsafeMutablePointer<Connection>, fd: Int32) {
        let text = clientText + slot(of: c) * Shard.clientTextBytes
        text[0] = 0
        var storage = sockaddr_storage()
        let rc = ring.peerName(fd: fd, into: &storage)
        guard rc == 0 else { return }
        withUnsafePointer(to: &storage) { p in
            let raw = UnsafeRawPointer(p)
            let family = Int32(p.pointee.ss_family)
            let (offset, count) = family == AF_INET6
                ? (MemoryLayout<sockaddr_in6>.offset(of: \sockaddr_in6.sin6_addr)!, 16)
                : (MemoryLayout<sockaddr_in>.offset(of: \sockaddr_in.sin_addr)!, 4)
            _ = text.withMemoryRebound(to: CChar.self, capacity: Shard.clientTextBytes) {
                inet_ntop(family, raw + offset, $0, socklen_t(Shard.clientTextBytes))
            }
            c.pointee.hash = XXHash64.hash(UnsafeRawBufferPointer(start: raw + offset, count: count))
        }
    }

    func clientAddress(_ c: UnsafeMutablePointer<Connection>) -> UnsafeRawBufferPointer {
        let text = clientText + slot(of: c) * Shard.clientTextBytes
        return UnsafeRawBufferPointer(start: text, count: strlen(UnsafeRawPointer(text).assumingMemoryBound(to: CChar.self)))
    }

    @inline(__always) func httpListener(_ c: UnsafeMutablePointer<Connection>) -> HTTPListener {
        snapshotOf(c).listeners[Int(c.pointee.listenerIndex)].http!
    }

    /// Called when bytes arrive on a connection waiting for a request, and after a response
    /// ends (a pipelined request may be queued already).
    func processRequest(_ c: UnsafeMutablePointer<Connection>) {
        let flow = c.flow(0)
        while c.pointee.state == .open && (c.pointee.ex.phase == .idle || c.pointee.ex.phase == .head) {
            guard flow.pointee.queued > 0 else {
                if flow.pointee.sourceEnded { closeHTTP(c) }
                return
            }
            let bid = Int(flow.pointee.head)
            let off = Int(flow.pointee.sendOffset)
            let len = Int(bufferLength[bid])
            if off >= len { popHead(flow); continue }
            if c.pointee.ex.phase == .idle { beginExchange(c) }
            let base = bufferPointer(Int(bid)) + off
            if c.pointee.requestsSeen == 1 && startsH2(c, base, len - off) { return }
            let http = httpListener(c)
            switch HTTPParser.parseRequest(UnsafeRawBufferPointer(start: base, count: len - off), limits: http.limits, headers: headers) {
            case .incomplete:
                if flow.pointee.queued > 1 && compact(flow) { continue }
                if flow.pointee.sourceEnded { closeHTTP(c) }
                return
            case .failed(let e):
                countRequest(c)
                if e.status == 400 { Log.debug("shard \(index): refused a request: \(e)") }
                return localResponse(c, status: e.status, close: true)
            case .complete(let head):
                return startRequest(c, head, base: base, offset: off)
            }
        }
    }

    func processRequestOrClose(_ c: UnsafeMutablePointer<Connection>) {
        if c.pointee.ex.phase == .lingering { return closeHTTP(c) }
        processRequest(c)
    }

    /// A new exchange: the connection moves to the current snapshot (a keep-alive connection
    /// follows reloads request by request) and the header timeout starts.
    func beginExchange(_ c: UnsafeMutablePointer<Connection>) {
        let old = snapshotOf(c)
        if old !== snapshot {
            let oldIndex = Int(c.pointee.listenerIndex)
            let name = old.listeners[oldIndex].name
            // A chain's connection follows its chain only while the chain still matches the way
            // it did (chains are named by position when xDS gives no name).
            if let li = snapshot.listeners.firstIndex(where: { $0.name == name && $0.proto == .http }),
               old.chainMatch(of: oldIndex) == snapshot.chainMatch(of: li) {
                c.pointee.snapshot?.release()
                c.pointee.snapshot = Unmanaged.passRetained(snapshot)
                c.pointee.listenerIndex = Int32(li)
            } else {
                // Its listener is gone: serve this request on the old configuration, then close.
                c.pointee.ex.closeAfter = true
            }
        }
        c.pointee.ex.phase = .head
        c.pointee.requestsSeen &+= 1
        c.pointee.logLength = 0
        c.pointee.ex.requestStart = ring.clock(coarse: false)
        c.pointee.ex.deadline = now + httpListener(c).requestHeaderTimeoutNanoseconds
        if draining { c.pointee.ex.closeAfter = true }
    }

    func onHTTPRecv(_ c: UnsafeMutablePointer<Connection>, _ ud: UserData, _ res: Int32, _ bid: UInt16?) {
        let flow = c.flow(0)
        if res > 0, let bid {
            if c.pointee.ex.phase == .lingering {
                buffers.recycle(bid)
                if flow.pointee.recv == .idle { armRecv(c, 0) }
                return
            }
            var closeNotify = false
            if c.pointee.isTLS {
                guard let plain = tlsReceive(c, bid: Int(bid), count: Int(res), closeNotify: &closeNotify) else { return }
                if plain == 0 && !closeNotify {
                    c.pointee.lastActivity = now
                    if !flow.pointee.recv.pending { rearmIfRoom(c, 0) }
                    return
                }
            } else {
                enqueueReceived(flow, bid: bid, length: res)
            }
            flow.pointee.bytes += Int64(res)
            c.pointee.lastActivity = now
            switch c.pointee.ex.phase {
            case .idle, .head: processRequest(c)
            case .forwarding, .tunnel: pumpRequest(c)
            default: break
            }
            guard c.pointee.state == .open else { return }
            if closeNotify { return onHTTPRecv(c, ud, 0, nil) }
            if flow.pointee.recv == .armed && flow.pointee.queued >= queueCap {
                flow.pointee.recv = .cancelling
                ring.cancel(ud, on: c.pointee.downstreamFD, userData: UserData(op: Op.ignore, slot: 0, generation: 0))
            } else if !flow.pointee.recv.pending {
                rearmIfRoom(c, 0)
            }
            return
        }
        if let bid { buffers.recycle(bid) }
        switch res {
        case 0:
            flow.pointee.sourceEnded = true
            switch c.pointee.ex.phase {
            case .idle, .head, .lingering: processRequestOrClose(c)
            case .tunnel: pumpRequest(c)
            default:
                // The client closed its side with a request in flight: finish it if the request
                // is whole, then answer the whole requests it pipelined behind it, then close
                // (responseComplete takes the next one; processRequest closes at the end).
                // A body still going out may be here whole: pumpRequest ends the connection only
                // if the client's bytes run out before the body's framing does.
                if flow.pointee.body == .contentLength && UInt64(max(0, unread(flow) - Int(flow.pointee.segment))) < flow.pointee.bodyRemaining {
                    // Cut short, and certain to be: do not spend an upstream connection on it.
                    abortHTTP(c)
                } else if flow.pointee.body != .none {
                    pumpRequest(c)
                }
            }
        case -ENOBUFS:
            starve(c, 0)
        case -ECANCELED:
            rearmIfRoom(c, 0)
        default:
            abortHTTP(c)
        }
    }

    func downstreamSend(_ c: UnsafeMutablePointer<Connection>, _ pointer: UnsafeMutableRawPointer, _ count: Int) {
        if c.pointee.carrier == .h2Stream { return h2StreamSend(c, pointer, count) }
        if c.pointee.isTLS { return tlsSend(c, pointer, count) }
        c.flow(1).pointee.sending = true
        c.pointee.inflight += 1
        ring.send(fd: c.pointee.downstreamFD, buffer: pointer, count: count,
                  userData: UserData(op: Op.send, sub: 1, slot: slot(of: c), generation: c.pointee.generation))
    }

    func onHTTPSend(_ c: UnsafeMutablePointer<Connection>, _ sent: Int32) {
        let flow = c.flow(1)
        flow.pointee.sending = false
        c.pointee.inflight -= 1
        if c.pointee.state != .open { return finishIfIdle(c) }
        guard sent > 0 else { return abortHTTP(c) }
        var res = sent
        if c.pointee.isTLS {
            // Ciphertext went out; what counts below is the plaintext it carried.
            guard let credit = tlsSent(c, sent) else { return }
            if credit == 0 {
                c.pointee.lastActivity = now
                if c.pointee.ex.phase == .lingering { return }
                return pumpResponse(c)
            }
            res = credit
        }
        credit(c, flow, 1, res)
        pumpResponse(c)
        if c.pointee.state == .open { rearmUpstreamIfRoom(c) }
    }

    /// Done with this client: our side is shut after the last response; what it still sends
    /// is read and dropped for a moment, so it sees the response rather than a reset.
    func lingerClose(_ c: UnsafeMutablePointer<Connection>) {
        // A stream ends with its exchange; its connection goes on.
        if c.pointee.carrier == .h2Stream { return closeHTTP(c) }
        let f0 = c.flow(0)
        ring.shutdown(fd: c.pointee.downstreamFD, how: Int32(SHUT_WR))
        c.pointee.ex.phase = .lingering
        c.pointee.ex.deadline = now + min(2_000_000_000, httpListener(c).requestHeaderTimeoutNanoseconds)
        dropQueue(f0)
        clearOut(f0)
        if f0.pointee.sourceEnded { return closeHTTP(c) }
        if f0.pointee.recv == .idle { armRecv(c, 0) }
    }

    /// Closes a connection that ended normally.
    func closeHTTP(_ c: UnsafeMutablePointer<Connection>) {
        guard c.pointee.state == .open else { return }
        detachUpstream(c, reuse: false)
        endEndpoint(c)
        c.pointee.state = .closing
        if c.pointee.carrier == .socket { control.stats.pointee.completed += 1 }
        if c.pointee.inflight > 0 {
            if c.pointee.downstreamFD >= 0 {
                ring.shutdown(fd: c.pointee.downstreamFD, how: Int32(SHUT_RDWR))
                ring.cancelAll(fd: c.pointee.downstreamFD, userData: UserData(op: Op.ignore, slot: 0, generation: 0))
            }
            if c.pointee.ex.phase == .backoff {
                ring.cancel(UserData(op: Op.retry, slot: slot(of: c), generation: c.pointee.generation), on: -1, userData: UserData(op: Op.ignore, slot: 0, generation: 0))
            }
        }
        finishIfIdle(c)
    }

    func abortHTTP(_ c: UnsafeMutablePointer<Connection>) {
        detachUpstream(c, reuse: false)
        if c.pointee.inflight > 0 && c.pointee.ex.phase == .backoff {
            ring.cancel(UserData(op: Op.retry, slot: slot(of: c), generation: c.pointee.generation), on: -1, userData: UserData(op: Op.ignore, slot: 0, generation: 0))
        }
        abort(c)
    }

    func httpTick(_ c: UnsafeMutablePointer<Connection>) {
        switch c.pointee.ex.phase {
        case .idle where c.pointee.carrier == .h2Stream:
            // A header block still arriving (it holds the whole connection: none may interleave).
            if now - c.pointee.lastActivity > httpListener(c).requestHeaderTimeoutNanoseconds { abortHTTP(c) }
        case _ where c.pointee.carrier == .h2Stream && c.flow(1).pointee.sending && now - c.pointee.lastActivity > c.pointee.idleTimeout:
            // A stream whose client never opens its window to take the response (the connection
            // may be busy with others): it is reset, and its buffers and upstream go.
            control.stats.pointee.idleTimeouts += 1
            abortHTTP(c)
        case .idle:
            if draining && c.flow(0).pointee.queued == 0 { return closeHTTP(c) }
            if now - c.pointee.lastActivity > c.pointee.idleTimeout { control.stats.pointee.idleTimeouts += 1; closeHTTP(c) }
        case .head:
            if c.pointee.ex.deadline > 0 && now > c.pointee.ex.deadline {
                countRequest(c)
                localResponse(c, status: 408, close: true)
            }
        case .connecting, .forwarding, .backoff:
            let t = c.pointee.ex.timeout, idle = c.pointee.ex.idleTimeout
            let started = c.pointee.ex.requestStart
            if (t > 0 && ring.clock(coarse: true) - started > t) || (idle > 0 && now - c.pointee.lastActivity > idle) {
                if c.pointee.ex.responseHeadDone { return abortHTTP(c) }
                if c.pointee.ex.phase == .backoff {
                    ring.cancel(UserData(op: Op.retry, slot: slot(of: c), generation: c.pointee.generation), on: -1, userData: UserData(op: Op.ignore, slot: 0, generation: 0))
                }
                localResponse(c, status: 504, close: true)
            }
        case .local:
            if now - c.pointee.lastActivity > c.pointee.idleTimeout { abortHTTP(c) }
        case .tunnel:
            if now - c.pointee.lastActivity > c.pointee.idleTimeout { control.stats.pointee.idleTimeouts += 1; abortHTTP(c) }
        case .lingering:
            if now > c.pointee.ex.deadline { closeHTTP(c) }
        }
    }
}
