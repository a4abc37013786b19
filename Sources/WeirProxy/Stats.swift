// Per-listener and per-endpoint counters, owned by each shard and summed by name when scraped.
// A name keeps its slot while anything uses it, so a reload never resets or mixes series, and a
// connection counts against the slots it started with; a name gone from the configuration and
// no longer used by any connection is forgotten (its slot is reused), so endpoint churn (EDS)
// does not grow the registry or the scrape without bound. Only the shard writes counters;
// the lock is taken when a reload brings new names and when the control thread reads.
import Synchronization
import WeirConfig
import WeirCore

public struct ListenerCounters: Sendable {
    public var accepted: Int64 = 0
    public var active: Int64 = 0
    /// Refused because the shard's connection slab was full.
    public var rejected: Int64 = 0
    /// HTTP: requests whose head arrived, responses by status class (1xx to 5xx, index 0 to 4),
    /// those Weir made itself, retries, and request durations (head to last response byte).
    public var requests: Int64 = 0
    public var responses: (Int64, Int64, Int64, Int64, Int64) = (0, 0, 0, 0, 0)
    public var localResponses: Int64 = 0
    public var retries: Int64 = 0
    /// Requests sent again on a fresh connection because the pooled one they met had been
    /// closed by the upstream (not counted in `retries`).
    public var poolRetries: Int64 = 0
    public var latency = LatencyHistogram()
    /// TLS: completed handshakes, those that resumed a session, and failures by reason.
    public var tlsHandshakes: Int64 = 0
    public var tlsResumptions: Int64 = 0
    public var tlsFailedVersion: Int64 = 0
    public var tlsFailedCertificate: Int64 = 0
    public var tlsFailedOther: Int64 = 0
    public init() {}

    public func responses(class k: Int) -> Int64 {
        switch k { case 1: return responses.0; case 2: return responses.1; case 3: return responses.2; case 4: return responses.3; default: return responses.4 }
    }

    mutating func countResponse(status: Int) {
        switch status / 100 {
        case 1: responses.0 += 1
        case 2: responses.1 += 1
        case 3: responses.2 += 1
        case 4: responses.3 += 1
        default: responses.4 += 1
        }
    }
}

/// Cumulative-on-read histogram of request durations: fixed bounds, one plain counter per bucket.
public struct LatencyHistogram: Sendable {
    /// Upper bounds in seconds (Prometheus `le`), the last bucket is +Inf.
    public static let bounds: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    static let boundsNanoseconds: (Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64) =
        (500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000, 500_000_000,
         1_000_000_000, 2_500_000_000, 5_000_000_000, 10_000_000_000)
    var buckets: (Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    public var count: Int64 = 0
    public var sumNanoseconds: Int64 = 0
    public init() {}

    mutating func record(_ ns: Int64) {
        count += 1
        sumNanoseconds += ns
        var i = 0
        withUnsafeBytes(of: LatencyHistogram.boundsNanoseconds) { b in
            let bounds = b.bindMemory(to: Int64.self)
            while i < bounds.count && ns > bounds[i] { i += 1 }
        }
        withUnsafeMutableBytes(of: &buckets) { $0.bindMemory(to: Int64.self)[i] += 1 }
    }

    /// Per-bucket counts (not cumulative), bounds.count + 1 of them.
    public var counts: [Int64] { withUnsafeBytes(of: buckets) { Array($0.bindMemory(to: Int64.self)) } }

    static func + (a: LatencyHistogram, b: LatencyHistogram) -> LatencyHistogram {
        var r = LatencyHistogram()
        r.count = a.count + b.count
        r.sumNanoseconds = a.sumNanoseconds + b.sumNanoseconds
        let ca = a.counts, cb = b.counts
        withUnsafeMutableBytes(of: &r.buckets) { p in
            let m = p.bindMemory(to: Int64.self)
            for i in 0..<m.count { m[i] = ca[i] + cb[i] }
        }
        return r
    }
}

public struct EndpointCounters: Sendable {
    public var connections: Int64 = 0
    public var active: Int64 = 0
    public var connectFailures: Int64 = 0
    public var connectTimeouts: Int64 = 0
    /// Bytes sent to the endpoint and received from it.
    public var bytesSent: Int64 = 0
    public var bytesReceived: Int64 = 0
    /// HTTP: requests sent to the endpoint, and how many went on a pooled (reused) connection.
    public var requests: Int64 = 0
    public var poolReuses: Int64 = 0
    public init() {}

    static func + (a: EndpointCounters, b: EndpointCounters) -> EndpointCounters {
        var r = a
        r.connections += b.connections; r.active += b.active; r.connectFailures += b.connectFailures
        r.connectTimeouts += b.connectTimeouts; r.bytesSent += b.bytesSent; r.bytesReceived += b.bytesReceived
        r.requests += b.requests; r.poolReuses += b.poolReuses
        return r
    }
}

final class StatsRegistry: @unchecked Sendable {
    struct Names {
        /// By slot; nil for a forgotten slot, free for the next new name.
        var listeners: [String?] = []
        var endpoints: [EndpointKey?] = []
        var listenerSlot: [String: Int] = [:]
        var endpointSlot: [EndpointKey: Int] = [:]
        var freeListeners: [Int] = []
        var freeEndpoints: [Int] = []
    }
    private let lock = Mutex<Names>(Names())
    /// Read and written by the shard without the lock; replaced (grown) only under it.
    private(set) var listeners: UnsafeMutablePointer<ListenerCounters>
    private(set) var endpoints: UnsafeMutablePointer<EndpointCounters>
    private var listenerCapacity = 16
    private var endpointCapacity = 64
    /// Old buffers stay allocated: a scrape may still be reading one when the shard grows.
    private var retired: [UnsafeMutableRawPointer] = []

    init() {
        listeners = .allocate(capacity: 16); listeners.initialize(repeating: ListenerCounters(), count: 16)
        endpoints = .allocate(capacity: 64); endpoints.initialize(repeating: EndpointCounters(), count: 64)
    }

    deinit {
        listeners.deallocate()
        endpoints.deallocate()
        for p in retired { p.deallocate() }
    }

    /// Slots for `snapshot`'s listeners and for each cluster's endpoints, registering new names.
    /// Called by the shard when it adopts a snapshot.
    func slots(for snapshot: Snapshot) -> (listeners: [Int32], endpoints: [[Int32]]) {
        lock.withLock { names in
            func listenerSlot(_ name: String) -> Int32 {
                if let s = names.listenerSlot[name] { return Int32(s) }
                let s: Int
                if let free = names.freeListeners.popLast() { s = free; names.listeners[s] = name } else { s = names.listeners.count; names.listeners.append(name) }
                names.listenerSlot[name] = s
                return Int32(s)
            }
            func endpointSlot(_ key: EndpointKey) -> Int32 {
                if let s = names.endpointSlot[key] { return Int32(s) }
                let s: Int
                if let free = names.freeEndpoints.popLast() { s = free; names.endpoints[s] = key } else { s = names.endpoints.count; names.endpoints.append(key) }
                names.endpointSlot[key] = s
                return Int32(s)
            }
            let l = snapshot.listeners.map { listenerSlot($0.name) }
            let e = snapshot.clusters.map { c in c.endpoints.map { endpointSlot(EndpointKey(cluster: c.name, address: $0.address)) } }
            growIfNeeded(listeners: names.listeners.count, endpoints: names.endpoints.count)
            return (l, e)
        }
    }

    /// Forgets every name whose slot is not kept (the shard keeps its snapshot's names
    /// and the slots its connections and pooled upstream connections still count against): the
    /// counters are zeroed and the slot goes to the next new name. Called by the shard, which is
    /// the only writer of these counters, when it adopts a snapshot.
    func forget(keepingListeners kept: Set<Int32>, endpoints keptEndpoints: Set<Int32>) {
        lock.withLock { names in
            for (s, name) in names.listeners.enumerated() where name != nil && !kept.contains(Int32(s)) {
                names.listenerSlot[name!] = nil
                names.listeners[s] = nil
                names.freeListeners.append(s)
                listeners[s] = ListenerCounters()
            }
            for (s, key) in names.endpoints.enumerated() where key != nil && !keptEndpoints.contains(Int32(s)) {
                names.endpointSlot[key!] = nil
                names.endpoints[s] = nil
                names.freeEndpoints.append(s)
                endpoints[s] = EndpointCounters()
            }
        }
    }

    private func growIfNeeded(listeners needL: Int, endpoints needE: Int) {
        listeners = grown(listeners, capacity: &listenerCapacity, need: needL, zero: ListenerCounters())
        endpoints = grown(endpoints, capacity: &endpointCapacity, need: needE, zero: EndpointCounters())
    }

    /// A copy of `old` with room for `need`, or `old` itself when it has room. The old buffer is
    /// retired, not freed: a scrape may be reading it.
    private func grown<T>(_ old: UnsafeMutablePointer<T>, capacity: inout Int, need: Int, zero: T) -> UnsafeMutablePointer<T> {
        guard need > capacity else { return old }
        let n = max(need, capacity * 2)
        let next = UnsafeMutablePointer<T>.allocate(capacity: n)
        next.initialize(repeating: zero, count: n)
        next.update(from: old, count: capacity)
        retired.append(UnsafeMutableRawPointer(old))
        capacity = n
        return next
    }

    /// A copy of every named series, for a scrape.
    func read() -> (listeners: [String: ListenerCounters], endpoints: [EndpointKey: EndpointCounters]) {
        lock.withLock { names in
            var l: [String: ListenerCounters] = [:]
            for (i, name) in names.listeners.enumerated() { if let name { l[name] = listeners[i] } }
            var e: [EndpointKey: EndpointCounters] = [:]
            for (i, key) in names.endpoints.enumerated() { if let key { e[key] = endpoints[i] } }
            return (l, e)
        }
    }
}

/// Counters a shard keeps for itself; the control thread sums them when asked. Plain integers:
/// only the owning shard writes them.
public struct ShardStats: Sendable {
    public var accepted = 0
    public var rejectedNoSlot = 0
    public var upstreamConnected = 0
    public var connectFailures = 0
    public var connectTimeouts = 0
    public var completed = 0
    public var aborted = 0
    public var idleTimeouts = 0
    public var cutOnDrain = 0
    /// Times a recv stopped because the shard's buffer ring was empty (then re-armed).
    public var bufferRingDry = 0
    public var bytesDownstreamToUpstream: Int64 = 0
    public var bytesUpstreamToDownstream: Int64 = 0
    public var active = 0
    public var snapshotsAdopted = 0
    /// HTTP: requests refused with 503 because no head buffer was free, or because an
    /// endpoint's pool (or the upstream slab) was at its connection limit.
    public var headBuffersExhausted = 0
    public var poolOverflows = 0
    /// mTLS peers whose X-Forwarded-Client-Cert element did not fit (forwarded without it).
    public var clientCertTooLong = 0
    /// Upstream sockets that could not bind their cluster's source_address.
    public var sourceBindFailures = 0
    /// tcp listeners with SNI routes: connections closed because no route fit their server
    /// name, and because the ClientHello did not arrive within client_hello_timeout.
    public var sniUnrouted = 0
    public var sniTimeouts = 0
    /// Listeners with filter chains: connections closed because no chain (and no default) fit,
    /// because the chain that fit is one Weir refused, because the inspectors ran out of time,
    /// and ORIGINAL_DST connections that would have looped back into a listener of Weir's own.
    public var chainUnmatched = 0
    public var chainRefused = 0
    public var inspectTimeouts = 0
    public var originalDestinationLoops = 0
    /// HTTP/2: connections and streams served; streams refused (REFUSED_STREAM: over the stream
    /// limit, or no slot or head buffer for them) and reset by the client; GOAWAYs Weir sent for
    /// a protocol error and for a flood (ENHANCE_YOUR_CALM: rapid reset, CONTINUATION, SETTINGS or
    /// PING floods); header blocks over the header limits (answered 431).
    public var h2Connections = 0
    public var h2Streams = 0
    public var h2StreamsRefused = 0
    public var h2StreamsResetByClient = 0
    public var h2GoawayProtocol = 0
    public var h2GoawayFlood = 0
    public var h2HeadersTooLarge = 0
    public init() {}

    /// One line for the log.
    public var summary: String {
        "accepted \(accepted), completed \(completed), aborted \(aborted), rejected (no slot) \(rejectedNoSlot), "
            + "connect failures \(connectFailures), connect timeouts \(connectTimeouts), idle timeouts \(idleTimeouts), "
            + "buffer ring dry \(bufferRingDry), bytes down->up \(bytesDownstreamToUpstream), up->down \(bytesUpstreamToDownstream)"
    }

    public static func + (a: ShardStats, b: ShardStats) -> ShardStats {
        var r = ShardStats()
        r.accepted = a.accepted + b.accepted
        r.rejectedNoSlot = a.rejectedNoSlot + b.rejectedNoSlot
        r.upstreamConnected = a.upstreamConnected + b.upstreamConnected
        r.connectFailures = a.connectFailures + b.connectFailures
        r.connectTimeouts = a.connectTimeouts + b.connectTimeouts
        r.completed = a.completed + b.completed
        r.aborted = a.aborted + b.aborted
        r.idleTimeouts = a.idleTimeouts + b.idleTimeouts
        r.cutOnDrain = a.cutOnDrain + b.cutOnDrain
        r.bufferRingDry = a.bufferRingDry + b.bufferRingDry
        r.bytesDownstreamToUpstream = a.bytesDownstreamToUpstream + b.bytesDownstreamToUpstream
        r.bytesUpstreamToDownstream = a.bytesUpstreamToDownstream + b.bytesUpstreamToDownstream
        r.active = a.active + b.active
        r.snapshotsAdopted = a.snapshotsAdopted + b.snapshotsAdopted
        r.headBuffersExhausted = a.headBuffersExhausted + b.headBuffersExhausted
        r.poolOverflows = a.poolOverflows + b.poolOverflows
        r.clientCertTooLong = a.clientCertTooLong + b.clientCertTooLong
        r.sourceBindFailures = a.sourceBindFailures + b.sourceBindFailures
        r.sniUnrouted = a.sniUnrouted + b.sniUnrouted
        r.sniTimeouts = a.sniTimeouts + b.sniTimeouts
        r.chainUnmatched = a.chainUnmatched + b.chainUnmatched
        r.chainRefused = a.chainRefused + b.chainRefused
        r.inspectTimeouts = a.inspectTimeouts + b.inspectTimeouts
        r.originalDestinationLoops = a.originalDestinationLoops + b.originalDestinationLoops
        r.h2Connections = a.h2Connections + b.h2Connections
        r.h2Streams = a.h2Streams + b.h2Streams
        r.h2StreamsRefused = a.h2StreamsRefused + b.h2StreamsRefused
        r.h2StreamsResetByClient = a.h2StreamsResetByClient + b.h2StreamsResetByClient
        r.h2GoawayProtocol = a.h2GoawayProtocol + b.h2GoawayProtocol
        r.h2GoawayFlood = a.h2GoawayFlood + b.h2GoawayFlood
        r.h2HeadersTooLarge = a.h2HeadersTooLarge + b.h2HeadersTooLarge
        return r
    }
}
