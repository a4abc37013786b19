// One request and its response: route, pick, retries (route retries and the free retry on a
// pooled connection the upstream closed), responses Weir makes, and the end of the exchange
// (stats, access log, keep-alive or close).
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

/// Who is to blame when an exchange fails upstream (it decides retries and the status).
enum UpstreamFailure { case reset, badResponse }

/// Where an HTTP connection is in its current exchange.
enum HTTPPhase: UInt8 {
    /// Waiting for a request (keep-alive).
    case idle
    /// Some bytes of a request head are here, not all.
    case head
    /// Routed and waiting for an upstream connection.
    case connecting
    /// The request is going upstream and the response coming back.
    case forwarding
    /// Waiting out the backoff before a retry.
    case backoff
    /// Sending a response Weir made.
    case local
    /// After a 101: bytes flow both ways until both sides close.
    case tunnel
    /// Told the client Connection: close and shut our write side; discarding what it still sends.
    case lingering
}

/// One HTTP exchange on a downstream connection (reset for each request).
struct HTTPExchange {
    var phase = HTTPPhase.idle
    /// The upstream connection (Shard.upstreams slot) serving this request, or -1.
    var upstream: Int32 = -1
    var route: Int32 = -1
    var method = Method.other
    var minorVersion: UInt8 = 1
    var closeAfter = false
    var upgrade = false
    var hasBody = false
    /// Where the request head starts in flow 0's head buffer (kept until a retry is impossible).
    var headStart: Int32 = 0
    var requestStart: Int64 = 0
    /// Request header timeout while `head`, lingering limit while `lingering`.
    var deadline: Int64 = 0
    var timeout: Int64 = 0
    var idleTimeout: Int64 = 0
    var status: Int32 = 0
    /// A response Weir makes is being sent (its phase says so; no flag repeats it).
    var isLocal: Bool { phase == .local }
    /// How far this attempt's request has gone upstream, and how far its response has come.
    var request = RequestProgress.unwritten
    var response = ResponseProgress.awaitingHead
    /// The final response head is written for the client (the upstream's, rewritten, or one Weir
    /// made): a failure now can only cut the connection.
    var responseHeadDone: Bool { response == .headDone }
    var upstreamKeepAlive = false
    var reused = false
    var freeRetryUsed = false
    var retries: Int32 = 0
    /// The balancer's hash for this request (header, cookie, path or the client's address).
    var hash: UInt64 = 0
}

/// How far the request of the current attempt has gone upstream (a retry starts it over).
enum RequestProgress: Equatable {
    /// No forwarded head yet: no upstream connection is ready.
    case unwritten
    /// The upstream is ready; every head buffer is taken (the shard's head waiters hold a SlotRef).
    case waitingForHeadBuffer
    /// The forwarded head is written (with a small body copied behind it) and going out.
    case headWritten
    /// Body bytes from the client's queue went upstream: they are gone, so no retry can send
    /// this request again.
    case streaming
    /// All of it went; `streamed` keeps whether body bytes were consumed on the way.
    case sent(streamed: Bool)

    var headWritten: Bool {
        switch self {
        case .unwritten, .waitingForHeadBuffer: false
        case .headWritten, .streaming, .sent: true
        }
    }

    var isSent: Bool { if case .sent = self { true } else { false } }

    /// Body bytes went upstream that the client's queue no longer holds.
    var bodyStreamed: Bool {
        switch self {
        case .streaming: true
        case .sent(let streamed): streamed
        default: false
        }
    }
}

/// How far the response has come: the final head is parsed and rewritten for the client once.
enum ResponseProgress: Equatable {
    case awaitingHead
    /// The final head is here; every head buffer is taken (a SlotRef waits in head waiters).
    case waitingForHeadBuffer
    case headDone
}

extension Shard {
    /// normalize_path: the target made canonical in place (PathNormalizer). A shorter target
    /// leaves a gap before " HTTP/1.1": the method, space and target move right over it, so the
    /// head starts that much later and still ends where it did (the body after it stays put),
    /// and the head is parsed again at its new start (false, a 400, only if that parse fails).
    func normalizeTarget(_ head: inout RequestHead, _ base: inout UnsafeMutableRawPointer, _ offset: inout Int, _ http: HTTPListener) -> Bool {
        let te = Int(head.target.end)
        // The path: the whole origin-form target, or what follows the authority of an
        // absolute-form one (routes match that path too, and it is forwarded as it stands).
        let ps = head.authorityAndPathStart(UnsafeRawBufferPointer(start: base, count: head.headLength)).pathStart
        switch PathNormalizer.normalize((base + ps).assumingMemoryBound(to: UInt8.self), count: te - ps) {
        case .unchanged: return true
        case .normalized(let n):
            let saved = (te - ps) - n
            guard saved > 0 else { return true }  // the same length: every range still holds
            // Left of the gap, right-aligned onto it: method, space, the new target.
            (base + saved).copyMemory(from: base, byteCount: ps + n)
            base += saved
            offset += saved
            guard case .complete(let h) = HTTPParser.parseRequest(UnsafeRawBufferPointer(start: base, count: head.headLength - saved),
                                                                limits: http.limits, headers: headers) else { return false }
            head = h
            return true
        }
    }

    func countRequest(_ c: UnsafeMutablePointer<Connection>) {
        guard c.pointee.ex.retries == 0 && !c.pointee.ex.freeRetryUsed, c.pointee.listenerSlot >= 0 else { return }
        control.named.listeners[Int(c.pointee.listenerSlot)].requests += 1
    }

    func startRequest(_ c: UnsafeMutablePointer<Connection>, _ head: RequestHead, base: UnsafeMutableRawPointer, offset: Int) {
        countRequest(c)
        let http = httpListener(c)
        var head = head, base = base, offset = offset
        if http.normalizesPath && !normalizeTarget(&head, &base, &offset, http) {
            return localResponse(c, status: 400, close: true)
        }
        if logScratch != nil {
            keepForLog(c, UnsafeRawBufferPointer(start: base, count: head.headLength),
                       method: ByteRangeLike(start: Int(head.methodRange.start), end: Int(head.methodRange.end)),
                       target: ByteRangeLike(start: Int(head.target.start), end: Int(head.target.end)))
        }
        c.pointee.ex.method = head.method
        c.pointee.ex.minorVersion = UInt8(head.minorVersion)
        c.pointee.ex.upgrade = head.upgrade
        c.pointee.ex.hasBody = head.framing != .none
        c.pointee.ex.headStart = Int32(offset)
        c.flow(0).pointee.sendOffset = Int32(offset + head.headLength)
        c.pointee.ex.deadline = 0
        c.pointee.ex.phase = .connecting
        if !head.keepAlive { c.pointee.ex.closeAfter = true }
        let source = UnsafeRawBufferPointer(start: base, count: head.headLength)
        guard let ri = http.routes.firstMatch(head, source: source, headers: headers) else {
            return localResponse(c, status: 404, close: c.pointee.ex.hasBody)
        }
        c.pointee.ex.route = Int32(ri)
        let route = http.actions[ri]
        c.pointee.ex.timeout = route.timeoutNanoseconds
        c.pointee.ex.idleTimeout = route.idleTimeoutNanoseconds
        let ci: Int
        switch route.target {
        case .cluster(let i): ci = i
        case .weighted(let weights): ci = weights.pick(random.next())
        case .direct(let status, let keepAlive, let close):
            let closing = c.pointee.ex.closeAfter || c.pointee.ex.hasBody || clientHalfClosedAfterThis(c)
            return localCopy(c, status: status, bytes: closing ? close : keepAlive, close: closing)
        case .redirect(let r):
            return redirect(c, r, route: route, head: head, source: source)
        }
        c.pointee.clusterIndex = Int32(ci)
        let cluster = snapshotOf(c).clusters[ci]
        if cluster.balancer.usesHash { c.pointee.ex.hash = requestHash(route.hashKey ?? cluster.options.hashKey, c, head, source) }
        let flow = c.flow(0)
        flow.pointee.segment = 0
        switch head.framing {
        case .none, .untilClose: flow.pointee.body = .none
        case .contentLength(let n): flow.pointee.body = .contentLength; flow.pointee.bodyRemaining = n
        case .chunked: flow.pointee.body = .chunked; flow.pointee.scanner = ChunkedScanner()
        }
        // The forwarded head is written when an upstream connection is ready (at once if the
        // pool has one), so no head buffer is held while a connect is in flight.
        connectHTTP(c, parsed: head)
    }

    /// 16 hex digits, unique enough to follow one request through logs.
    func requestID() -> UnsafeRawBufferPointer {
        requestCounter &+= 1
        var v = random.next() ^ requestCounter
        let hex: StaticString = "0123456789abcdef"
        for i in 0..<16 { scratch[15 - i] = hex.utf8Start[Int(v & 15)]; v >>= 4 }
        return UnsafeRawBufferPointer(start: scratch, count: 16)
    }

    func requestHash(_ key: HashKey, _ c: UnsafeMutablePointer<Connection>, _ head: RequestHead, _ src: UnsafeRawBufferPointer) -> UInt64 {
        func bytesEqualIgnoringCase(_ r: ByteRange, _ lower: [UInt8]) -> Bool {
            guard r.count == lower.count else { return false }
            for k in 0..<r.count where src[Int(r.start) + k] | 0x20 != lower[k] | 0x20 { return false }
            return true
        }
        func hash(_ start: Int, _ end: Int) -> UInt64 { XXHash64.hash(UnsafeRawBufferPointer(rebasing: src[start..<end])) }
        switch key {
        case .sourceIP: return c.pointee.hash
        case .path:
            var e = Int(head.target.start)
            while e < Int(head.target.end) && src[e] != UInt8(ascii: "?") { e += 1 }
            return hash(Int(head.target.start), e)
        case .header(let name):
            for i in 0..<headers.count where bytesEqualIgnoringCase(headers.name(i), name) {
                return hash(Int(headers.value(i).start), Int(headers.value(i).end))
            }
            return 0
        case .cookie(let name):
            for i in 0..<headers.count where bytesEqualIgnoringCase(headers.name(i), Array("cookie".utf8)) {
                let v = headers.value(i)
                var p = Int(v.start)
                while p < Int(v.end) {
                    while p < Int(v.end) && (src[p] == 32 || src[p] == UInt8(ascii: ";")) { p += 1 }
                    var q = p
                    while q < Int(v.end) && src[q] != UInt8(ascii: ";") { q += 1 }
                    if q - p > name.count && src[p + name.count] == UInt8(ascii: "=") {
                        var same = true
                        for k in 0..<name.count where src[p + k] != name[k] { same = false; break }
                        if same { return hash(p + name.count + 1, q) }
                    }
                    p = q
                }
            }
            return 0
        }
    }

    func redirect(_ c: UnsafeMutablePointer<Connection>, _ r: Redirect, route: Route, head: RequestHead, source: UnsafeRawBufferPointer) {
        guard let out = takeHeadBuffer() else { return localResponse(c, status: 503, close: true) }
        let closing = c.pointee.ex.closeAfter || c.pointee.ex.hasBody || clientHalfClosedAfterThis(c)
        let buf = UnsafeMutableRawBufferPointer(start: headBuffer(out), count: limits.bufferBytes)
        var n = 0
        func put(_ bytes: UnsafeRawBufferPointer) {
            guard n + bytes.count <= buf.count else { return }
            buf.baseAddress!.advanced(by: n).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            n += bytes.count
        }
        func put(_ s: String) { var s = s; s.withUTF8 { put(UnsafeRawBufferPointer($0)) } }
        func put(_ a: [UInt8]) { a.withUnsafeBytes { put($0) } }
        put("HTTP/1.1 \(r.status) \(Compiler.reason(r.status))\r\nLocation: ")
        put(r.scheme ?? Array("http".utf8)); put("://")
        if let h = r.host { put(h) } else if let h = head.host { put(UnsafeRawBufferPointer(rebasing: source[Int(h.start)..<Int(h.end)])) }
        let target = UnsafeRawBufferPointer(rebasing: source[Int(head.target.start)..<Int(head.target.end)])
        if let p = r.path { put(p) }
        else if let p = r.prefix, route.prefixLength <= target.count, target.first == UInt8(ascii: "/") {
            put(p); put(UnsafeRawBufferPointer(rebasing: target[route.prefixLength...]))
        } else { put(target) }
        put(closing ? "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" : "\r\nContent-Length: 0\r\n\r\n")
        writeLocal(c, status: r.status, pointer: headBuffer(out), count: n, buffer: out, close: closing)
    }

    /// The last response byte went to the client: count it, pool or close the upstream, and
    /// take the next request (or close, if this one said so).
    func responseComplete(_ c: UnsafeMutablePointer<Connection>) {
        finishExchangeStats(c)
        // Passive outlier detection: a 5xx from the endpoint extends its failure streak, any
        // other answer ends it.
        if !c.pointee.ex.isLocal && c.pointee.endpointSlot >= 0 { noteConnect(c, failed: c.pointee.ex.status >= 500) }
        let f0 = c.flow(0), f1 = c.flow(1)
        if c.pointee.ex.upstream >= 0 {
            let u = upstreams + Int(c.pointee.ex.upstream)
            u.pointee.requests += 1
            let spent = u.pointee.maxRequests > 0 && u.pointee.requests >= u.pointee.maxRequests
            let reuse = c.pointee.ex.upstreamKeepAlive && c.pointee.ex.request.isSent && !spent && unread(f1) == 0
            detachUpstream(c, reuse: reuse)
        }
        endEndpoint(c)
        if c.pointee.carrier == .h2Stream { return h2ExchangeDone(c) }
        dropQueue(f1)
        clearOut(f1)
        f1.pointee.sourceEnded = false
        // A client that half-closed still gets an answer to every whole request it sent first:
        // processRequest below closes once none is left.
        if c.pointee.ex.closeAfter || f0.pointee.body != .none || f0.pointee.sending
            || (c.pointee.ex.hasBody && !c.pointee.ex.request.isSent && !c.pointee.ex.isLocal) {
            return lingerClose(c)
        }
        clearOut(f0)
        f0.pointee.segment = 0
        f1.pointee.body = .none
        c.pointee.ex = HTTPExchange()
        c.pointee.exclusions = Exclusions()
        c.pointee.attempts = 0
        c.pointee.lastActivity = now
        processRequest(c)
        // A recv cancelled at the queue cap was left idle; with the queue drained by local
        // answers to pipelined requests, nothing else would re-arm it.
        if c.pointee.state == .open && c.pointee.ex.phase != .lingering { rearmIfRoom(c, 0) }
    }

    func finishExchangeStats(_ c: UnsafeMutablePointer<Connection>) {
        guard c.pointee.listenerSlot >= 0 else { return }
        let l = Int(c.pointee.listenerSlot)
        let status = Int(c.pointee.ex.status)
        control.named.listeners[l].countResponse(status: status)
        if c.pointee.ex.isLocal { control.named.listeners[l].localResponses += 1 }
        let elapsed = ring.clock(coarse: false) - c.pointee.ex.requestStart
        control.named.listeners[l].latency.record(elapsed)
        logRequest(c, status: status, elapsed: elapsed)
    }

    /// A send to the client carries bytes of flow 1 (its out buffer or queue), which a new
    /// response must not replace under it. TLS's own records (handshake, session tickets) carry
    /// none: a response may be put in place behind them, and goes out when they are sent.
    func responseBytesInFlight(_ c: UnsafeMutablePointer<Connection>) -> Bool {
        guard c.flow(1).pointee.sending else { return false }
        return !c.pointee.isTLS || tlsState(c).pointee.credit > 0
    }

    /// The client half-closed and sent nothing after this request: its answer is the last, and
    /// says Connection: close (RFC 9112 section 9.6).
    func clientHalfClosedAfterThis(_ c: UnsafeMutablePointer<Connection>) -> Bool {
        let f0 = c.flow(0)
        // Bytes framed as this request's body but not yet sent still count in unread.
        return f0.pointee.sourceEnded && f0.pointee.body == .none && unread(f0) - Int(f0.pointee.segment) == 0
    }

    func mayRetry(_ c: UnsafeMutablePointer<Connection>, _ route: Route) -> Bool {
        !c.pointee.ex.request.bodyStreamed && !c.pointee.ex.responseHeadDone && c.pointee.ex.retries < Int32(route.retry.attempts)
            && (c.pointee.ex.method.isIdempotent || route.retry.nonIdempotent)
    }

    /// The upstream reset, closed early or answered nonsense before the response reached the client.
    func upstreamFailed(_ c: UnsafeMutablePointer<Connection>, _ failure: UpstreamFailure) {
        if c.pointee.ex.responseHeadDone || c.pointee.ex.phase == .tunnel { return abortHTTP(c) }
        if failure == .reset { noteConnect(c, failed: true) }
        let reused = c.pointee.ex.reused
        detachUpstream(c, reuse: false)
        let route = httpListener(c).actions[Int(c.pointee.ex.route)]
        if failure == .reset && reused && !c.pointee.ex.freeRetryUsed && !c.pointee.ex.request.bodyStreamed && c.pointee.ex.method.isIdempotent {
            // A pooled connection the upstream had just closed: try once more on a fresh one,
            // without counting it as a route retry.
            c.pointee.ex.freeRetryUsed = true
            if c.pointee.listenerSlot >= 0 { control.named.listeners[Int(c.pointee.listenerSlot)].poolRetries += 1 }
            return retry(c, backoff: false, sameEndpoint: true)
        }
        if failure == .reset && route.retry.onReset && mayRetry(c, route) {
            c.pointee.ex.retries += 1
            return retry(c, backoff: true)
        }
        localResponse(c, status: 502, close: c.pointee.ex.request.bodyStreamed)
    }

    /// Sends the request again from its head, which is still in the receive buffer.
    func retry(_ c: UnsafeMutablePointer<Connection>, backoff: Bool, sameEndpoint: Bool = false) {
        // A 1xx on its way to the client reads flow 1's out buffer: the response cannot start
        // over under it (rare: an interim response, then a failure).
        guard !responseBytesInFlight(c) else { return abortHTTP(c) }
        if !sameEndpoint {
            if c.pointee.listenerSlot >= 0 { control.named.listeners[Int(c.pointee.listenerSlot)].retries += 1 }
            c.pointee.exclusions.insert(Int(c.pointee.endpointIndex))
        }
        endEndpoint(c)
        let f0 = c.flow(0), f1 = c.flow(1)
        clearOut(f0)
        f0.pointee.sendOffset = c.pointee.ex.headStart
        f0.pointee.body = .none
        f0.pointee.segment = 0
        dropQueue(f1)
        clearOut(f1)
        f1.pointee.body = .none
        f1.pointee.sourceEnded = false
        c.pointee.ex.response = .awaitingHead
        c.pointee.ex.request = .unwritten
        c.pointee.ex.upstreamKeepAlive = false
        c.pointee.ex.status = 0
        let route = httpListener(c).actions[Int(c.pointee.ex.route)]
        if backoff && route.retry.backoffNanoseconds > 0 {
            // Backoff grows with the attempt, with up to 50% jitter.
            let base = route.retry.backoffNanoseconds * Int64(c.pointee.ex.retries)
            let t = base + Int64(random.next() % UInt64(base / 2 + 1))
            c.pointee.connectTimeout = __kernel_timespec(tv_sec: t / 1_000_000_000, tv_nsec: t % 1_000_000_000)
            c.pointee.ex.phase = .backoff
            c.pointee.inflight += 1
            let p = (UnsafeMutableRawPointer(c) + MemoryLayout<Connection>.offset(of: \Connection.connectTimeout)!).assumingMemoryBound(to: __kernel_timespec.self)
            ring.timeout(p, userData: UserData(op: Op.retry, slot: slot(of: c), generation: c.pointee.generation))
            return
        }
        c.pointee.ex.phase = .head
        processRequest(c)
    }

    func onRetryTimer(_ ud: UserData) {
        let c = connections + ud.slot
        precondition(c.pointee.generation == ud.generation, "a slot is reused only after its last completion")
        c.pointee.inflight -= 1
        if c.pointee.state != .open { return finishIfIdle(c) }
        guard c.pointee.ex.phase == .backoff else { return }
        c.pointee.ex.phase = .head
        processRequest(c)
    }


    /// A response Weir makes (the statuses in `LocalResponses.bodies`).
    func localResponse(_ c: UnsafeMutablePointer<Connection>, status: Int, close: Bool) {
        // A request whose body did not go out whole leaves the connection's framing unknown to
        // the client's next request: Weir closes after answering, and says so.
        let closing = close || [400, 408, 413, 431, 501, 505].contains(status) || (c.pointee.ex.hasBody && !c.pointee.ex.request.isSent)
        // From memory of its own, not a head buffer: an answer for an overload (502, 503, 504)
        // must not fail for want of one, as it did when the head buffers ran out.
        let bytes = LocalResponses.bytes(status: status, close: closing || c.pointee.ex.closeAfter || clientHalfClosedAfterThis(c))
        writeLocal(c, status: status, pointer: UnsafeMutableRawPointer(mutating: bytes.baseAddress!), count: bytes.count, buffer: -1, close: closing)
    }

    func localCopy(_ c: UnsafeMutablePointer<Connection>, status: Int, bytes: [UInt8], close: Bool) {
        guard let out = takeHeadBuffer() else { control.stats.pointee.headBuffersExhausted += 1; return abortHTTP(c) }
        let n = min(bytes.count, limits.bufferBytes)
        bytes.withUnsafeBytes { headBuffer(out).copyMemory(from: $0.baseAddress!, byteCount: n) }
        writeLocal(c, status: status, pointer: headBuffer(out), count: n, buffer: out, close: close)
    }

    /// `buffer`: the head buffer holding the bytes, or -1 when they live elsewhere for good.
    func writeLocal(_ c: UnsafeMutablePointer<Connection>, status: Int, pointer: UnsafeMutableRawPointer, count: Int, buffer: Int32, close: Bool) {
        guard c.pointee.state == .open else { if buffer >= 0 { releaseHeadBuffer(buffer) }; return }
        let f0 = c.flow(0), f1 = c.flow(1)
        if responseBytesInFlight(c) {
            // A 1xx is on its way and reads flow 1's out buffer: this response cannot follow
            // it cleanly, so the connection ends (its buffers go when the send completes).
            if buffer >= 0 { releaseHeadBuffer(buffer) }
            return abortHTTP(c)
        }
        detachUpstream(c, reuse: false)
        endEndpoint(c)
        if c.pointee.ex.request == .waitingForHeadBuffer { c.pointee.ex.request = .unwritten }
        clearOut(f0)
        dropQueue(f1)
        clearOut(f1)
        f1.pointee.outBuffer = buffer
        f1.pointee.outPointer = pointer
        f1.pointee.outLength = Int32(count)
        f1.pointee.outSent = 0
        f1.pointee.body = .none
        f1.pointee.segment = 0
        c.pointee.ex.status = Int32(status)
        c.pointee.ex.response = .headDone
        c.pointee.ex.phase = .local
        if close || (c.pointee.ex.hasBody && !c.pointee.ex.request.isSent) { c.pointee.ex.closeAfter = true }
        if c.pointee.ex.closeAfter { f0.pointee.body = .none }
        pumpResponse(c)
    }
}

/// The responses Weir makes for errors, built once.
enum LocalResponses {
    static let bodies: [Int: String] = [
        400: "bad request\n", 404: "no route for this request\n", 408: "request header timeout\n",
        413: "request body too large\n", 431: "request header fields too large\n", 501: "not implemented\n",
        502: "upstream reset the connection or sent an invalid response\n",
        503: "no upstream available (unhealthy, unreachable or over its connection limit)\n",
        504: "upstream timed out\n", 505: "HTTP version not supported\n",
    ]

    /// Each response with and without Connection: close, in memory allocated once for the life
    /// of the process, so a send may read it in place.
    static let table: [Int: (UnsafeRawBufferPointer, UnsafeRawBufferPointer)] = {
        func stable(_ bytes: [UInt8]) -> UnsafeRawBufferPointer {
            let p = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 8)
            p.copyBytes(from: bytes)
            return UnsafeRawBufferPointer(p)
        }
        var t: [Int: (UnsafeRawBufferPointer, UnsafeRawBufferPointer)] = [:]
        for (status, body) in LocalResponses.bodies {
            let b = Array(body.utf8)
            t[status] = (stable(Compiler.responseBytes(status: status, body: b, close: false)), stable(Compiler.responseBytes(status: status, body: b, close: true)))
        }
        return t
    }()

    static func bytes(status: Int, close: Bool) -> UnsafeRawBufferPointer {
        let pair = table[status] ?? table[502]!
        return close ? pair.1 : pair.0
    }
}
