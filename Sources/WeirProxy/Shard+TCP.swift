// TCP passthrough on a shard: accept, pick an endpoint, connect (with a linked timeout and
// retries on the next endpoint), then copy both directions through the provided-buffer ring,
// propagating half-close.
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
    func openConnection(fd: Int32, listener li: Int) {
        guard let c = takeSlot(fd: fd, listener: li) else { return }
        let listener = snapshot.listeners[li]
        c.pointee.state = .connecting
        c.pointee.idleTimeout = listener.idleTimeoutNanoseconds
        if let tls = listener.tls {
            // Terminated TLS: the handshake runs while the upstream connects.
            guard startTLS(c, tls) else { return abort(c) }
            armRecv(c, 0)
        }
        if !listener.sniRoutes.isEmpty {
            // Route by the ClientHello's server name: read it first, connect after.
            c.pointee.state = .peeking
            c.pointee.listenerIndex = Int32(li)
            c.pointee.helloDeadline = now + listener.clientHelloTimeoutNanoseconds
            armRecv(c, 0)
            return
        }
        let ci = listener.clusterWeights.map { $0.pick(random.next()) } ?? listener.clusterIndex
        c.pointee.clusterIndex = Int32(ci)
        if snapshot.clusters[ci].balancer.usesHash { c.pointee.hash = sourceIPHash(fd) }
        startConnect(c, slot: slot(of: c))
    }

    /// Reads the server name from the ClientHello queued on flow 0 (without consuming it: the
    /// bytes go upstream untouched) and connects to the cluster of the first route that fits.
    func helloArrived(_ c: UnsafeMutablePointer<Connection>) {
        let flow = c.flow(0)
        while true {
            // Closed before a byte came (a port scan, a TCP health check): nothing to route.
            guard flow.pointee.queued > 0 else {
                if flow.pointee.sourceEnded { abort(c) }
                return
            }
            let bid = Int(flow.pointee.head)
            let off = Int(flow.pointee.sendOffset)
            let len = Int(bufferLength[bid])
            let buf = UnsafeRawBufferPointer(start: bufferPointer(bid) + off, count: len - off)
            var name: ByteRange? = nil
            switch ClientHello.parse(buf, limit: buffers.bufferBytes) {
            case .incomplete:
                if flow.pointee.queued > 1 && compact(flow) { continue }
                if len - off < buffers.bufferBytes && !flow.pointee.sourceEnded { return }
            case .notTLS: break
            case .hello(let n): name = n
            }
            let snap = c.pointee.snapshot!.takeUnretainedValue()
            let routes = snap.listeners[Int(c.pointee.listenerIndex)].sniRoutes
            guard let route = routes.first(where: { r in r.names.isEmpty || (name.map { n in r.names.contains { $0.matches(buf, n) } } ?? false) }) else {
                control.stats.pointee.sniUnrouted += 1
                return abort(c)
            }
            c.pointee.state = .connecting
            c.pointee.clusterIndex = Int32(route.clusterIndex)
            if snap.clusters[route.clusterIndex].balancer.usesHash { c.pointee.hash = sourceIPHash(c.pointee.downstreamFD) }
            return startConnect(c, slot: slot(of: c))
        }
    }

    /// A fresh connection slot for an accepted socket, counted against its listener; nil (and
    /// the socket closed) when the slab is full.
    func takeSlot(fd: Int32, listener li: Int) -> UnsafeMutablePointer<Connection>? {
        guard freeCount > 0, li >= 0 else {
            control.stats.pointee.rejectedNoSlot += 1
            if li >= 0 { control.named.listeners[Int(listenerSlots[li])].rejected += 1 }
            close(fd)
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

    /// The stats slot of an endpoint by name, for connections that outlived their snapshot.
    func endpointSlot(cluster name: String, address: SocketAddress) -> Int32 {
        guard let ci = snapshot.clusters.firstIndex(where: { $0.name == name }),
              let ei = snapshot.clusters[ci].endpoints.firstIndex(where: { $0.address == address }) else { return -1 }
        return endpointSlots[ci][ei]
    }

    /// The hash key for source_ip: xxHash64 of the client's IP bytes (not its port), so one
    /// client keeps landing on one endpoint.
    func sourceIPHash(_ fd: Int32) -> UInt64 {
        // Straight from the kernel's sockaddr: building a SocketAddress would allocate.
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
        }
        guard rc == 0 else { return 0 }
        return withUnsafePointer(to: &storage) { p -> UInt64 in
            let raw = UnsafeRawPointer(p)
            switch Int32(p.pointee.ss_family) {
            case AF_INET:
                let offset = MemoryLayout<sockaddr_in>.offset(of: \sockaddr_in.sin_addr)!
                return XXHash64.hash(UnsafeRawBufferPointer(start: raw + offset, count: 4))
            case AF_INET6:
                let offset = MemoryLayout<sockaddr_in6>.offset(of: \sockaddr_in6.sin6_addr)!
                return XXHash64.hash(UnsafeRawBufferPointer(start: raw + offset, count: 16))
            default:
                return 0
            }
        }
    }

    /// Picks an endpoint (avoiding those that already failed for this connection) and connects.
    func startConnect(_ c: UnsafeMutablePointer<Connection>, slot: Int) {
        let snap = c.pointee.snapshot!.takeUnretainedValue()
        let ci = Int(c.pointee.clusterIndex)
        let cluster = snap.clusters[ci]
        let pick: Int?
        if snap === snapshot {
            var context = PickContext(hash: c.pointee.hash, random: random)
            pick = balancers[ci].pick(&context, excluding: c.pointee.exclusions)
            random = context.random
        } else {
            // The connection started on an older snapshot whose balancer state is gone: walk on
            // from its last endpoint.
            let n = cluster.endpoints.count
            let start = Int(c.pointee.endpointIndex) + 1
            pick = (0..<n).lazy.map { (start + $0) % n }.first { !c.pointee.exclusions.contains($0) }
        }
        guard let ep = pick else { return abort(c) }
        c.pointee.endpointIndex = Int32(ep)
        let endpoint = cluster.endpoints[ep]
        // Count against the endpoint by name (slots outlive snapshots); a connection from an
        // older snapshot looks its endpoint up in the current one.
        c.pointee.endpointSlot = snap === snapshot ? endpointSlots[ci][ep] : endpointSlot(cluster: cluster.name, address: endpoint.address)
        if c.pointee.endpointSlot >= 0 {
            control.named.endpoints[Int(c.pointee.endpointSlot)].connections += 1
            control.named.endpoints[Int(c.pointee.endpointSlot)].active += 1
        }
        startActive(c)
        let fd = Sockets.tcpSocket(for: endpoint.address.family)
        guard fd >= 0 else {
            Log.warning("shard \(index): socket() for upstream failed: \(String(cString: strerror(errno)))")
            return abort(c)
        }
        c.pointee.upstreamFD = fd
        c.pointee.addressLength = endpoint.address.fill(&c.pointee.address)
        let t = cluster.connectTimeoutNanoseconds
        c.pointee.connectTimeout = __kernel_timespec(tv_sec: t / 1_000_000_000, tv_nsec: t % 1_000_000_000)
        c.pointee.inflight += 1
        let addressPointer = UnsafeMutableRawPointer(c).advanced(by: MemoryLayout<Connection>.offset(of: \Connection.address)!)
            .assumingMemoryBound(to: sockaddr.self)
        let timeoutPointer = UnsafeMutableRawPointer(c).advanced(by: MemoryLayout<Connection>.offset(of: \Connection.connectTimeout)!)
            .assumingMemoryBound(to: __kernel_timespec.self)
        ring.connect(fd: fd, address: addressPointer, length: c.pointee.addressLength, timeout: timeoutPointer,
                     userData: UserData(op: Op.connect, slot: slot, generation: c.pointee.generation),
                     timeoutUserData: UserData(op: Op.ignore, slot: 0, generation: 0))
    }

    func onConnect(_ ud: UserData, _ res: Int32) {
        let c = connections + ud.slot
        precondition(c.pointee.generation == ud.generation, "a slot is reused only after its last completion")
        c.pointee.inflight -= 1
        if c.pointee.state == .closing { return finishIfIdle(c) }
        if res == 0 {
            c.pointee.state = .open
            c.pointee.lastActivity = now
            control.stats.pointee.upstreamConnected += 1
            noteConnect(c, failed: false)
            let f0 = c.flow(0)
            let early = f0.pointee.queued > 0 || f0.pointee.recv != .idle || f0.pointee.sourceEnded || c.pointee.isTLS
            if limits.dataPath == .splice && !early { return startSplice(c) }
            if f0.pointee.recv == .idle && !f0.pointee.sourceEnded { armRecv(c, 0) }
            armRecv(c, 1)
            if f0.pointee.queued > 0 { sendHead(c, 0) } else if f0.pointee.sourceEnded { shutDestination(c, 0) }
            if c.pointee.isTLS { tlsFlush(c) }
            return
        }
        // Refused, unreachable, or timed out (the linked timeout cancels the connect): try another.
        if res == -ECANCELED { control.stats.pointee.connectTimeouts += 1 } else { control.stats.pointee.connectFailures += 1 }
        endActive(c)
        if c.pointee.endpointSlot >= 0 {
            let e = Int(c.pointee.endpointSlot)
            if res == -ECANCELED { control.named.endpoints[e].connectTimeouts += 1 } else { control.named.endpoints[e].connectFailures += 1 }
            control.named.endpoints[e].active -= 1
            c.pointee.endpointSlot = -1
        }
        noteConnect(c, failed: true)
        close(c.pointee.upstreamFD)
        c.pointee.upstreamFD = -1
        c.pointee.exclusions.insert(Int(c.pointee.endpointIndex))
        c.pointee.attempts += 1
        let cluster = c.pointee.snapshot!.takeUnretainedValue().clusters[Int(c.pointee.clusterIndex)]
        if Int(c.pointee.attempts) < cluster.connectAttempts {
            startConnect(c, slot: ud.slot)
        } else {
            abort(c)
        }
    }

    /// Per-endpoint byte counters move as bytes are delivered, so a long-lived connection shows
    /// up in a scrape while it is open. Flow 0 delivers to the upstream, flow 1 from it.
    @inline(__always) func countBytes(_ c: UnsafeMutablePointer<Connection>, _ f: Int, _ n: Int64) {
        let slot = Int(c.pointee.endpointSlot)
        guard slot >= 0 else { return }
        if f == 0 { endpointCounters[slot].bytesSent += n } else { endpointCounters[slot].bytesReceived += n }
    }

    /// Passive outlier detection: a failure (refused or timed-out connect, or a reset from the
    /// upstream) extends the endpoint's streak on this shard, a successful connect ends it; a
    /// streak at the cluster's threshold is reported to the health checker once.
    func noteConnect(_ c: UnsafeMutablePointer<Connection>, failed: Bool) {
        guard c.pointee.snapshot?.takeUnretainedValue() === snapshot else { return }
        let ci = Int(c.pointee.clusterIndex), ep = Int(c.pointee.endpointIndex)
        guard ep < failureStreaks[ci].count else { return }
        if !failed { failureStreaks[ci][ep] = 0; return }
        failureStreaks[ci][ep] += 1
        let cluster = snapshot.clusters[ci]
        if let threshold = cluster.health.consecutiveFailures, Int(failureStreaks[ci][ep]) >= threshold {
            failureStreaks[ci][ep] = 0
            control.reports.add(EndpointKey(cluster: cluster.name, address: cluster.endpoints[ep].address))
        }
    }

    /// The current snapshot's (cluster, endpoint) for a stats slot, or nil when the endpoint is
    /// not in it. Balancers are rebuilt with each snapshot, so a connection is counted through
    /// its endpoint's name, whatever snapshot it started on.
    @inline(__always) func currentEndpoint(_ c: UnsafeMutablePointer<Connection>) -> (Int, Int)? {
        let s = Int(c.pointee.endpointSlot)
        guard s >= 0, s < endpointBySlot.count, endpointBySlot[s] >= 0 else { return nil }
        return (Int(endpointBySlot[s] >> 32), Int(endpointBySlot[s] & 0xFFFF_FFFF))
    }

    /// Tells the balancer (least_request counts them) a connection now loads its endpoint.
    func startActive(_ c: UnsafeMutablePointer<Connection>) {
        guard !c.pointee.countedActive, let (ci, ep) = currentEndpoint(c) else { return }
        balancers[ci].started(ep)
        c.pointee.countedActive = true
    }

    /// Tells the balancer this connection no longer loads its endpoint.
    func endActive(_ c: UnsafeMutablePointer<Connection>) {
        guard c.pointee.countedActive else { return }
        c.pointee.countedActive = false
        if let (ci, ep) = currentEndpoint(c) { balancers[ci].ended(ep) }
    }

    // MARK: Flows

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
                    enqueue(flow, bid: Int(bid), length: res)
                }
                flow.pointee.bytes += Int64(res)
                c.pointee.lastActivity = now
                if c.pointee.state == .peeking { helloArrived(c) }
                if c.pointee.state.beforeUpstream && flow.pointee.recv == .armed && flow.pointee.queued >= queueCap {
                    flow.pointee.recv = .cancelling
                    ring.cancel(ud, userData: UserData(op: Op.ignore, slot: 0, generation: 0))
                }
                return
            }
            if let bid { buffers.recycle(bid) }
            switch res {
            case 0:
                flow.pointee.sourceEnded = true
                if c.pointee.state == .peeking { helloArrived(c) }
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
            enqueue(flow, bid: Int(bid), length: res)
            flow.pointee.bytes += Int64(res)
            c.pointee.lastActivity = now
            if !flow.pointee.sending { sendHead(c, f) }
            if flow.pointee.recv == .armed && flow.pointee.queued >= queueCap {
                // Backpressure: the destination is slower than the source. Stop reading so this
                // connection cannot drain the shard's shared buffer pool.
                flow.pointee.recv = .cancelling
                ring.cancel(ud, userData: UserData(op: Op.ignore, slot: 0, generation: 0))
            } else if !flow.pointee.recv.pending {
                rearmIfRoom(c, f)
            }
            return
        }
        if let bid { buffers.recycle(bid) }
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

    func enqueue(_ flow: UnsafeMutablePointer<Flow>, bid: Int, length: Int32) {
        let b = Int32(bid)
        bufferLength[Int(bid)] = length
        bufferNext[Int(bid)] = -1
        if flow.pointee.tail >= 0 { bufferNext[Int(flow.pointee.tail)] = b } else { flow.pointee.head = b }
        flow.pointee.tail = b
        flow.pointee.queued += 1
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
        let f = Int(ud.sub)
        let flow = c.flow(f)
        flow.pointee.sending = false
        c.pointee.inflight -= 1
        if c.pointee.state != .open && !(c.pointee.state == .connecting && c.pointee.isTLS) { return finishIfIdle(c) }
        guard sent > 0 else {
            if f == 0 && (sent == -ECONNRESET || sent == -EPIPE) { noteConnect(c, failed: true) }
            Log.debug("shard \(index): send to \(f == 0 ? "upstream" : "client") failed: \(sent == 0 ? "nothing sent" : String(cString: strerror(-sent)))")
            return abort(c)
        }
        var res = sent
        if f == 1 && c.pointee.isTLS {
            guard let credit = tlsSent(c, sent) else { return }
            if credit == 0 {
                // Handshake records or tickets went out: data may wait behind them.
                if c.pointee.state == .open && flow.pointee.queued > 0 && !flow.pointee.sending { sendHead(c, f) }
                else if c.pointee.state == .open && flow.pointee.sourceEnded && flow.pointee.queued == 0 { shutDestination(c, f) }
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
        flow.pointee.destinationShut = true
        shutdown(destinationFD(c, f), Int32(SHUT_WR))
        if c.flow(0).pointee.destinationShut && c.flow(1).pointee.destinationShut {
            control.stats.pointee.completed += 1
            c.pointee.state = .closing
            finishIfIdle(c)
        }
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

    // MARK: Ending

    /// Ends a connection abnormally: shuts both sockets so pending operations complete, cancels
    /// what is left, and frees the slot when the last completion is in.
    func abort(_ c: UnsafeMutablePointer<Connection>) {
        guard c.pointee.state != .closing && c.pointee.state != .free else { return }
        if c.pointee.kind == .http { detachUpstream(c, reuse: false); endEndpoint(c) }
        c.pointee.state = .closing
        control.stats.pointee.aborted += 1
        for side in 0..<2 {
            let fd = side == 0 ? c.pointee.downstreamFD : c.pointee.upstreamFD
            guard fd >= 0 else { continue }
            shutdown(fd, Int32(SHUT_RDWR))
            if c.pointee.inflight > 0 { ring.cancelAll(fd: fd, userData: UserData(op: Op.ignore, slot: 0, generation: 0)) }
        }
        finishIfIdle(c)
    }

    /// Frees a closing connection once no operation refers to it any more.
    func finishIfIdle(_ c: UnsafeMutablePointer<Connection>) {
        guard c.pointee.state == .closing, c.pointee.inflight == 0 else { return }
        if c.pointee.downstreamFD >= 0 { close(c.pointee.downstreamFD) }
        if c.pointee.upstreamFD >= 0 { close(c.pointee.upstreamFD) }
        for f in 0..<2 {
            let flow = c.flow(f)
            if flow.pointee.pipeRead >= 0 { close(flow.pointee.pipeRead); close(flow.pointee.pipeWrite) }
            var b = flow.pointee.head
            while b >= 0 { releaseBuffer(Int(b)); b = bufferNext[Int(b)] }
            clearOut(flow)
            if f == 0 { control.stats.pointee.bytesDownstreamToUpstream += flow.pointee.bytes }
            else { control.stats.pointee.bytesUpstreamToDownstream += flow.pointee.bytes }
        }
        endActive(c)
        if c.pointee.isTLS { endTLS(c) }
        if c.pointee.endpointSlot >= 0 { control.named.endpoints[Int(c.pointee.endpointSlot)].active -= 1 }
        if c.pointee.listenerSlot >= 0 { control.named.listeners[Int(c.pointee.listenerSlot)].active -= 1 }
        c.pointee.snapshot?.release()
        let gen = (c.pointee.generation &+ 1) & UserData.generationMask
        c.pointee = Connection()
        c.pointee.generation = gen
        freeSlots[freeCount] = Int32(slot(of: c))
        freeCount += 1
        active -= 1
    }
}
