// The TCP passthrough session: accept, an optional ClientHello peek to route by server name
// (state `peeking`), pick an endpoint and connect (with a linked timeout and retries on the next
// endpoint), then the two flows copy bytes (Flows.swift or Splice.swift).
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
    func openConnection(fd: Int32, listener li: Int) {
        guard let c = takeSlot(fd: fd, listener: li) else { return }
        startTCP(c, listener: li)
    }

    /// Starts the TCP session of listener `li` on a connection (just accepted, or handed over by
    /// a filter chain with the bytes its inspectors read still queued on flow 0).
    func startTCP(_ c: UnsafeMutablePointer<Connection>, listener li: Int) {
        let listener = snapshotOf(c).listeners[li]
        c.pointee.state = .connecting
        c.pointee.listenerIndex = Int32(li)
        c.pointee.idleTimeout = listener.idleTimeoutNanoseconds
        if let tls = listener.tls {
            // Terminated TLS: the handshake runs while the upstream connects.
            guard startTLS(c, tls), decryptQueued(c) else { return abort(c) }
            if c.pointee.state == .closing { return }
            if c.flow(0).pointee.recv == .idle && !c.flow(0).pointee.sourceEnded { armRecv(c, 0) }
        }
        if !listener.sniRoutes.isEmpty {
            // Route by the ClientHello's server name: read it first, connect after.
            c.pointee.state = .peeking
            c.pointee.helloDeadline = now + listener.clientHelloTimeoutNanoseconds
            if c.flow(0).pointee.recv == .idle && !c.flow(0).pointee.sourceEnded { armRecv(c, 0) }
            if c.flow(0).pointee.queued > 0 || c.flow(0).pointee.sourceEnded { helloArrived(c) }
            return
        }
        let snap = snapshotOf(c)
        let ci = listener.clusterWeights.map { $0.pick(random.next()) } ?? listener.clusterIndex
        c.pointee.clusterIndex = Int32(ci)
        if snap.clusters[ci].balancer.usesHash { c.pointee.hash = sourceIPHash(c.pointee.downstreamFD) }
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
            case .hello(let n, _): name = n
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

    /// Picks an endpoint (avoiding those that already failed for this connection) and connects.
    func startConnect(_ c: UnsafeMutablePointer<Connection>, slot: Int) {
        let snap = c.pointee.snapshot!.takeUnretainedValue()
        let ci = Int(c.pointee.clusterIndex)
        let cluster = snap.clusters[ci]
        if cluster.originalDestination { return startOriginalDestinationConnect(c, slot: slot, cluster: cluster) }
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
        c.pointee.addressLength = endpoint.address.fill(&c.pointee.address)
        connectUpstream(c, slot: slot, cluster: cluster, family: endpoint.address.family)
    }

    /// Connects to the client's original destination (ORIGINAL_DST): one endpoint, no balancer.
    func startOriginalDestinationConnect(_ c: UnsafeMutablePointer<Connection>, slot: Int, cluster: Cluster) {
        var storage = sockaddr_storage()
        guard let family = originalDestination(c, into: &storage) else { return abort(c) }
        c.pointee.address = storage
        c.pointee.addressLength = socklen_t(family == .inet ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
        connectUpstream(c, slot: slot, cluster: cluster, family: family)
    }

    /// Opens the upstream socket (bound to the cluster's source address, if any) and connects
    /// it to `c.address` with the cluster's timeout.
    func connectUpstream(_ c: UnsafeMutablePointer<Connection>, slot: Int, cluster: Cluster, family: SocketAddress.Family) {
        let fd = ring.tcpSocket(family: family)
        guard fd >= 0 else {
            Log.warning("shard \(index): socket() for upstream failed: \(String(cString: strerror(errno)))")
            return abort(c)
        }
        c.pointee.upstreamFD = fd
        // A source of the other family cannot be bound (an IPv6 destination, an IPv4 source):
        // the kernel picks the source then.
        if let source = cluster.sourceAddress, source.family == family, !bindSource(fd, source) { return abort(c) }
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
            let f0 = c.flow(0)
            let cluster = snapshotOf(c).clusters[Int(c.pointee.clusterIndex)]
            let upstreamTLS = cluster.tls(forEndpoint: Int(c.pointee.endpointIndex))
            // With TLS, the connect succeeds when the handshake does (upTLSReceive).
            if upstreamTLS == nil { noteConnect(c, failed: false) }
            let early = f0.pointee.queued > 0 || f0.pointee.recv != .idle || f0.pointee.sourceEnded || c.pointee.isTLS || upstreamTLS != nil
            if limits.dataPath == .splice && !early { return startSplice(c) }
            if f0.pointee.recv == .idle && !f0.pointee.sourceEnded { armRecv(c, 0) }
            armRecv(c, 1)
            if let upstreamTLS {
                // The handshake first (its ClientHello goes now); queued client bytes follow it.
                guard startTCPUpstreamTLS(c, upstreamTLS) else { return abort(c) }
            } else if f0.pointee.queued > 0 { sendHead(c, 0) } else if f0.pointee.sourceEnded { shutDestination(c, 0) }
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
        ring.close(fd: c.pointee.upstreamFD)
        c.pointee.upstreamFD = -1
        // ORIGINAL_DST has one destination: its attempts go to it again.
        if c.pointee.endpointIndex >= 0 { c.pointee.exclusions.insert(Int(c.pointee.endpointIndex)) }
        c.pointee.attempts += 1
        let cluster = c.pointee.snapshot!.takeUnretainedValue().clusters[Int(c.pointee.clusterIndex)]
        if Int(c.pointee.attempts) < cluster.connectAttempts {
            startConnect(c, slot: ud.slot)
        } else {
            abort(c)
        }
    }
}
