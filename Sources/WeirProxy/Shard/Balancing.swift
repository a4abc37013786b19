// Endpoint accounting shared by TCP sessions and HTTP exchanges: picks, active counts for the
// balancers, per-endpoint stats slots, and passive outlier detection.
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
        let rc = ring.peerName(fd: fd, into: &storage)
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
        guard ep >= 0, ep < failureStreaks[ci].count else { return }
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
}
