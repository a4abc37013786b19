// HTTP/1.1 messages on their way through: the forwarded request head written when its upstream
// is ready, the response head parsed and rewritten, bodies framed (Content-Length, chunked, until
// close) buffer by buffer as they are sent, never held whole.
import COpenSSL
import CWeirTLS
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
    /// Writes the forwarded request head into a head buffer (with a small body behind it) and
    /// starts sending it: called once the request's upstream connection is ready. `parsed` is the
    /// head when the shard's header table still describes it (the same turn as its parse);
    /// otherwise the head is parsed again where it still lies, at headStart in flow 0's buffer.
    func sendRequestHead(_ c: UnsafeMutablePointer<Connection>, parsed: RequestHead?) {
        guard c.pointee.state == .open, !c.pointee.ex.request.headWritten else { return }
        let flow = c.flow(0)
        guard let out = takeHeadBuffer() else {
            // Every head buffer is being sent: wait for one (served at the end of the loop turn).
            control.stats.pointee.headBuffersExhausted += 1
            return waitForHeadBuffer(c, kind: 0)
        }
        let bid = Int(flow.pointee.head)
        let start = Int(c.pointee.ex.headStart)
        let source = UnsafeRawBufferPointer(start: bufferPointer(bid) + start, count: Int(bufferLength[bid]) - start)
        let head: RequestHead
        if let parsed {
            head = parsed
        } else {
            guard case .complete(let h) = HTTPParser.parseRequest(source, limits: httpListener(c).limits, headers: headers) else {
                releaseHeadBuffer(out)
                return abortHTTP(c)
            }
            head = h
        }
        let route = httpListener(c).actions[Int(c.pointee.ex.route)]
        let prefix = !route.forwarding.prefixReplacement.isEmpty && route.prefixLength > 0 && source[Int(head.target.start)] == UInt8(ascii: "/") ? route.prefixLength : 0
        let context = ForwardContext(clientAddress: clientAddress(c), https: socketConnection(c).pointee.isTLS, requestID: requestID(), upgrade: head.upgrade,
                                     clientCert: clientCertHeader(c, httpListener(c).clientCert))
        guard let n = HeadWriter.writeRequest(head, source: UnsafeRawBufferPointer(rebasing: source[0..<head.headLength]), headers: headers,
                                              rules: route.forwarding, prefixMatchedBytes: prefix, context: context,
                                              into: UnsafeMutableRawBufferPointer(start: headBuffer(out), count: limits.bufferBytes)) else {
            releaseHeadBuffer(out)
            return localResponse(c, status: 431, close: true)
        }
        flow.pointee.outBuffer = out
        flow.pointee.outPointer = headBuffer(out)
        flow.pointee.outLength = Int32(n)
        flow.pointee.outSent = 0
        c.pointee.ex.request = .headWritten
        guard coalesceBody(c, flow, request: true) else { return }
        pumpRequest(c)
    }

    func pumpRequest(_ c: UnsafeMutablePointer<Connection>) {
        let flow = c.flow(0)
        // Nothing goes upstream before the request head (tunnels have sent theirs long ago).
        guard c.pointee.state == .open, !flow.pointee.sending, c.pointee.ex.upstream >= 0,
              c.pointee.ex.request.headWritten || c.pointee.ex.phase == .tunnel else { return }
        let u = upstreams + Int(c.pointee.ex.upstream)
        guard u.pointee.state == .busy else { return }
        if flow.pointee.outSent < flow.pointee.outLength {
            return upstreamSend(c, u, flow.pointee.outPointer! + Int(flow.pointee.outSent), Int(flow.pointee.outLength - flow.pointee.outSent))
        }
        guard let (pointer, count) = nextSegment(c, flow, request: true) else { return }
        if count > 0 {
            if !c.pointee.ex.request.isSent { c.pointee.ex.request = .streaming }
            return upstreamSend(c, u, pointer, count)
        }
        // Nothing left to send.
        if flow.pointee.body == .none && !c.pointee.ex.request.isSent {
            c.pointee.ex.request = .sent(streamed: c.pointee.ex.request == .streaming)
        } else if flow.pointee.body != .none && flow.pointee.sourceEnded && c.pointee.ex.phase != .tunnel {
            // The client ended its side before its body came whole: the upstream holds a
            // request cut short, and no answer can be trusted.
            return abortHTTP(c)
        }
        if c.pointee.ex.phase == .tunnel && flow.pointee.sourceEnded && !flow.pointee.destinationShut {
            flow.pointee.destinationShut = true
            ring.shutdown(fd: u.pointee.fd, how: Int32(SHUT_WR))
            tunnelEndedIfDone(c)
        }
    }

    /// The next body bytes to forward in a direction, framing them as they go: nil on a framing
    /// error (already handled), a count of 0 when there is nothing to send now.
    func nextSegment(_ c: UnsafeMutablePointer<Connection>, _ flow: UnsafeMutablePointer<Flow>, request: Bool) -> (UnsafeMutableRawPointer, Int)? {
        while flow.pointee.segment == 0 {
            guard flow.pointee.body != .none, flow.pointee.queued > 0 else { return (headStorage, 0) }
            let bid = Int(flow.pointee.head)
            let off = Int(flow.pointee.sendOffset)
            let avail = Int(bufferLength[bid]) - off
            if avail == 0 {
                if flow.pointee.queued > 1 { popHead(flow); continue }
                return (headStorage, 0)
            }
            switch flow.pointee.body {
            case .contentLength:
                let n = Int(min(UInt64(avail), flow.pointee.bodyRemaining))
                flow.pointee.bodyRemaining -= UInt64(n)
                if flow.pointee.bodyRemaining == 0 { flow.pointee.body = .none }
                flow.pointee.segment = Int32(n)
            case .chunked:
                // max_body_bytes bounds what clients send; a response body streams through
                // whatever its size (as a Content-Length response does).
                var limits = httpListener(c).limits
                if !request { limits.maxBodyBytes = .max }
                switch flow.pointee.scanner.scan(UnsafeRawBufferPointer(start: bufferPointer(Int(bid)) + off, count: avail), limits: limits) {
                case .needMore: flow.pointee.segment = Int32(avail)
                case .done(let n): flow.pointee.segment = Int32(n); flow.pointee.body = .none
                case .failed(let e):
                    if request {
                        Log.debug("shard \(index): bad chunked request body: \(e)")
                        if c.pointee.ex.responseHeadDone { abortHTTP(c) } else { localResponse(c, status: e.status, close: true) }
                    } else {
                        upstreamFailed(c, .badResponse)
                    }
                    return nil
                }
            case .untilClose:
                flow.pointee.segment = Int32(avail)
            case .none:
                break
            }
        }
        return (bufferPointer(Int(flow.pointee.head)) + Int(flow.pointee.sendOffset), Int(flow.pointee.segment))
    }

    /// A send of `n` bytes on a flow completed: the head waiting in its out buffer goes first,
    /// then body bytes from its queue.
    func credit(_ c: UnsafeMutablePointer<Connection>, _ flow: UnsafeMutablePointer<Flow>, _ f: Int, _ n: Int32) {
        c.pointee.lastActivity = now
        if flow.pointee.outSent < flow.pointee.outLength {
            flow.pointee.outSent += n
            if flow.pointee.outSent >= flow.pointee.outLength { clearOut(flow) }
        } else {
            advance(c, flow, f, n)
        }
    }

    /// `n` body bytes at the head of a flow's queue went out.
    func advance(_ c: UnsafeMutablePointer<Connection>, _ flow: UnsafeMutablePointer<Flow>, _ f: Int, _ n: Int32) {
        guard flow.pointee.head >= 0 else { return }
        flow.pointee.segment -= n
        flow.pointee.sendOffset += n
        countBytes(c, f, Int64(n))
        if flow.pointee.sendOffset >= bufferLength[Int(flow.pointee.head)] && flow.pointee.segment == 0 { popHead(flow) }
    }

    /// Largest body part copied behind a head so both go out in one send.
    static var coalesceLimit: Int { 16 * 1024 }

    /// Appends the body bytes already received (if few) to the head waiting in the out buffer, so
    /// a small message goes out in one send instead of two. A request's bytes stay in its receive
    /// buffer (a retry sends them again); a response's are consumed. False when framing the
    /// body failed (the failure has been answered).
    func coalesceBody(_ c: UnsafeMutablePointer<Connection>, _ flow: UnsafeMutablePointer<Flow>, request: Bool) -> Bool {
        guard flow.pointee.outBuffer >= 0, flow.pointee.body == .contentLength || flow.pointee.body == .chunked,
              flow.pointee.segment == 0, flow.pointee.queued > 0 else { return true }
        let bid = Int(flow.pointee.head)
        let avail = Int(bufferLength[bid]) - Int(flow.pointee.sendOffset)
        guard avail > 0, avail <= Shard.coalesceLimit, avail <= limits.bufferBytes - Int(flow.pointee.outLength) else { return true }
        guard let (pointer, n) = nextSegment(c, flow, request: request) else { return false }
        guard n > 0 else { return true }
        (flow.pointee.outPointer! + Int(flow.pointee.outLength)).copyMemory(from: pointer, byteCount: n)
        flow.pointee.outLength += Int32(n)
        if request {
            flow.pointee.segment = 0
            flow.pointee.sendOffset += Int32(n)
            countBytes(c, 0, Int64(n))
        } else {
            advance(c, flow, 1, Int32(n))
        }
        return true
    }

    func processResponse(_ c: UnsafeMutablePointer<Connection>) {
        let flow = c.flow(1)
        while !c.pointee.ex.responseHeadDone && c.pointee.state == .open {
            // A forwarded 1xx still going out: the final head waits for it.
            guard flow.pointee.outSent >= flow.pointee.outLength, !flow.pointee.sending else { return }
            guard flow.pointee.queued > 0 else {
                // The upstream ended before its final head came whole.
                if flow.pointee.sourceEnded { upstreamFailed(c, .reset) }
                return
            }
            let bid = Int(flow.pointee.head)
            let off = Int(flow.pointee.sendOffset)
            let len = Int(bufferLength[bid])
            if off >= len { popHead(flow); continue }
            let base = bufferPointer(Int(bid)) + off
            let http = httpListener(c)
            switch HTTPParser.parseResponse(UnsafeRawBufferPointer(start: base, count: len - off), requestMethod: c.pointee.ex.method,
                                            limits: http.limits, headers: headers) {
            case .incomplete:
                if flow.pointee.queued > 1 && compact(flow) { continue }
                if flow.pointee.sourceEnded { upstreamFailed(c, .reset) }
                return
            case .failed(let e):
                Log.debug("shard \(index): bad response from upstream: \(e)")
                return upstreamFailed(c, .badResponse)
            case .complete(let rh):
                let source = UnsafeRawBufferPointer(start: base, count: rh.headLength)
                if rh.status < 200 && rh.status != 101 {
                    // 100 Continue and other interim responses go to the client as they are
                    // (not to HTTP/1.0 clients, which do not know them).
                    flow.pointee.sendOffset += Int32(rh.headLength)
                    if c.pointee.ex.minorVersion == 0 { continue }
                    guard let out = takeHeadBuffer() else { return abortHTTP(c) }
                    headBuffer(out).copyMemory(from: base, byteCount: min(rh.headLength, limits.bufferBytes))
                    setOut(flow, buffer: out, count: min(rh.headLength, limits.bufferBytes))
                    return pumpResponse(c)
                }
                let route = http.actions[Int(c.pointee.ex.route)]
                if route.retry.statuses.contains(rh.status) && mayRetry(c, route) {
                    c.pointee.ex.retries += 1
                    detachUpstream(c, reuse: false)
                    return retry(c, backoff: true)
                }
                if rh.status == 101 && !c.pointee.ex.upgrade { return upstreamFailed(c, .badResponse) }
                let tunnel = rh.status == 101
                c.pointee.ex.status = Int32(rh.status)
                c.pointee.ex.upstreamKeepAlive = rh.keepAlive
                if rh.framing == .untilClose || draining { c.pointee.ex.closeAfter = true }
                let connection: HeadWriter.ConnectionHeader = tunnel ? .upgrade
                    : c.pointee.ex.closeAfter || clientHalfClosedAfterThis(c) ? .close : (c.pointee.ex.minorVersion == 0 ? .keepAlive : .none)
                guard let out = takeHeadBuffer() else {
                    control.stats.pointee.headBuffersExhausted += 1
                    return waitForHeadBuffer(c, kind: 1)
                }
                guard let n = HeadWriter.writeResponse(rh, source: source, headers: headers, remove: route.responseRemove, add: route.responseAdd,
                                                       connection: connection,
                                                       into: UnsafeMutableRawBufferPointer(start: headBuffer(out), count: limits.bufferBytes)) else {
                    releaseHeadBuffer(out)
                    return upstreamFailed(c, .badResponse)
                }
                setOut(flow, buffer: out, count: n)
                flow.pointee.sendOffset += Int32(rh.headLength)
                flow.pointee.segment = 0
                switch rh.framing {
                case .none: flow.pointee.body = .none
                case .contentLength(let n): flow.pointee.body = .contentLength; flow.pointee.bodyRemaining = n
                case .chunked: flow.pointee.body = .chunked; flow.pointee.scanner = ChunkedScanner()
                case .untilClose: flow.pointee.body = .untilClose
                }
                if !tunnel && !coalesceBody(c, flow, request: false) { return }
                if tunnel {
                    c.pointee.ex.phase = .tunnel
                    flow.pointee.body = .untilClose
                    c.flow(0).pointee.body = .untilClose
                    c.pointee.idleTimeout = snapshotOf(c).listeners[Int(c.pointee.listenerIndex)].idleTimeoutNanoseconds
                }
                c.pointee.ex.response = .headDone
                if tunnel { pumpRequest(c) }
            }
        }
        pumpResponse(c)
    }

    func pumpResponse(_ c: UnsafeMutablePointer<Connection>) {
        let flow = c.flow(1)
        guard c.pointee.state == .open, !flow.pointee.sending else { return }
        if flow.pointee.outSent < flow.pointee.outLength {
            return downstreamSend(c, flow.pointee.outPointer! + Int(flow.pointee.outSent), Int(flow.pointee.outLength - flow.pointee.outSent))
        }
        guard c.pointee.ex.responseHeadDone else { return processResponse(c) }
        guard let (pointer, count) = nextSegment(c, flow, request: false) else { return }
        if count > 0 { return downstreamSend(c, pointer, count) }
        switch flow.pointee.body {
        case .contentLength, .chunked:
            // Everything that came is sent and the body is not whole: the upstream cut it short.
            if flow.pointee.sourceEnded && c.pointee.ex.phase == .forwarding { abortHTTP(c) }
        case .none:
            if c.pointee.ex.phase == .forwarding || c.pointee.ex.phase == .local { responseComplete(c) }
        case .untilClose:
            guard flow.pointee.sourceEnded else { return }
            if c.pointee.ex.phase == .tunnel {
                if !flow.pointee.destinationShut {
                    flow.pointee.destinationShut = true
                    ring.shutdown(fd: c.pointee.downstreamFD, how: Int32(SHUT_WR))
                }
                tunnelEndedIfDone(c)
            } else {
                flow.pointee.body = .none
                responseComplete(c)
            }
        }
    }

    func tunnelEndedIfDone(_ c: UnsafeMutablePointer<Connection>) {
        guard c.flow(0).pointee.destinationShut && c.flow(1).pointee.destinationShut else { return }
        c.pointee.ex.status = 101
        finishExchangeStats(c)
        detachUpstream(c, reuse: false)
        endEndpoint(c)
        closeHTTP(c)
    }
}

extension Shard {
    /// X-Forwarded-Client-Cert for a request on `c` under the listener's policy: the client's
    /// is forwarded only from an mTLS peer (or always, if so configured), and the peer's element
    /// is appended or set from its certificate, computed once per connection.
    func clientCertHeader(_ c: UnsafeMutablePointer<Connection>, _ policy: ClientCertPolicy) -> ClientCertHeader {
        switch policy.mode {
        case .sanitize: return .remove
        case .always_forward_only: return .keep
        case .forward_only, .append_forward, .sanitize_set: break
        }
        if c.pointee.peerCertLength == -1 {
            var n: Int32 = 0
            let socket = socketConnection(c)
            if socket.pointee.isTLS, let ssl = tlsState(socket).pointee.ssl {
                n = (peerText + slot(of: c) * Shard.peerTextBytes).withMemoryRebound(to: CChar.self, capacity: Shard.peerTextBytes) {
                    weir_xfcc_element(ssl, policy.details, $0, Shard.peerTextBytes)
                }
                // Too long to write (a certificate with very many names): an mTLS peer, but
                // requests go without its element, never with a part of it.
                if n < 0 { n = -2; control.stats.pointee.clientCertTooLong += 1 }
            }
            c.pointee.peerCertLength = Int16(n)
        }
        let n = Int(c.pointee.peerCertLength)
        // No client certificate: the client's is removed in every mode here.
        guard n != 0 else { return .remove }
        let element = UnsafeRawBufferPointer(start: peerText + slot(of: c) * Shard.peerTextBytes, count: max(0, n))
        switch policy.mode {
        case .append_forward: return n > 0 ? .append(element) : .keep
        case .sanitize_set: return n > 0 ? .set(element) : .remove
        default: return .keep
        }
    }
}
