// One proxied TCP connection as it lives in a shard's slab: plain stored fields reached through a
// pointer, so the hot path pays no ARC or exclusivity checks.
import CURing
import WeirBalance
import WeirConfig
import WeirCore
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

/// A downstream connection's life. `peeking` and `connecting` are TCP's (an HTTP connection is
/// open from its accept: its exchanges have their own phases).
enum ConnectionState: UInt8 {
    case free
    /// A listener with filter chains: its inspectors read the first bytes (until
    /// `helloDeadline`, when it is set) to choose the chain whose session takes the connection.
    case inspecting
    /// tcp listener with SNI routes: reading the ClientHello (until `helloDeadline`) to pick a
    /// route; nothing is connected yet.
    case peeking
    /// The upstream connect is in flight (client bytes wait queued).
    case connecting
    case open
    /// Ended: waiting for the last completion before the slot is freed.
    case closing

    /// Client bytes are queued, not sent: there is no upstream yet.
    var beforeUpstream: Bool { self == .inspecting || self == .peeking || self == .connecting }
}

/// Which protocol's session a connection runs: chosen at accept from its listener; an HTTP
/// connection whose client opens with the HTTP/2 preface becomes `h2` (its streams are `http`
/// slots of their own, carried by it).
enum SessionKind: UInt8 { case tcp, http, h2 }

/// What an HTTP exchange's slot answers over: its own socket, or a stream of an HTTP/2
/// connection (Shard.h2Streams holds which).
enum HTTPCarrier: UInt8 { case socket, h2Stream }

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
    /// Where the client was going (its original destination, else the listener's address), read
    /// once at accept on listeners that hand off or choose chains; nil elsewhere.
    var destination: AddressKey? = nil
    /// While `inspecting` or `peeking`: when the first bytes must have arrived (0: no limit).
    /// While `open` with TLS to the upstream: when its handshake must have ended.
    var helloDeadline: Int64 = 0
    /// Its protocol; an HTTP connection's current exchange is `ex`.
    var kind = SessionKind.tcp
    var carrier = HTTPCarrier.socket
    /// HTTP: requests begun on this connection (the first may turn out to be the h2 preface).
    var requestsSeen: UInt32 = 0
    /// TLS terminated here: its state is in Shard.tlsStates at this slot.
    var isTLS = false
    /// TLS to the upstream (a TCP session): its state is in Shard.tcpUpstreamTLS at this slot.
    var upstreamIsTLS = false
    /// The mTLS peer's XFCC element in Shard.peerText: its length, 0 for none (no client
    /// certificate), -1 until a request asked, -2 for a peer whose element did not fit.
    var peerCertLength: Int16 = -1
    var listenerIndex: Int32 = -1
    var ex = HTTPExchange()
    /// Access log: bytes of the kept method and path, and the byte counts at the last line.
    var logLength: Int16 = 0
    var logBytesIn: Int64 = 0
    var logBytesOut: Int64 = 0
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

