// nghttp2's callbacks, routed to the shard that owns the session. A C callback cannot capture
// anything, and a shard is generic over its I/O backend, so each session's user_data points at its
// connection slot's H2Context, which names the shard's bridge (one concrete class per shard whose
// closures call back into the generic shard) and the slot.
import CNGHTTP2

final class H2Bridge {
    /// (parent slot, bytes): copy frame bytes out; returns how many were taken (0: full).
    var send: (Int, UnsafePointer<UInt8>, Int) -> Int = { _, _, _ in 0 }
    /// (parent slot, stream id, category)
    var beginHeaders: (Int, Int32, Int32) -> Int32 = { _, _, _ in 0 }
    /// (parent slot, stream id, category, name, value)
    var header: (Int, Int32, Int32, UnsafeBufferPointer<UInt8>, UnsafeBufferPointer<UInt8>) -> Int32 = { _, _, _, _, _ in 0 }
    /// (parent slot, frame)
    var frameRecv: (Int, UnsafePointer<nghttp2_frame>) -> Int32 = { _, _ in 0 }
    /// (parent slot, stream id, data)
    var dataChunk: (Int, Int32, UnsafeBufferPointer<UInt8>) -> Int32 = { _, _, _ in 0 }
    /// (parent slot, stream id, error code)
    var streamClose: (Int, Int32, UInt32) -> Int32 = { _, _, _ in 0 }
    /// (parent slot, frame)
    var frameSend: (Int, UnsafePointer<nghttp2_frame>) -> Int32 = { _, _ in 0 }
    /// (parent slot, stream id, room, flags): response body bytes for a DATA frame.
    var dataRead: (Int, Int32, UnsafeMutablePointer<UInt8>, Int, UnsafeMutablePointer<UInt32>) -> Int = { _, _, _, _, _ in 0 }

    /// The callback table every session of the process shares (nghttp2 copies it per session).
    static let callbacks: OpaquePointer = {
        var cbs: OpaquePointer? = nil
        precondition(nghttp2_session_callbacks_new(&cbs) == 0, "nghttp2: out of memory")
        nghttp2_session_callbacks_set_send_callback(cbs) { _, data, length, _, user in
            let ctx = user!.assumingMemoryBound(to: H2Context.self).pointee
            let n = ctx.bridge.takeUnretainedValue().send(ctx.slot, data!, length)
            return n > 0 ? n : Int(NGHTTP2_ERR_WOULDBLOCK.rawValue)
        }
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs) { _, frame, user in
            let ctx = user!.assumingMemoryBound(to: H2Context.self).pointee
            return ctx.bridge.takeUnretainedValue().beginHeaders(ctx.slot, weir_h2_frame_stream(frame), Int32(weir_h2_headers_category(frame)))
        }
        nghttp2_session_callbacks_set_on_header_callback(cbs) { _, frame, name, nameLength, value, valueLength, _, user in
            let ctx = user!.assumingMemoryBound(to: H2Context.self).pointee
            return ctx.bridge.takeUnretainedValue().header(ctx.slot, weir_h2_frame_stream(frame), Int32(weir_h2_headers_category(frame)),
                                                           UnsafeBufferPointer(start: name, count: nameLength),
                                                           UnsafeBufferPointer(start: value, count: valueLength))
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs) { _, frame, user in
            let ctx = user!.assumingMemoryBound(to: H2Context.self).pointee
            return ctx.bridge.takeUnretainedValue().frameRecv(ctx.slot, frame!)
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs) { _, _, stream, data, length, user in
            let ctx = user!.assumingMemoryBound(to: H2Context.self).pointee
            return ctx.bridge.takeUnretainedValue().dataChunk(ctx.slot, stream, UnsafeBufferPointer(start: data, count: length))
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs) { _, stream, error, user in
            let ctx = user!.assumingMemoryBound(to: H2Context.self).pointee
            return ctx.bridge.takeUnretainedValue().streamClose(ctx.slot, stream, error)
        }
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs) { _, frame, user in
            let ctx = user!.assumingMemoryBound(to: H2Context.self).pointee
            return ctx.bridge.takeUnretainedValue().frameSend(ctx.slot, frame!)
        }
        return cbs!
    }()

    /// The data provider of every response with a body: its bytes come from the stream's pending
    /// range (see H2Stream), found by stream id.
    static let provider: nghttp2_data_source_read_callback = { _, stream, buffer, length, flags, _, user in
        let ctx = user!.assumingMemoryBound(to: H2Context.self).pointee
        return ctx.bridge.takeUnretainedValue().dataRead(ctx.slot, stream, buffer!, length, flags!)
    }
}

/// Per connection slot: what a session's user_data points at.
struct H2Context {
    var bridge: Unmanaged<H2Bridge>
    var slot: Int
}

/// An HTTP/2 connection's life (the socket's slot; its streams are slots of their own).
enum H2Phase: UInt8 {
    case none
    case open
    /// GOAWAY sent (drain, reload), or the client ended its side: streams in flight finish,
    /// new ones are refused; the connection closes when the last ends.
    case goingAway
    /// nghttp2 failed the session (a protocol error, a flood): nothing more is read; the
    /// connection closes once its last frames (a GOAWAY) are out.
    case failed
}

/// An HTTP/2 connection: the nghttp2 session and the streams it carries, in a side table by slot.
struct H2Connection {
    var session: OpaquePointer? = nil
    var phase = H2Phase.none
    /// Where nghttp2's frames are copied and sent from: the connection's own memory (not a head
    /// buffer: an idle h2 connection must not hold one of the shard's few).
    var out: UnsafeMutableRawPointer? = nil
    var outLength: Int32 = 0
    var outSent: Int32 = 0
    /// Stream slots alive, linked through H2Stream.next.
    var streams: Int32 = 0
    var first: Int32 = -1
    /// Inside nghttp2_session_send or the credit loop: a nested flush leaves the work to it.
    var flushing = false
    /// Rapid reset: streams the client may still reset now (refilled at http2_resets_per_second
    /// up to http2_reset_burst), and when they were last refilled.
    var resetTokens: Int64 = 0
    var resetRefilled: Int64 = 0
}

/// Where a stream's response stands in its translation from the exchange's HTTP/1.1 bytes.
enum H2ResponsePhase: UInt8 {
    /// The next bytes are a response head (an interim one, or the final one).
    case head
    /// The final head went as HEADERS; body bytes become DATA frames.
    case body
    /// The exchange finished: the rest of the body (if any) and the end of the stream follow.
    case done
}

/// How the body of a stream's HTTP/1.1 response is framed, to take the payload out of it.
enum H2BodyFraming: UInt8 { case none, length, chunked, untilClose }

/// Where the de-chunker stands in a chunked response body.
enum ChunkPhase: UInt8 { case size, extensions, data, dataEnd, trailers, done }

/// A stream slot's HTTP/2 side: its connection, the request as it is turned into HTTP/1.1 bytes
/// on the slot's flow 0, and the response as it is turned back into frames.
struct H2Stream {
    var parent: Int32 = -1
    var parentGeneration: UInt32 = 0
    var id: Int32 = 0
    var next: Int32 = -1
    /// The nghttp2 stream still exists (the slot holds an inflight count for it).
    var open = false
    /// Request: the head buffer it is written into while the header block arrives; the front
    /// (request line and headers) grows up from 0, pseudo-header values and cookies down from
    /// the end; the header block was over the limits; the request's body framing; END_STREAM.
    var head: Int32 = -1
    var front: Int32 = 0
    var back: Int32 = 0
    var method: (Int32, Int32) = (0, 0)
    var path: (Int32, Int32) = (0, 0)
    var authority: (Int32, Int32) = (0, 0)
    var cookies: (Int32, Int32) = (0, 0)
    var headerCount: Int32 = 0
    var lineWritten = false
    var tooLarge = false
    var badPseudo = false
    var contentLength = false
    var chunkedRequest = false
    var trailersStarted = false
    var requestEnded = false
    var grpc = false
    /// The client reset the stream (or nghttp2 did) before its exchange started or while it runs.
    var peerClosed = false
    /// A trailer section over the header limits, or one that found no buffer: the stream fails.
    var trailerBytes: Int32 = 0
    var trailersLost = false
    /// DATA payload bytes received and not yet given back to the client's window: it is given
    /// back only as the bytes leave for the upstream, so a stream holds at most one window.
    var unconsumed: Int = 0
    /// Response.
    var response = H2ResponsePhase.head
    var framing = H2BodyFraming.none
    var remaining: UInt64 = 0
    var chunk = ChunkPhase.size
    var chunkRemaining: UInt64 = 0
    /// The bytes the exchange handed over (its "send"), and how many were taken into frames.
    var pendingPointer: UnsafeMutableRawPointer? = nil
    var pendingCount: Int32 = 0
    var pendingUsed: Int32 = 0
    var deferred = false
    var inCredits = false
    /// Response trailers (a chunked body's trailer section as h2 fields), in a head buffer.
    var trailers: Int32 = -1
    var trailerLength: Int32 = 0
    var trailerLine: Int32 = 0
}

/// Deferred work a session's callbacks leave for after nghttp2 returns: the exchange runs only
/// outside nghttp2 (it may submit frames and flush, which nghttp2 forbids inside its callbacks).
struct H2Event {
    enum Kind: UInt8 { case start, data, closed, resetAfterResponse }
    var slot: Int32
    var generation: UInt32
    var kind: Kind
}
