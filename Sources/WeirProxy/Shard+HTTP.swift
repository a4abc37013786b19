// The HTTP/1.1 reverse proxy on a shard. A downstream connection reads requests into flow 0's
// queue of ring buffers and parses each head in place; the request goes to an upstream
// connection lent from this shard's pool for the endpoint the balancer picked; the response
// comes back through flow 1's queue. Heads Weir rewrites are written into a head buffer held only
// while they are sent; bodies are forwarded buffer by buffer, framed by Content-Length or the
// chunked scanner, never held whole. One exchange at a time per connection: pipelined requests
// wait in the queue and are answered in order.
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

enum UpstreamFailure { case reset, badResponse }

extension Shard {
    // MARK: Accepting

    func openHTTP(fd: Int32, listener li: Int) {
        guard let c = takeSlot(fd: fd, listener: li) else { return }
        let listener = snapshot.listeners[li]
        c.pointee.kind = .http
        c.pointee.state = .open
        c.pointee.listenerIndex = Int32(li)
        c.pointee.idleTimeout = listener.idleTimeoutNanoseconds
        fillClientAddress(c, fd: fd)
        if let tls = listener.tls, !startTLS(c, tls) {
            Log.warning("shard \(index): cannot start TLS: \(openSSLErrors())")
            return closeHTTP(c)
        }
        armRecv(c, 0)
    }

    /// Records the client's address as text (for X-Forwarded-For) and its hash (for source_ip).
    func fillClientAddress(_ c: UnsafeMutablePointer<Connection>, fd: Int32) {
        let text = clientText + slot(of: c) * Shard.clientTextBytes
        text[0] = 0
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) } }
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

    @inline(__always) func snapshotOf(_ c: UnsafeMutablePointer<Connection>) -> Snapshot { c.pointee.snapshot!.takeUnretainedValue() }

    @inline(__always) func httpListener(_ c: UnsafeMutablePointer<Connection>) -> HTTPListener {
        snapshotOf(c).listeners[Int(c.pointee.listenerIndex)].http!
    }

    // MARK: Head buffers

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

    // MARK: Queues

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

    // MARK: Requests

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

    /// A new exchange: the connection moves to the current snapshot (a keep-alive connection
    /// follows reloads request by request) and the header timeout starts.
    func beginExchange(_ c: UnsafeMutablePointer<Connection>) {
        let old = snapshotOf(c)
        if old !== snapshot {
            let name = old.listeners[Int(c.pointee.listenerIndex)].name
            if let li = snapshot.listeners.firstIndex(where: { $0.name == name && $0.proto == .http }) {
                c.pointee.snapshot?.release()
                c.pointee.snapshot = Unmanaged.passRetained(snapshot)
                c.pointee.listenerIndex = Int32(li)
            } else {
                // Its listener is gone: serve this request on the old configuration, then close.
                c.pointee.ex.closeAfter = true
            }
        }
        c.pointee.ex.phase = .head
        c.pointee.logLength = 0
        c.pointee.ex.requestStart = monotonicNanoseconds()
        c.pointee.ex.deadline = now + httpListener(c).requestHeaderTimeoutNanoseconds
        if draining { c.pointee.ex.closeAfter = true }
    }

    func countRequest(_ c: UnsafeMutablePointer<Connection>) {
        guard c.pointee.ex.retries == 0 && !c.pointee.ex.freeRetryUsed, c.pointee.listenerSlot >= 0 else { return }
        control.named.listeners[Int(c.pointee.listenerSlot)].requests += 1
    }

    func startRequest(_ c: UnsafeMutablePointer<Connection>, _ head: RequestHead, base: UnsafeMutableRawPointer, offset: Int) {
        countRequest(c)
        let http = httpListener(c)
        if logScratch != nil {
            keepForLog(c, UnsafeRawBufferPointer(start: base, count: head.headLength),
                       method: ByteRangeLike(start: Int(head.methodRange.start), end: Int(head.methodRange.end)),
                       target: ByteRangeLike(start: Int(head.target.start), end: Int(head.target.end)))
        }
        c.pointee.ex.method = head.method
        c.pointee.ex.minorVersion = UInt8(head.minorVersion)
        c.pointee.ex.clientKeepAlive = head.keepAlive
        c.pointee.ex.upgrade = head.upgrade
        c.pointee.ex.hasBody = head.framing != .none
        c.pointee.ex.headStart = Int32(offset)
        c.flow(0).pointee.sendOffset = Int32(offset + head.headLength)
        c.pointee.ex.deadline = 0
        c.pointee.ex.phase = .connecting
        if !head.keepAlive || c.flow(0).pointee.sourceEnded { c.pointee.ex.closeAfter = true }
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
            let closing = c.pointee.ex.closeAfter || c.pointee.ex.hasBody
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

    /// Writes the forwarded request head into a head buffer (with a small body behind it) and
    /// starts sending it: called once the request's upstream connection is ready. `parsed` is the
    /// head when the shard's header table still describes it (the same turn as its parse);
    /// otherwise the head is parsed again where it still lies, at headStart in flow 0's buffer.
    func sendRequestHead(_ c: UnsafeMutablePointer<Connection>, parsed: RequestHead?) {
        guard c.pointee.state == .open, !c.pointee.ex.headWritten else { return }
        let flow = c.flow(0)
        guard let out = takeHeadBuffer() else {
            // Every head buffer is being sent: wait for one (served at the end of the loop turn).
            control.stats.pointee.headBuffersExhausted += 1
            return waitForHeadBuffer(c, kind: 0)
        }
        c.pointee.ex.waitingForBuffer = 0
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
        let context = ForwardContext(clientAddress: clientAddress(c), https: c.pointee.isTLS, requestID: requestID(), upgrade: head.upgrade)
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
        c.pointee.ex.headWritten = true
        guard coalesceBody(c, flow, request: true) else { return }
        pumpRequest(c)
    }

    /// Parks a connection until a head buffer is free: kind 0 to write its request head, 1 to
    /// write its response head.
    func waitForHeadBuffer(_ c: UnsafeMutablePointer<Connection>, kind: UInt8) {
        // Already in the queue (a response head retried on each upstream read while waiting).
        guard c.pointee.ex.waitingForBuffer != kind + 1 else { return }
        c.pointee.ex.waitingForBuffer = kind + 1
        headWaiters.append(SlotRef(slot: slot(of: c), generation: c.pointee.generation, sub: kind)) { [connections] r in
            let w = connections + Int(r.slot)
            return w.pointee.generation == r.generation && w.pointee.state == .open && w.pointee.ex.waitingForBuffer == r.sub + 1
        }
    }

    /// Gives freed head buffers to the connections waiting for them, oldest first.
    func serveHeadWaiters() {
        while headFreeCount > 0, let w = headWaiters.removeFirst() {
            let c = connections + Int(w.slot)
            guard c.pointee.generation == w.generation, c.pointee.state == .open, c.pointee.ex.waitingForBuffer == w.sub + 1 else { continue }
            c.pointee.ex.waitingForBuffer = 0
            if w.sub == 0 { sendRequestHead(c, parsed: nil) } else { processResponse(c) }
        }
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
        let closing = c.pointee.ex.closeAfter || c.pointee.ex.hasBody
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

    // MARK: Upstream connections

    /// Picks an endpoint and lends the request an idle pooled connection to it, or opens one.
    func connectHTTP(_ c: UnsafeMutablePointer<Connection>, parsed: RequestHead? = nil) {
        let snap = snapshotOf(c)
        let ci = Int(c.pointee.clusterIndex)
        let cluster = snap.clusters[ci]
        guard let ep = pickEndpoint(c, snap: snap, hash: c.pointee.ex.hash) else {
            return localResponse(c, status: 503, close: false)
        }
        c.pointee.endpointIndex = Int32(ep)
        let endpoint = cluster.endpoints[ep]
        let pool = snap === snapshot ? endpointSlots[ci][ep] : endpointSlot(cluster: cluster.name, address: endpoint.address)
        c.pointee.endpointSlot = pool
        if pool >= 0 {
            control.named.endpoints[Int(pool)].requests += 1
            control.named.endpoints[Int(pool)].active += 1
        }
        startActive(c)
        if pool >= 0, let u = popIdle(Int(pool)) {
            attach(c, u)
            c.pointee.ex.reused = true
            control.named.endpoints[Int(pool)].poolReuses += 1
            c.pointee.ex.phase = .forwarding
            return sendRequestHead(c, parsed: parsed)
        }
        c.pointee.ex.reused = false
        if pool >= 0 && Int(openCount[Int(pool)]) >= cluster.pool.maxConnections {
            control.stats.pointee.poolOverflows += 1
            return localResponse(c, status: 503, close: false)
        }
        guard upstreamFreeCount > 0 else {
            control.stats.pointee.poolOverflows += 1
            return localResponse(c, status: 503, close: false)
        }
        let fd = Sockets.tcpSocket(for: endpoint.address.family)
        guard fd >= 0 else { return localResponse(c, status: 503, close: false) }
        upstreamFreeCount -= 1
        let idx = Int(upstreamFree[upstreamFreeCount])
        upstreamHighWater = max(upstreamHighWater, idx + 1)
        let u = upstreams + idx
        let gen = u.pointee.generation
        u.pointee = Upstream()
        u.pointee.generation = gen
        u.pointee.state = .connecting
        u.pointee.fd = fd
        u.pointee.pool = pool
        u.pointee.maxRequests = Int32(cluster.pool.maxRequestsPerConnection)
        u.pointee.idleTimeout = cluster.pool.idleTimeoutNanoseconds
        if pool >= 0 { openCount[Int(pool)] += 1 }
        u.pointee.owner = Int32(slot(of: c))
        u.pointee.ownerGeneration = c.pointee.generation
        c.pointee.ex.upstream = Int32(idx)
        u.pointee.addressLength = endpoint.address.fill(&u.pointee.address)
        let t = cluster.connectTimeoutNanoseconds
        u.pointee.connectTimeout = __kernel_timespec(tv_sec: t / 1_000_000_000, tv_nsec: t % 1_000_000_000)
        u.pointee.inflight += 1
        let raw = UnsafeMutableRawPointer(u)
        ring.connect(fd: fd, address: (raw + MemoryLayout<Upstream>.offset(of: \Upstream.address)!).assumingMemoryBound(to: sockaddr.self),
                     length: u.pointee.addressLength,
                     timeout: (raw + MemoryLayout<Upstream>.offset(of: \Upstream.connectTimeout)!).assumingMemoryBound(to: __kernel_timespec.self),
                     userData: UserData(op: Op.upConnect, slot: idx, generation: gen),
                     timeoutUserData: UserData(op: Op.ignore, slot: 0, generation: 0))
    }

    /// The balancer's pick, or (for a connection still on an older snapshot, whose balancer
    /// state is gone) the next endpoint not yet tried.
    func pickEndpoint(_ c: UnsafeMutablePointer<Connection>, snap: Snapshot, hash: UInt64) -> Int? {
        let ci = Int(c.pointee.clusterIndex)
        if snap === snapshot {
            var context = PickContext(hash: hash, random: random)
            let pick = balancers[ci].pick(&context, excluding: c.pointee.exclusions)
            random = context.random
            return pick
        }
        let n = snap.clusters[ci].endpoints.count
        let start = Int(c.pointee.endpointIndex) + 1
        return (0..<n).lazy.map { (start + $0) % n }.first { !c.pointee.exclusions.contains($0) }
    }

    /// The request no longer loads its endpoint (it ended, failed or moves to another).
    func endEndpoint(_ c: UnsafeMutablePointer<Connection>) {
        endActive(c)
        if c.pointee.endpointSlot >= 0 { control.named.endpoints[Int(c.pointee.endpointSlot)].active -= 1 }
        c.pointee.endpointSlot = -1
    }

    func owner(_ u: UnsafeMutablePointer<Upstream>) -> UnsafeMutablePointer<Connection>? {
        guard u.pointee.owner >= 0 else { return nil }
        let c = connections + Int(u.pointee.owner)
        guard c.pointee.generation == u.pointee.ownerGeneration, c.pointee.ex.upstream == Int32(u - upstreams) else { return nil }
        return c
    }

    func attach(_ c: UnsafeMutablePointer<Connection>, _ idx: Int) {
        let u = upstreams + idx
        u.pointee.state = .busy
        u.pointee.owner = Int32(slot(of: c))
        u.pointee.ownerGeneration = c.pointee.generation
        c.pointee.ex.upstream = Int32(idx)
        if u.pointee.recv == .idle { armUpstreamRecv(u) }
    }

    func popIdle(_ pool: Int) -> Int? {
        let head = Int(idleHead[pool])
        guard head >= 0 else { return nil }
        unlinkIdle(upstreams + head)
        return head
    }

    func unlinkIdle(_ u: UnsafeMutablePointer<Upstream>) {
        let pool = Int(u.pointee.pool)
        if u.pointee.prev >= 0 { upstreams[Int(u.pointee.prev)].next = u.pointee.next } else { idleHead[pool] = u.pointee.next }
        if u.pointee.next >= 0 { upstreams[Int(u.pointee.next)].prev = u.pointee.prev }
        u.pointee.prev = -1
        u.pointee.next = -1
        idleCount[pool] -= 1
    }

    /// Gives the connection's upstream back: to the idle pool when `reuse`, else closed.
    func detachUpstream(_ c: UnsafeMutablePointer<Connection>, reuse: Bool) {
        let idx = Int(c.pointee.ex.upstream)
        guard idx >= 0 else { return }
        c.pointee.ex.upstream = -1
        let u = upstreams + idx
        let f0 = c.flow(0)
        var reuse = reuse
        if f0.pointee.sending {
            // A send to this upstream is still in flight: the head buffer it reads is now the
            // upstream's to release.
            f0.pointee.sending = false
            if f0.pointee.outBuffer >= 0 { u.pointee.pendingOut = f0.pointee.outBuffer; f0.pointee.outBuffer = -1 }
            reuse = false
        }
        clearOut(f0)
        u.pointee.owner = -1
        let pool = Int(u.pointee.pool)
        if reuse && pool >= 0 && u.pointee.state == .busy && !u.pointee.ended && !draining
            && Int(idleCount[pool]) < snapshotOf(c).clusters[Int(c.pointee.clusterIndex)].pool.maxIdle {
            u.pointee.state = .idle
            u.pointee.idleSince = now
            u.pointee.prev = -1
            u.pointee.next = idleHead[pool]
            if u.pointee.next >= 0 { upstreams[Int(u.pointee.next)].prev = Int32(idx) }
            idleHead[pool] = Int32(idx)
            idleCount[pool] += 1
            // Its recv stays armed: the upstream closing an idle connection is seen at once.
            if u.pointee.recv == .idle { armUpstreamRecv(u) }
        } else {
            closeUpstream(u)
        }
    }

    func closeUpstream(_ u: UnsafeMutablePointer<Upstream>) {
        guard u.pointee.state != .closing && u.pointee.state != .free else { return }
        if u.pointee.state == .idle { unlinkIdle(u) }
        u.pointee.state = .closing
        u.pointee.owner = -1
        if u.pointee.pool >= 0 { openCount[Int(u.pointee.pool)] -= 1 }
        shutdown(u.pointee.fd, Int32(SHUT_RDWR))
        if u.pointee.inflight > 0 { ring.cancelAll(fd: u.pointee.fd, userData: UserData(op: Op.ignore, slot: 0, generation: 0)) }
        finishUpstream(u)
    }

    func finishUpstream(_ u: UnsafeMutablePointer<Upstream>) {
        guard u.pointee.state == .closing, u.pointee.inflight == 0 else { return }
        close(u.pointee.fd)
        if u.pointee.isTLS {
            let t = upstreamTLS + (u - upstreams)
            if let ssl = t.pointee.ssl { SSL_free(ssl) }
            if t.pointee.sendBuffer >= 0 { releaseHeadBuffer(t.pointee.sendBuffer) }
            t.pointee = TLSState()
        }
        if u.pointee.pendingOut >= 0 { releaseHeadBuffer(u.pointee.pendingOut) }
        let gen = (u.pointee.generation &+ 1) & UserData.generationMask
        u.pointee = Upstream()
        u.pointee.generation = gen
        upstreamFree[upstreamFreeCount] = Int32(u - upstreams)
        upstreamFreeCount += 1
    }

    var upstreamsOpen: Int { limits.maxConnectionsPerShard - upstreamFreeCount }

    func closeIdleUpstreams() {
        for i in 0..<upstreamHighWater where upstreams[i].state == .idle { closeUpstream(upstreams + i) }
    }

    func upstreamTick() {
        for i in 0..<upstreamHighWater {
            let u = upstreams + i
            if u.pointee.state == .idle && (draining || now - u.pointee.idleSince > u.pointee.idleTimeout) { closeUpstream(u) }
        }
    }

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
            if let tls = snapshotOf(c).clusters[Int(c.pointee.clusterIndex)].tls {
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
                    enqueue(flow, bid: Int(bid), length: res)
                }
                flow.pointee.bytes += Int64(res)
                c.pointee.lastActivity = now
                if c.pointee.ex.responseHeadDone { pumpResponse(c) } else { processResponse(c) }
                guard u.pointee.state == .busy, owner(u) == c else { return }
                // TLS close_notify came with the last data: the upstream has ended.
                if u.pointee.ended { return upstreamEnded(c) }
                if u.pointee.recv == .armed && flow.pointee.queued >= queueCap {
                    u.pointee.recv = .cancelling
                    ring.cancel(ud, userData: UserData(op: Op.ignore, slot: 0, generation: 0))
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
        let headPending = flow.pointee.queued > 0 || flow.pointee.sending || c.pointee.ex.waitingForBuffer == 2
        guard c.pointee.ex.responseHeadDone || c.pointee.ex.phase == .tunnel || headPending else { return upstreamFailed(c, .reset) }
        // The final head may be here already, waiting behind a 1xx being sent or for a head
        // buffer: processResponse parses what came and fails only a head cut short.
        flow.pointee.sourceEnded = true
        if c.pointee.ex.waitingForBuffer == 2 { return }
        if c.pointee.ex.responseHeadDone || c.pointee.ex.phase == .tunnel { pumpResponse(c) } else { processResponse(c) }
    }

    // MARK: Sending the request

    func pumpRequest(_ c: UnsafeMutablePointer<Connection>) {
        let flow = c.flow(0)
        // Nothing goes upstream before the request head (tunnels have sent theirs long ago).
        guard c.pointee.state == .open, !flow.pointee.sending, c.pointee.ex.upstream >= 0,
              c.pointee.ex.headWritten || c.pointee.ex.phase == .tunnel else { return }
        let u = upstreams + Int(c.pointee.ex.upstream)
        guard u.pointee.state == .busy else { return }
        if flow.pointee.outSent < flow.pointee.outLength {
            return upstreamSend(c, u, flow.pointee.outPointer! + Int(flow.pointee.outSent), Int(flow.pointee.outLength - flow.pointee.outSent))
        }
        guard let (pointer, count) = nextSegment(c, flow, request: true) else { return }
        if count > 0 {
            c.pointee.ex.bodySent = true
            return upstreamSend(c, u, pointer, count)
        }
        // Nothing left to send.
        if flow.pointee.body == .none { c.pointee.ex.requestSent = true }
        if c.pointee.ex.phase == .tunnel && flow.pointee.sourceEnded && !flow.pointee.destinationShut {
            flow.pointee.destinationShut = true
            shutdown(u.pointee.fd, Int32(SHUT_WR))
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
                        if c.pointee.ex.responseStarted { abortHTTP(c) } else { localResponse(c, status: e.status, close: true) }
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
        c.pointee.lastActivity = now
        if flow.pointee.outSent < flow.pointee.outLength {
            flow.pointee.outSent += res
            if flow.pointee.outSent >= flow.pointee.outLength { clearOut(flow) }
        } else {
            advance(c, flow, 0, res)
        }
        pumpRequest(c)
        rearmIfRoom(c, 0)
    }

    /// `n` body bytes at the head of a flow's queue went out.
    func advance(_ c: UnsafeMutablePointer<Connection>, _ flow: UnsafeMutablePointer<Flow>, _ f: Int, _ n: Int32) {
        guard flow.pointee.head >= 0 else { return }
        flow.pointee.segment -= n
        flow.pointee.sendOffset += n
        countBytes(c, f, Int64(n))
        if flow.pointee.sendOffset >= bufferLength[Int(flow.pointee.head)] && flow.pointee.segment == 0 { popHead(flow) }
    }

    // MARK: The response

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
                    : c.pointee.ex.closeAfter ? .close : (c.pointee.ex.minorVersion == 0 ? .keepAlive : .none)
                guard let out = takeHeadBuffer() else {
                    control.stats.pointee.headBuffersExhausted += 1
                    return waitForHeadBuffer(c, kind: 1)
                }
                c.pointee.ex.waitingForBuffer = 0
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
                c.pointee.ex.responseHeadDone = true
                c.pointee.ex.responseStarted = true
                if tunnel { pumpRequest(c) }
            }
        }
        pumpResponse(c)
    }

    /// Largest body part copied behind a head so both go out in one send.
    static let coalesceLimit = 16 * 1024

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

    func setOut(_ flow: UnsafeMutablePointer<Flow>, buffer: Int32, count: Int) {
        flow.pointee.outBuffer = buffer
        flow.pointee.outPointer = headBuffer(buffer)
        flow.pointee.outLength = Int32(count)
        flow.pointee.outSent = 0
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
                    shutdown(c.pointee.downstreamFD, Int32(SHUT_WR))
                }
                tunnelEndedIfDone(c)
            } else {
                flow.pointee.body = .none
                responseComplete(c)
            }
        default:
            break
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

    func downstreamSend(_ c: UnsafeMutablePointer<Connection>, _ pointer: UnsafeMutableRawPointer, _ count: Int) {
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
        c.pointee.lastActivity = now
        if flow.pointee.outSent < flow.pointee.outLength {
            flow.pointee.outSent += res
            if flow.pointee.outSent >= flow.pointee.outLength { clearOut(flow) }
        } else {
            advance(c, flow, 1, res)
        }
        pumpResponse(c)
        if c.pointee.state == .open { rearmUpstreamIfRoom(c) }
    }

    func finishExchangeStats(_ c: UnsafeMutablePointer<Connection>) {
        guard c.pointee.listenerSlot >= 0 else { return }
        let l = Int(c.pointee.listenerSlot)
        let status = Int(c.pointee.ex.status)
        control.named.listeners[l].countResponse(status: status)
        if c.pointee.ex.local { control.named.listeners[l].localResponses += 1 }
        let elapsed = monotonicNanoseconds() - c.pointee.ex.requestStart
        control.named.listeners[l].latency.record(elapsed)
        logRequest(c, status: status, elapsed: elapsed)
    }

    /// The last response byte went to the client: count it, pool or close the upstream, and
    /// take the next request (or close, if this one said so).
    func responseComplete(_ c: UnsafeMutablePointer<Connection>) {
        finishExchangeStats(c)
        // Passive outlier detection: a 5xx from the endpoint extends its failure streak, any
        // other answer ends it.
        if !c.pointee.ex.local && c.pointee.endpointSlot >= 0 { noteConnect(c, failed: c.pointee.ex.status >= 500) }
        let f0 = c.flow(0), f1 = c.flow(1)
        if c.pointee.ex.upstream >= 0 {
            let u = upstreams + Int(c.pointee.ex.upstream)
            u.pointee.requests += 1
            let spent = u.pointee.maxRequests > 0 && u.pointee.requests >= u.pointee.maxRequests
            let reuse = c.pointee.ex.upstreamKeepAlive && c.pointee.ex.requestSent && !spent && unread(f1) == 0
            detachUpstream(c, reuse: reuse)
        }
        endEndpoint(c)
        dropQueue(f1)
        clearOut(f1)
        f1.pointee.sourceEnded = false
        if c.pointee.ex.closeAfter || f0.pointee.sourceEnded || f0.pointee.body != .none || f0.pointee.sending
            || (c.pointee.ex.hasBody && !c.pointee.ex.requestSent && !c.pointee.ex.local) {
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
    }

    // MARK: Failures, retries, responses Weir makes

    func mayRetry(_ c: UnsafeMutablePointer<Connection>, _ route: Route) -> Bool {
        !c.pointee.ex.bodySent && !c.pointee.ex.responseStarted && c.pointee.ex.retries < Int32(route.retry.attempts)
            && (c.pointee.ex.method.isIdempotent || route.retry.nonIdempotent)
    }

    /// The upstream reset, closed early or answered nonsense before the response reached the client.
    func upstreamFailed(_ c: UnsafeMutablePointer<Connection>, _ failure: UpstreamFailure) {
        if c.pointee.ex.responseStarted || c.pointee.ex.phase == .tunnel { return abortHTTP(c) }
        if failure == .reset { noteConnect(c, failed: true) }
        let reused = c.pointee.ex.reused
        detachUpstream(c, reuse: false)
        let route = httpListener(c).actions[Int(c.pointee.ex.route)]
        if failure == .reset && reused && !c.pointee.ex.freeRetryUsed && !c.pointee.ex.bodySent && c.pointee.ex.method.isIdempotent {
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
        localResponse(c, status: 502, close: c.pointee.ex.bodySent)
    }

    /// Sends the request again from its head, which is still in the receive buffer.
    func retry(_ c: UnsafeMutablePointer<Connection>, backoff: Bool, sameEndpoint: Bool = false) {
        // A 1xx on its way to the client reads flow 1's out buffer: the response cannot start
        // over under it (rare: an interim response, then a failure).
        guard !c.flow(1).pointee.sending else { return abortHTTP(c) }
        c.pointee.ex.waitingForBuffer = 0
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
        c.pointee.ex.responseHeadDone = false
        c.pointee.ex.headWritten = false
        c.pointee.ex.requestSent = false
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

    static let localBodies: [Int: String] = [
        400: "bad request\n", 404: "no route for this request\n", 408: "request header timeout\n",
        413: "request body too large\n", 431: "request header fields too large\n", 501: "not implemented\n",
        502: "upstream reset the connection or sent an invalid response\n",
        503: "no upstream available (unhealthy, unreachable or over its connection limit)\n",
        504: "upstream timed out\n", 505: "HTTP version not supported\n",
    ]

    /// A response Weir makes (the statuses in `localBodies`).
    func localResponse(_ c: UnsafeMutablePointer<Connection>, status: Int, close: Bool) {
        let closing = close || [400, 408, 413, 431, 501, 505].contains(status)
        localCopy(c, status: status, bytes: LocalResponses.bytes(status: status, close: closing || c.pointee.ex.closeAfter), close: closing)
    }

    func localCopy(_ c: UnsafeMutablePointer<Connection>, status: Int, bytes: [UInt8], close: Bool) {
        guard let out = takeHeadBuffer() else { control.stats.pointee.headBuffersExhausted += 1; return abortHTTP(c) }
        let n = min(bytes.count, limits.bufferBytes)
        bytes.withUnsafeBytes { headBuffer(out).copyMemory(from: $0.baseAddress!, byteCount: n) }
        writeLocal(c, status: status, pointer: headBuffer(out), count: n, buffer: out, close: close)
    }

    func writeLocal(_ c: UnsafeMutablePointer<Connection>, status: Int, pointer: UnsafeMutableRawPointer, count: Int, buffer: Int32, close: Bool) {
        guard c.pointee.state == .open else { return releaseHeadBuffer(buffer) }
        let f0 = c.flow(0), f1 = c.flow(1)
        if f1.pointee.sending {
            // A 1xx is on its way and reads flow 1's out buffer: this response cannot follow
            // it cleanly, so the connection ends (its buffers go when the send completes).
            releaseHeadBuffer(buffer)
            return abortHTTP(c)
        }
        detachUpstream(c, reuse: false)
        endEndpoint(c)
        c.pointee.ex.waitingForBuffer = 0
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
        c.pointee.ex.local = true
        c.pointee.ex.responseHeadDone = true
        c.pointee.ex.responseStarted = true
        c.pointee.ex.phase = .local
        if close || (c.pointee.ex.hasBody && !c.pointee.ex.requestSent) { c.pointee.ex.closeAfter = true }
        if c.pointee.ex.closeAfter { f0.pointee.body = .none }
        pumpResponse(c)
    }

    /// Done with this client: our side is shut after the last response; what it still sends
    /// is read and dropped for a moment, so it sees the response rather than a reset.
    func lingerClose(_ c: UnsafeMutablePointer<Connection>) {
        let f0 = c.flow(0)
        shutdown(c.pointee.downstreamFD, Int32(SHUT_WR))
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
        control.stats.pointee.completed += 1
        if c.pointee.inflight > 0 {
            shutdown(c.pointee.downstreamFD, Int32(SHUT_RDWR))
            ring.cancelAll(fd: c.pointee.downstreamFD, userData: UserData(op: Op.ignore, slot: 0, generation: 0))
            if c.pointee.ex.phase == .backoff {
                ring.cancel(UserData(op: Op.retry, slot: slot(of: c), generation: c.pointee.generation), userData: UserData(op: Op.ignore, slot: 0, generation: 0))
            }
        }
        finishIfIdle(c)
    }

    func abortHTTP(_ c: UnsafeMutablePointer<Connection>) {
        detachUpstream(c, reuse: false)
        if c.pointee.inflight > 0 && c.pointee.ex.phase == .backoff {
            ring.cancel(UserData(op: Op.retry, slot: slot(of: c), generation: c.pointee.generation), userData: UserData(op: Op.ignore, slot: 0, generation: 0))
        }
        abort(c)
    }

    // MARK: Downstream reads

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
                enqueue(flow, bid: Int(bid), length: res)
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
                ring.cancel(ud, userData: UserData(op: Op.ignore, slot: 0, generation: 0))
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
                // is whole, then close.
                if flow.pointee.body != .none { abortHTTP(c) } else { c.pointee.ex.closeAfter = true }
            }
        case -ENOBUFS:
            starve(c, 0)
        case -ECANCELED:
            rearmIfRoom(c, 0)
        default:
            abortHTTP(c)
        }
    }

    func processRequestOrClose(_ c: UnsafeMutablePointer<Connection>) {
        if c.pointee.ex.phase == .lingering { return closeHTTP(c) }
        processRequest(c)
    }

    // MARK: Timeouts

    func httpTick(_ c: UnsafeMutablePointer<Connection>) {
        switch c.pointee.ex.phase {
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
            if (t > 0 && monotonicNanoseconds(coarse: true) - started > t) || (idle > 0 && now - c.pointee.lastActivity > idle) {
                if c.pointee.ex.responseStarted { return abortHTTP(c) }
                if c.pointee.ex.phase == .backoff {
                    ring.cancel(UserData(op: Op.retry, slot: slot(of: c), generation: c.pointee.generation), userData: UserData(op: Op.ignore, slot: 0, generation: 0))
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

/// The responses Weir makes for errors, built once.
enum LocalResponses {
    static let table: [Int: ([UInt8], [UInt8])] = {
        var t: [Int: ([UInt8], [UInt8])] = [:]
        for (status, body) in Shard.localBodies {
            let b = Array(body.utf8)
            t[status] = (Compiler.responseBytes(status: status, body: b, close: false), Compiler.responseBytes(status: status, body: b, close: true))
        }
        return t
    }()

    static func bytes(status: Int, close: Bool) -> [UInt8] {
        let pair = table[status] ?? table[502]!
        return close ? pair.1 : pair.0
    }
}
