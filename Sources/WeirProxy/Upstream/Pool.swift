// Upstream connections for HTTP, pooled per shard and endpoint: lent to one exchange at a time,
// idle in their endpoint's list between exchanges, closed when spent, idle too long or broken.
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

enum UpstreamState: UInt8 { case free, connecting, handshaking, busy, idle, closing }

/// A connection to an upstream endpoint for HTTP, pooled per shard and endpoint: lent to one
/// downstream connection per request, idle in its endpoint's list between requests.
struct Upstream {
    var generation: UInt32 = 0
    var state = UpstreamState.free
    var fd: Int32 = -1
    var inflight: Int32 = 0
    /// The downstream connection it serves, and that connection's generation.
    var owner: Int32 = -1
    var ownerGeneration: UInt32 = 0
    var recv = RecvState.idle
    /// The upstream closed its side.
    var ended = false
    /// Its pool: the endpoint's stats slot (stable across reloads), and links in the idle list.
    var pool: Int32 = -1
    var prev: Int32 = -1
    var next: Int32 = -1
    var requests: Int32 = 0
    var maxRequests: Int32 = 0
    var idleSince: Int64 = 0
    var idleTimeout: Int64 = 0
    /// A head buffer a send still reads after its owner let go of the upstream.
    var pendingOut: Int32 = -1
    /// TLS to the endpoint: its state is in Shard.upstreamTLS at this slot.
    var isTLS = false
    /// The UpstreamTLS it was made with (its id; 0: plaintext).
    var tlsID: UInt64 = 0
    var address = sockaddr_storage()
    var addressLength: socklen_t = 0
    var connectTimeout = __kernel_timespec()
}

extension Shard {
    /// Picks an endpoint and lends the request an idle pooled connection to it, or opens one.
    func connectHTTP(_ c: UnsafeMutablePointer<Connection>, parsed: RequestHead? = nil) {
        let snap = snapshotOf(c)
        let ci = Int(c.pointee.clusterIndex)
        let cluster = snap.clusters[ci]
        if cluster.originalDestination { return connectOriginalDestination(c, cluster, parsed: parsed) }
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
        // After a pooled connection failed under this request, the next try goes on a new
        // connection: another idle one may be closing just the same.
        let tlsID = cluster.tls(forEndpoint: ep)?.id ?? 0
        if pool >= 0, !c.pointee.ex.freeRetryUsed, let u = popIdle(Int(pool), tls: tlsID) {
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
        guard let u = openUpstream(c, cluster, family: endpoint.address.family, pool: pool) else { return localResponse(c, status: 503, close: false) }
        u.pointee.addressLength = endpoint.address.fill(&u.pointee.address)
        startUpstreamConnect(u, cluster)
    }

    /// ORIGINAL_DST: each request opens a connection to where its client was going, closed
    /// after the exchange (there is no endpoint to pool it under).
    func connectOriginalDestination(_ c: UnsafeMutablePointer<Connection>, _ cluster: Cluster, parsed: RequestHead?) {
        c.pointee.endpointIndex = -1
        c.pointee.endpointSlot = -1
        c.pointee.ex.reused = false
        var storage = sockaddr_storage()
        guard let family = originalDestination(c, into: &storage),
              let u = openUpstream(c, cluster, family: family, pool: -1) else { return localResponse(c, status: 503, close: false) }
        u.pointee.address = storage
        u.pointee.addressLength = socklen_t(family == .inet ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
        startUpstreamConnect(u, cluster)
    }

    /// A new upstream slot and socket (bound to the cluster's source address), lent to `c`;
    /// nil (counted) when the slab is full or no socket can be had.
    func openUpstream(_ c: UnsafeMutablePointer<Connection>, _ cluster: Cluster, family: SocketAddress.Family, pool: Int32) -> UnsafeMutablePointer<Upstream>? {
        guard upstreamFreeCount > 0 else {
            control.stats.pointee.poolOverflows += 1
            return nil
        }
        let fd = ring.tcpSocket(family: family)
        guard fd >= 0 else { return nil }
        if let source = cluster.sourceAddress, source.family == family, !bindSource(fd, source) { ring.close(fd: fd); return nil }
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
        return u
    }

    /// Connects an upstream just opened to `u.address`, with the cluster's timeout.
    func startUpstreamConnect(_ u: UnsafeMutablePointer<Upstream>, _ cluster: Cluster) {
        let t = cluster.connectTimeoutNanoseconds
        u.pointee.connectTimeout = __kernel_timespec(tv_sec: t / 1_000_000_000, tv_nsec: t % 1_000_000_000)
        u.pointee.inflight += 1
        let raw = UnsafeMutableRawPointer(u)
        ring.connect(fd: u.pointee.fd, address: (raw + MemoryLayout<Upstream>.offset(of: \Upstream.address)!).assumingMemoryBound(to: sockaddr.self),
                     length: u.pointee.addressLength,
                     timeout: (raw + MemoryLayout<Upstream>.offset(of: \Upstream.connectTimeout)!).assumingMemoryBound(to: __kernel_timespec.self),
                     userData: UserData(op: Op.upConnect, slot: u - upstreams, generation: u.pointee.generation),
                     timeoutUserData: UserData(op: Op.ignore, slot: 0, generation: 0))
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

    /// An idle connection of `pool` made under TLS setting `tls` (UpstreamTLS.id, 0 for
    /// plaintext). Idle ones made under another (a new certificate, CA or SAN policy from a
    /// reload or SDS, an endpoint that changed transport socket) are closed, never lent.
    func popIdle(_ pool: Int, tls: UInt64) -> Int? {
        while idleHead[pool] >= 0 {
            let head = Int(idleHead[pool])
            let u = upstreams + head
            if u.pointee.tlsID != tls { closeUpstream(u); continue }
            unlinkIdle(u)
            return head
        }
        return nil
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
        ring.shutdown(fd: u.pointee.fd, how: Int32(SHUT_RDWR))
        if u.pointee.inflight > 0 { ring.cancelAll(fd: u.pointee.fd, userData: UserData(op: Op.ignore, slot: 0, generation: 0)) }
        finishUpstream(u)
    }

    func finishUpstream(_ u: UnsafeMutablePointer<Upstream>) {
        guard u.pointee.state == .closing, u.pointee.inflight == 0 else { return }
        ring.close(fd: u.pointee.fd)
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
}
