// One proxied TCP connection as it lives in a shard's slab: plain stored fields reached through a
// pointer, so the hot path pays no ARC or exclusivity checks.
import CURing
import WeirBalance
import WeirConfig
#if canImport(Glibc)
import Glibc
#endif

/// One direction of a connection: bytes received on `src` wait in a queue of ring buffers until
/// they are sent on `dst`. Flow 0 is downstream to upstream, flow 1 upstream to downstream.
struct Flow {
    /// A multishot recv is pending on the source socket.
    var recvArmed = false
    /// A cancel was sent because the queue reached its cap; the recv ends with -ECANCELED.
    var cancelRequested = false
    /// The source sent FIN (or the read side failed).
    var sourceEnded = false
    /// The recv stopped because the buffer ring was empty; re-armed when buffers come back.
    var starved = false
    /// We sent FIN to the destination (shutdown SHUT_WR) after flushing.
    var destinationShut = false
    var sending = false
    /// Queue of buffer ids, linked through the shard's `bufferNext` table.
    var head: Int32 = -1
    var tail: Int32 = -1
    var queued: Int32 = 0
    /// Bytes of the head buffer already sent (short writes).
    var sendOffset: Int32 = 0
    var bytes: Int64 = 0
    /// Splice data path only: the pipe between source and destination, and what it holds.
    var pipeRead: Int32 = -1
    var pipeWrite: Int32 = -1
    var pipeBytes = 0
    var pollArmed = false
}

enum ConnectionState: UInt8 { case free, connecting, open, closing }

struct Connection {
    var generation: UInt32 = 0
    var state = ConnectionState.free
    var downstreamFD: Int32 = -1
    var upstreamFD: Int32 = -1
    var inflight: Int32 = 0
    var flows: (Flow, Flow) = (Flow(), Flow())
    /// The snapshot this connection started on; kept (retained) until it ends.
    var snapshot: Unmanaged<Snapshot>? = nil
    var clusterIndex: Int32 = 0
    var endpointIndex: Int32 = -1
    var attempts: Int32 = 0
    var exclusions = Exclusions()
    /// The client address hashed, for ring_hash and maglev.
    var hash: UInt64 = 0
    /// The shard's balancer counts this connection as active on `endpointIndex`.
    var countedActive = false
    /// Stats slots (see StatsRegistry): the listener, and the endpoint while connecting or open.
    var listenerSlot: Int32 = -1
    var endpointSlot: Int32 = -1
    var lastActivity: Int64 = 0
    var idleTimeout: Int64 = 0
    /// Read by the kernel when the connect is submitted.
    var address = sockaddr_storage()
    var addressLength: socklen_t = 0
    var connectTimeout = __kernel_timespec()
}

extension UnsafeMutablePointer where Pointee == Connection {
    /// Flow `f` (0 or 1) of this connection, in place.
    @inline(__always) func flow(_ f: Int) -> UnsafeMutablePointer<Flow> {
        let base = UnsafeMutableRawPointer(self)
        let offset = f == 0 ? Connection.flow0Offset : Connection.flow1Offset
        return (base + offset).assumingMemoryBound(to: Flow.self)
    }
}

extension Connection {
    static let flow0Offset = MemoryLayout<Connection>.offset(of: \Connection.flows.0)!
    static let flow1Offset = MemoryLayout<Connection>.offset(of: \Connection.flows.1)!
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
        return r
    }
}
