// One proxied TCP connection as it lives in a shard's slab: plain stored fields reached through a
// pointer, so the hot path pays no ARC or exclusivity checks.
import CURing
import WeirBalance
import WeirConfig
import WeirHTTP
#if canImport(Glibc)
import Glibc
#endif

/// One direction of a connection: bytes received on `src` wait in a queue of ring buffers until
/// they are sent on `dst`. Flow 0 is downstream to upstream, flow 1 upstream to downstream.
/// Where the multishot recv on one socket stands. One value instead of three flags, so a recv
/// cannot be both pending and waiting for buffers, or be cancelled when none is pending.
enum RecvState: UInt8 {
    /// Nothing pending: an arm may start one.
    case idle
    /// A multishot recv is pending.
    case armed
    /// Pending, and a cancel was sent (the queue reached its cap): it ends with -ECANCELED.
    case cancelling
    /// Stopped because the buffer ring was empty; a SlotRef in the shard's starved list re-arms
    /// it when buffers come back.
    case starved

    var pending: Bool { self == .armed || self == .cancelling }
}

struct Flow {
    /// The recv on the source socket.
    var recv = RecvState.idle
    /// The source sent FIN (or the read side failed).
    var sourceEnded = false
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
    /// HTTP: a head Weir wrote (or a response it makes) waiting to go out before any body bytes:
    /// `outLength` bytes at `outPointer`, `outSent` of them sent; `outBuffer` is the shard's head
    /// buffer holding them.
    var outPointer: UnsafeMutableRawPointer? = nil
    var outLength: Int32 = 0
    var outSent: Int32 = 0
    var outBuffer: Int32 = -1
    /// HTTP: how the body in this direction ends, and how much of it is left.
    var body = BodyState.none
    var bodyRemaining: UInt64 = 0
    var scanner = ChunkedScanner()
    /// HTTP: bytes at the head of the queue (from `sendOffset`) known to be body and not yet sent.
    var segment: Int32 = 0
}

enum BodyState: UInt8 {
    /// No body, or all of it has been framed.
    case none
    case contentLength
    case chunked
    /// Until the source closes: a response without length, or a tunnel after 101.
    case untilClose
}

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
    var clientKeepAlive = true
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
    /// A response head went to the client: a failure now can only cut the connection.
    var responseStarted = false
    var responseHeadDone = false
    var bodySent = false
    var requestSent = false
    var upstreamKeepAlive = false
    var reused = false
    var freeRetryUsed = false
    var retries: Int32 = 0
    var local = false
    /// The balancer's hash for this request (header, cookie, path or the client's address).
    var hash: UInt64 = 0
    /// The forwarded request head is written (body bytes may follow it upstream).
    var headWritten = false
    /// Waiting for a free head buffer: 1 for the request head, 2 for the response head.
    var waitingForBuffer: UInt8 = 0
}

/// A downstream connection's life. `peeking` and `connecting` are TCP's (an HTTP connection is
/// open from its accept: its exchanges have their own phases).
enum ConnectionState: UInt8 {
    case free
    /// tcp listener with SNI routes: reading the ClientHello (until `helloDeadline`) to pick a
    /// route; nothing is connected yet.
    case peeking
    /// The upstream connect is in flight (client bytes wait queued).
    case connecting
    case open
    /// Ended: waiting for the last completion before the slot is freed.
    case closing

    /// Client bytes are queued, not sent: there is no upstream yet.
    var beforeUpstream: Bool { self == .peeking || self == .connecting }
}

/// Which protocol's session a connection runs: chosen at accept from its listener, never changed.
enum SessionKind: UInt8 { case tcp, http }

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
    /// While `peeking`: when the ClientHello must have arrived.
    var helloDeadline: Int64 = 0
    /// Its protocol; an HTTP connection's current exchange is `ex`.
    var kind = SessionKind.tcp
    /// TLS terminated here: its state is in Shard.tlsStates at this slot.
    var isTLS = false
    var listenerIndex: Int32 = -1
    var ex = HTTPExchange()
    /// Access log: bytes of the kept method and path, and the byte counts at the last line.
    var logLength: Int16 = 0
    var logBytesIn: Int64 = 0
    var logBytesOut: Int64 = 0
}

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
    /// HTTP: requests refused with 503 because no head buffer was free, or because an
    /// endpoint's pool (or the upstream slab) was at its connection limit.
    public var headBuffersExhausted = 0
    public var poolOverflows = 0
    /// tcp listeners with SNI routes: connections closed because no route fit their server
    /// name, and because the ClientHello did not arrive within client_hello_timeout.
    public var sniUnrouted = 0
    public var sniTimeouts = 0
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
        r.sniUnrouted = a.sniUnrouted + b.sniUnrouted
        r.sniTimeouts = a.sniTimeouts + b.sniTimeouts
        return r
    }
}
