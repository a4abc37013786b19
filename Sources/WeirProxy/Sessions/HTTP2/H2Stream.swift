// HTTP/2 streams as exchanges. Each stream takes a connection slot of its own (carrier .h2Stream)
// and runs the ordinary HTTP exchange on it: its request arrives as HTTP/1.1 bytes on the slot's
// flow 0 (a head written from the header block, the body from DATA frames, chunked when the client
// gave no length), and the bytes the exchange "sends" to the client on flow 1 are turned back into
// HEADERS and DATA frames. The internal message form is therefore HTTP/1.1 as Weir itself writes
// and checks it, parsed again on the way in (every h2 request passes the same parser and limits
// as an HTTP/1.1 one, so framing cannot be smuggled through the translation).
import CNGHTTP2
import COpenSSL
import WeirConfig
import WeirCore
import WeirHTTP
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

extension Shard {
    @inline(__always) func h2s(_ s: UnsafeMutablePointer<Connection>) -> UnsafeMutablePointer<H2Stream> { h2Streams + slot(of: s) }

    /// The stream slot nghttp2 knows by `id` on the connection in slot `parent`, if it is still that stream's.
    func h2Stream(_ parent: Int, _ id: Int32) -> UnsafeMutablePointer<Connection>? {
        guard let session = h2Connections[parent].session,
              let p = nghttp2_session_get_stream_user_data(session, id) else { return nil }
        let packed = UInt(bitPattern: p)
        let slot = Int(packed >> 32) - 1
        let generation = UInt32(truncatingIfNeeded: packed)
        guard slot >= 0, slot < limits.maxConnectionsPerShard else { return nil }
        let s = connections + slot
        guard s.pointee.generation == generation, s.pointee.carrier == .h2Stream, h2Streams[slot].parent == Int32(parent),
              h2Streams[slot].id == id else { return nil }
        return s
    }

    /// The HTTP/2 connection a stream slot belongs to, while it is that connection's.
    func h2Parent(_ s: UnsafeMutablePointer<Connection>) -> UnsafeMutablePointer<Connection>? {
        let st = h2s(s)
        guard st.pointee.parent >= 0 else { return nil }
        let p = connections + Int(st.pointee.parent)
        guard p.pointee.generation == st.pointee.parentGeneration, p.pointee.kind == .h2, p.pointee.state == .open else { return nil }
        return p
    }

    /// The connection whose socket (and TLS) a request came over: the slot itself, or a stream's connection.
    func socketConnection(_ c: UnsafeMutablePointer<Connection>) -> UnsafeMutablePointer<Connection> {
        guard c.pointee.carrier == .h2Stream else { return c }
        let st = h2s(c)
        let p = connections + Int(st.pointee.parent)
        return p.pointee.generation == st.pointee.parentGeneration ? p : c
    }

    /// Head buffers HTTP/2 streams leave to the rest of the shard (forwarded heads, responses,
    /// TLS records, HTTP/1.1): a stream is refused, and a body cut, rather than take them, so
    /// streams waiting to forward cannot hold every buffer the forwarding needs.
    var h2HeadReserve: Int { max(8, limits.headBuffersPerShard / 8) }

    // MARK: Callbacks (nghttp2 is running: only buffers and stream state change here)

    func h2BeginHeaders(_ parent: Int, _ id: Int32, _ category: Int32) -> Int32 {
        guard category == Int32(NGHTTP2_HCAT_REQUEST.rawValue), let session = h2Connections[parent].session else { return 0 }
        let p = connections + parent
        guard h2Connections[parent].phase == .open, freeCount > 0, headFreeCount > h2HeadReserve, let head = takeHeadBuffer() else {
            if headFreeCount == 0 { control.stats.pointee.headBuffersExhausted += 1 }
            _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, NGHTTP2_REFUSED_STREAM.rawValue)
            return 0
        }
        freeCount -= 1
        let slot = Int(freeSlots[freeCount])
        highWater = max(highWater, slot + 1)
        active += 1
        let s = connections + slot
        let generation = s.pointee.generation
        s.pointee = Connection()
        s.pointee.generation = generation
        s.pointee.kind = .http
        s.pointee.carrier = .h2Stream
        s.pointee.state = .open
        s.pointee.snapshot = Unmanaged.passRetained(snapshotOf(p))
        s.pointee.listenerIndex = p.pointee.listenerIndex
        s.pointee.listenerSlot = p.pointee.listenerSlot
        s.pointee.idleTimeout = p.pointee.idleTimeout
        s.pointee.lastActivity = now
        s.pointee.hash = p.pointee.hash
        // The nghttp2 stream refers to the slot until it closes.
        s.pointee.inflight = 1
        (clientText + slot * Shard.clientTextBytes).update(from: clientText + parent * Shard.clientTextBytes, count: Shard.clientTextBytes)
        let st = h2Streams + slot
        st.pointee = H2Stream()
        st.pointee.parent = Int32(parent)
        st.pointee.parentGeneration = p.pointee.generation
        st.pointee.id = id
        st.pointee.open = true
        st.pointee.head = head
        st.pointee.back = Int32(limits.bufferBytes)
        st.pointee.next = h2Connections[parent].first
        h2Connections[parent].first = Int32(slot)
        h2Connections[parent].streams += 1
        let packed = UInt(slot + 1) << 32 | UInt(generation)
        _ = nghttp2_session_set_stream_user_data(session, id, UnsafeMutableRawPointer(bitPattern: packed))
        return 0
    }

    func h2Header(_ parent: Int, _ id: Int32, _ category: Int32, _ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Int32 {
        guard let s = h2Stream(parent, id), s.pointee.state == .open else { return 0 }
        let st = h2s(s)
        if category != Int32(NGHTTP2_HCAT_REQUEST.rawValue) {
            // Trailers of a request body: they go after the last chunk; a body with a length
            // cannot carry them in HTTP/1.1 and they are dropped.
            guard st.pointee.chunkedRequest, !st.pointee.requestEnded else { return 0 }
            // The same limits as the header block: a trailer section cannot grow past them.
            let limits = httpListener(s).limits
            st.pointee.trailerBytes += Int32(name.count + value.count + 4)
            st.pointee.headerCount += 1
            if Int(st.pointee.trailerBytes) > limits.maxHeaderBytes || Int(st.pointee.headerCount) > limits.maxHeaderCount * 2 + 4 {
                control.stats.pointee.h2HeadersTooLarge += 1
                return h2Overflow(parent, id, s)
            }
            if !st.pointee.trailersStarted { st.pointee.trailersStarted = true; if !h2Append(s, "0\r\n") { return h2Overflow(parent, id, s) } }
            guard h2Append(s, name), h2Append(s, ": "), h2Append(s, value), h2Append(s, "\r\n") else { return h2Overflow(parent, id, s) }
            return 0
        }
        guard st.pointee.head >= 0, !st.pointee.tooLarge else { return 0 }
        let http = httpListener(s)
        st.pointee.headerCount += 1
        if st.pointee.headerCount > Int32(http.limits.maxHeaderCount) + 4 { st.pointee.tooLarge = true; return 0 }
        if name.first == UInt8(ascii: ":") {
            // nghttp2 has checked that pseudo-headers come first, once each, and are the request's.
            guard let r = h2PutBack(st, value) else { st.pointee.tooLarge = true; return 0 }
            switch name.count {
            case 5 where name[1] == UInt8(ascii: "p"): st.pointee.path = r
            case 7 where name[1] == UInt8(ascii: "m"): st.pointee.method = r
            case 10 where name[1] == UInt8(ascii: "a"): st.pointee.authority = r
            default: break  // :scheme (X-Forwarded-Proto comes from the connection)
            }
            return 0
        }
        if !st.pointee.lineWritten { h2WriteRequestLine(s) }
        if equalsLower(name, "host") && st.pointee.authority.1 > 0 { return 0 }  // :authority wins (RFC 9113 8.3.1)
        if equalsLower(name, "cookie") {
            // Crumbs are joined into one field for HTTP/1.1 (RFC 9113 8.2.3), at the end.
            guard h2PutCookie(st, value) else { st.pointee.tooLarge = true; return 0 }
            return 0
        }
        if equalsLower(name, "content-length") { st.pointee.contentLength = true }
        if equalsLower(name, "content-type") && value.count >= 16 && equalsLower(UnsafeBufferPointer(rebasing: value[0..<16]), "application/grpc") {
            st.pointee.grpc = true
        }
        guard h2PutFront(st, name), h2PutFront(st, ": "), h2PutFront(st, value), h2PutFront(st, "\r\n") else { st.pointee.tooLarge = true; return 0 }
        return 0
    }

    func h2FrameRecv(_ parent: Int, _ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let type = weir_h2_frame_type(frame), flags = weir_h2_frame_flags(frame), id = weir_h2_frame_stream(frame)
        if type == UInt8(NGHTTP2_RST_STREAM.rawValue) && !h2ResetAllowed(parent) {
            // Rapid reset (CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM, and nghttp2 stops reading.
            if let session = h2Connections[parent].session { _ = nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM.rawValue) }
            return Int32(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue)
        }
        let endStream = flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        if type == UInt8(NGHTTP2_HEADERS.rawValue) && weir_h2_headers_category(frame) == Int32(NGHTTP2_HCAT_REQUEST.rawValue) {
            guard let s = h2Stream(parent, id), s.pointee.state == .open else { return 0 }
            h2HeadersDone(parent, s, endStream: endStream)
            return 0
        }
        guard endStream, type == UInt8(NGHTTP2_DATA.rawValue) || type == UInt8(NGHTTP2_HEADERS.rawValue),
              let s = h2Stream(parent, id), s.pointee.state == .open else { return 0 }
        let st = h2s(s)
        guard !st.pointee.requestEnded else { return 0 }
        st.pointee.requestEnded = true
        if st.pointee.chunkedRequest && !h2Append(s, st.pointee.trailersStarted ? "\r\n" : "0\r\n\r\n") { return h2Overflow(parent, id, s) }
        h2Queue(s, .data)
        return 0
    }

    /// A token bucket per connection: http2_reset_burst resets at once, http2_resets_per_second after.
    func h2ResetAllowed(_ parent: Int) -> Bool {
        let h = h2Connections + parent
        guard let settings = httpListener(connections + parent).http2 else { return true }
        // Capped: a bucket is full after burst / rate seconds, and the product must not overflow.
        let elapsed = min(max(0, now - h.pointee.resetRefilled), 100_000_000_000)
        let earned = elapsed * Int64(settings.resetsPerSecond) / 1_000_000_000
        if earned > 0 {
            h.pointee.resetTokens = min(Int64(settings.resetBurst), h.pointee.resetTokens + earned)
            h.pointee.resetRefilled = now
        }
        guard h.pointee.resetTokens > 0 else { return false }
        h.pointee.resetTokens -= 1
        return true
    }

    /// The request's header block is whole: finish the HTTP/1.1 head and start the exchange (or
    /// answer at once when the block was refused).
    func h2HeadersDone(_ parent: Int, _ s: UnsafeMutablePointer<Connection>, endStream: Bool) {
        let st = h2s(s)
        if !st.pointee.lineWritten { h2WriteRequestLine(s) }
        let isConnect = st.pointee.method.1 == 7 && equalsLower(h2Back(st, st.pointee.method), "connect")
        var status = 0
        if st.pointee.tooLarge { status = 431; control.stats.pointee.h2HeadersTooLarge += 1 }
        else if st.pointee.badPseudo { status = 400 }
        else if isConnect { status = 501 }  // CONNECT over HTTP/2 is not offered
        if status == 0 {
            var ok = h2PutCookieLine(st)
            if !endStream && !st.pointee.contentLength {
                ok = ok && h2PutFront(st, "transfer-encoding: chunked\r\n")
                st.pointee.chunkedRequest = true
            }
            ok = ok && h2PutFront(st, "\r\n")
            if !ok { status = 431; control.stats.pointee.h2HeadersTooLarge += 1 }
        }
        if status != 0 {
            releaseHeadBuffer(st.pointee.head)
            st.pointee.head = -1
            st.pointee.requestEnded = endStream
            s.pointee.state = .closing
            st.pointee.response = .done
            if let session = h2Connections[parent].session { h2Respond(session, st.pointee.id, status: status) }
            return
        }
        enqueue(s.flow(0), bid: buffers.count + Int(st.pointee.head), length: st.pointee.front)
        st.pointee.head = -1
        st.pointee.requestEnded = endStream
        h2Queue(s, .start)
    }

    func h2DataChunk(_ parent: Int, _ id: Int32, _ data: UnsafeBufferPointer<UInt8>) -> Int32 {
        guard let session = h2Connections[parent].session else { return 0 }
        guard let s = h2Stream(parent, id), s.pointee.state == .open, !h2s(s).pointee.requestEnded else {
            // The exchange is over (answered early): its body is read and dropped.
            _ = nghttp2_session_consume(session, id, data.count)
            return 0
        }
        let st = h2s(s)
        // Counted before it is stored: a chunk that does not fit is given back with the rest.
        st.pointee.unconsumed += data.count
        if st.pointee.chunkedRequest {
            // The chunk's size in hex, then CRLF, the data, CRLF.
            let ok = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { line -> Bool in
                var k = 0, shift = 0
                while (data.count >> shift) >= 16 { shift += 4 }
                while shift >= 0 {
                    let d = (data.count >> shift) & 15
                    line[k] = d < 10 ? UInt8(48 + d) : UInt8(87 + d)
                    k += 1
                    shift -= 4
                }
                line[k] = 13; line[k + 1] = 10
                return h2Append(s, UnsafeBufferPointer(rebasing: line[0..<(k + 2)]))
            }
            guard ok, h2Append(s, data), h2Append(s, "\r\n") else { return h2Overflow(parent, id, s) }
        } else {
            guard h2Append(s, data) else { return h2Overflow(parent, id, s) }
        }
        s.flow(0).pointee.bytes += Int64(data.count)
        // The client's window opens again only as its bytes leave for the upstream
        // (h2StreamWindow), so a stream holds at most one window of body.
        if h2Events.last.map({ $0.slot != Int32(slot(of: s)) || $0.kind != .data }) ?? true { h2Queue(s, .data) }
        return 0
    }

    /// No head buffer for more of a stream's body (or trailers over the limits): the stream is
    /// reset, what it sends from now on is dropped, and the connection goes on.
    func h2Overflow(_ parent: Int, _ id: Int32, _ s: UnsafeMutablePointer<Connection>) -> Int32 {
        if headFreeCount <= h2HeadReserve { control.stats.pointee.headBuffersExhausted += 1 }
        h2s(s).pointee.requestEnded = true
        h2s(s).pointee.peerClosed = true
        if let session = h2Connections[parent].session {
            _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, NGHTTP2_INTERNAL_ERROR.rawValue)
        }
        return 0
    }

    func h2StreamCloseCallback(_ parent: Int, _ id: Int32, _ error: UInt32) -> Int32 {
        guard let s = h2Stream(parent, id) else { return 0 }
        // An exchange not started yet never starts (a stream opened and reset in one read costs
        // no upstream request).
        h2s(s).pointee.peerClosed = true
        h2Queue(s, .closed)
        return 0
    }

    func h2FrameSent(_ parent: Int, _ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let type = weir_h2_frame_type(frame)
        if type == UInt8(NGHTTP2_GOAWAY.rawValue) {
            let e = weir_h2_goaway_error(frame)
            if e == NGHTTP2_ENHANCE_YOUR_CALM.rawValue { control.stats.pointee.h2GoawayFlood += 1 }
            else if e != NGHTTP2_NO_ERROR.rawValue { control.stats.pointee.h2GoawayProtocol += 1 }
            return 0
        }
        // Streams refused, by Weir or by nghttp2 (over the stream limit before SETTINGS is acknowledged).
        if type == UInt8(NGHTTP2_RST_STREAM.rawValue) && weir_h2_rst_error(frame) == NGHTTP2_REFUSED_STREAM.rawValue {
            control.stats.pointee.h2StreamsRefused += 1
            return 0
        }
        // The response ended while the client still sends its body: tell it to stop (RFC 9113
        // 8.1), once the end is out (a reset queued before it could overtake the last DATA).
        guard weir_h2_frame_flags(frame) & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0,
              let s = h2Stream(parent, weir_h2_frame_stream(frame)), !h2s(s).pointee.requestEnded else { return 0 }
        h2Queue(s, .resetAfterResponse)
        return 0
    }

    // MARK: Events (after nghttp2 returned)

    func h2StartExchange(_ s: UnsafeMutablePointer<Connection>) {
        guard s.pointee.state == .open, h2s(s).pointee.open, !h2s(s).pointee.peerClosed else { return }
        control.stats.pointee.h2Streams += 1
        processRequest(s)
    }

    /// nghttp2 closed the stream (its end went out, or the client or nghttp2 reset it).
    func h2StreamClosed(_ s: UnsafeMutablePointer<Connection>) {
        let st = h2s(s)
        guard st.pointee.open else { return }
        st.pointee.open = false
        s.pointee.inflight -= 1
        if s.pointee.state == .open {
            control.stats.pointee.h2StreamsResetByClient += 1
            return abortHTTP(s)
        }
        finishIfIdle(s)
    }

    func h2ResetAfterResponse(_ s: UnsafeMutablePointer<Connection>) {
        let st = h2s(s)
        guard st.pointee.open, !st.pointee.requestEnded, let p = h2Parent(s), let session = h2(p).pointee.session else { return }
        _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), st.pointee.id, NGHTTP2_NO_ERROR.rawValue)
        h2Flush(p)
    }

    // MARK: The exchange's side

    /// The exchange "sends" response bytes to the client: a head becomes HEADERS at once, body
    /// bytes wait as the stream's pending range until nghttp2 asks for DATA. The send completes
    /// (is credited) once they are in frames.
    func h2StreamSend(_ s: UnsafeMutablePointer<Connection>, _ pointer: UnsafeMutableRawPointer, _ count: Int) {
        guard let p = h2Parent(s), let session = h2(p).pointee.session else { return abortHTTP(s) }
        let st = h2s(s)
        s.flow(1).pointee.sending = true
        st.pointee.pendingPointer = pointer
        st.pointee.pendingCount = Int32(count)
        st.pointee.pendingUsed = 0
        if st.pointee.response == .head {
            guard h2SubmitHead(s, session, pointer, count) else {
                Log.debug("shard \(index): HTTP/2 stream \(st.pointee.id): a response head HTTP/2 cannot carry")
                return abortHTTP(s)
            }
            h2Credit(s)
        } else if st.pointee.deferred {
            st.pointee.deferred = false
            _ = nghttp2_session_resume_data(session, st.pointee.id)
        }
        h2Flush(p)
    }

    func h2Credit(_ s: UnsafeMutablePointer<Connection>) {
        let st = h2s(s)
        guard !st.pointee.inCredits else { return }
        st.pointee.inCredits = true
        h2Credits.append(SlotRef(slot: slot(of: s), generation: s.pointee.generation))
    }

    /// Completes the sends of streams whose bytes went into frames; true when any did.
    func h2RunCredits() -> Bool {
        guard !h2Credits.isEmpty, !h2RunningCredits else { return false }
        h2RunningCredits = true
        defer { h2RunningCredits = false }
        var i = 0
        while i < h2Credits.count {
            let r = h2Credits[i]
            i += 1
            let s = connections + Int(r.slot)
            guard s.pointee.generation == r.generation, s.pointee.carrier == .h2Stream else { continue }
            let st = h2s(s)
            st.pointee.inCredits = false
            let used = st.pointee.pendingUsed
            guard used > 0, s.flow(1).pointee.sending else { continue }
            st.pointee.pendingPointer = nil
            st.pointee.pendingCount = 0
            st.pointee.pendingUsed = 0
            s.flow(1).pointee.sending = false
            guard s.pointee.state == .open else { continue }
            credit(s, s.flow(1), 1, used)
            pumpResponse(s)
            // Room on the stream's queue: the upstream's recv may go on (as after a socket send).
            if s.pointee.state == .open { rearmUpstreamIfRoom(s) }
        }
        h2Credits.removeAll(keepingCapacity: true)
        return true
    }

    /// The exchange on a stream finished (its last response byte was handed over): the stream
    /// ends when nghttp2 has sent the rest, and the slot goes when nghttp2 closes the stream.
    func h2ExchangeDone(_ s: UnsafeMutablePointer<Connection>) {
        let st = h2s(s)
        st.pointee.response = .done
        let p = h2Parent(s)
        if st.pointee.deferred, let p, let session = h2(p).pointee.session {
            st.pointee.deferred = false
            _ = nghttp2_session_resume_data(session, st.pointee.id)
        }
        closeHTTP(s)
        if let p { h2Flush(p) }
    }

    /// A stream's exchange was cut (an upstream that failed mid-response, a timeout): the stream
    /// is reset, and the slot goes when nghttp2 has closed it.
    func h2StreamAborted(_ s: UnsafeMutablePointer<Connection>) {
        let st = h2s(s)
        guard st.pointee.open, let p = h2Parent(s), let session = h2(p).pointee.session else { return }
        Log.debug("shard \(index): HTTP/2 stream \(st.pointee.id) reset: its exchange ended in \(s.pointee.ex.phase), request \(s.pointee.ex.request), response \(s.pointee.ex.response)")
        _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), st.pointee.id, NGHTTP2_INTERNAL_ERROR.rawValue)
        h2Flush(p)
    }

    /// Request bytes left for the upstream: give the client back the window they used. What
    /// is still queued (chunk framing included, so this errs on the side of holding) stays owed.
    func h2StreamWindow(_ s: UnsafeMutablePointer<Connection>) {
        let st = h2s(s)
        guard st.pointee.unconsumed > 0, st.pointee.open, !st.pointee.peerClosed,
              let p = h2Parent(s), let session = h2(p).pointee.session else { return }
        let given = st.pointee.unconsumed - min(st.pointee.unconsumed, unread(s.flow(0)))
        guard given > 0 else { return }
        _ = nghttp2_session_consume(session, st.pointee.id, given)
        st.pointee.unconsumed -= given
        h2Flush(p)
    }

    /// The stream slot is being freed: its buffers go, and its connection forgets it.
    func h2StreamFreed(_ s: UnsafeMutablePointer<Connection>) {
        let st = h2s(s)
        if st.pointee.head >= 0 { releaseHeadBuffer(st.pointee.head); st.pointee.head = -1 }
        if st.pointee.trailers >= 0 { releaseHeadBuffer(st.pointee.trailers); st.pointee.trailers = -1 }
        let me = Int32(slot(of: s))
        let pc = connections + Int(max(0, st.pointee.parent))
        if st.pointee.parent >= 0 && pc.pointee.generation == st.pointee.parentGeneration && pc.pointee.kind == .h2 {
            let h = h2(pc)
            var flush = false
            if st.pointee.unconsumed > 0, let session = h.pointee.session {
                // The stream is gone; the connection's window still owes its bytes.
                _ = nghttp2_session_consume_connection(session, st.pointee.unconsumed)
                st.pointee.unconsumed = 0
                flush = true
            }
            // Not flushed here: the flush could end the connection, which ends its streams, this
            // one among them, while it is being freed. At the end of the loop turn instead (the
            // WINDOW_UPDATE, and the close of a connection going away with no stream left).
            if flush || h.pointee.phase != .open {
                h2PendingFlushes.append(SlotRef(slot: slot(of: pc), generation: pc.pointee.generation))
            }
            if h.pointee.first == me { h.pointee.first = st.pointee.next }
            else {
                var q = h.pointee.first
                while q >= 0 {
                    if h2Streams[Int(q)].next == me { h2Streams[Int(q)].next = st.pointee.next; break }
                    q = h2Streams[Int(q)].next
                }
            }
            h.pointee.streams -= 1
        }
        st.pointee = H2Stream()
    }

    // MARK: Writing the request head

    func h2PutFront(_ st: UnsafeMutablePointer<H2Stream>, _ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        let n = Int32(bytes.count)
        guard st.pointee.front + n <= st.pointee.back else { return false }
        if n > 0 { (headBuffer(st.pointee.head) + Int(st.pointee.front)).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        st.pointee.front += n
        return true
    }

    func h2PutFront(_ st: UnsafeMutablePointer<H2Stream>, _ s: StaticString) -> Bool {
        h2PutFront(st, UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    /// Stores a value at the back of the head buffer: its (start, length).
    func h2PutBack(_ st: UnsafeMutablePointer<H2Stream>, _ bytes: UnsafeBufferPointer<UInt8>) -> (Int32, Int32)? {
        let n = Int32(bytes.count)
        guard st.pointee.back - n >= st.pointee.front else { return nil }
        st.pointee.back -= n
        if n > 0 { (headBuffer(st.pointee.head) + Int(st.pointee.back)).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        return (st.pointee.back, n)
    }

    func h2Back(_ st: UnsafeMutablePointer<H2Stream>, _ r: (Int32, Int32)) -> UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(start: (headBuffer(st.pointee.head) + Int(r.0)).assumingMemoryBound(to: UInt8.self), count: Int(r.1))
    }

    /// A cookie crumb, kept at the back: going down, its length in two bytes, then its bytes.
    func h2PutCookie(_ st: UnsafeMutablePointer<H2Stream>, _ value: UnsafeBufferPointer<UInt8>) -> Bool {
        guard value.count < 65536, st.pointee.back - Int32(value.count) - 2 >= st.pointee.front else { return false }
        if st.pointee.cookies.1 == 0 { st.pointee.cookies.0 = st.pointee.back }
        st.pointee.back -= 2
        let field = headBuffer(st.pointee.head) + Int(st.pointee.back)
        field.storeBytes(of: UInt8(value.count >> 8), as: UInt8.self)
        field.storeBytes(of: UInt8(value.count & 255), toByteOffset: 1, as: UInt8.self)
        _ = h2PutBack(st, value)
        st.pointee.cookies.1 += 1
        return true
    }

    /// One `cookie:` line joining the crumbs in the order they came.
    func h2PutCookieLine(_ st: UnsafeMutablePointer<H2Stream>) -> Bool {
        guard st.pointee.cookies.1 > 0 else { return true }
        guard h2PutFront(st, "cookie: ") else { return false }
        let base = headBuffer(st.pointee.head)
        var top = Int(st.pointee.cookies.0)
        for i in 0..<Int(st.pointee.cookies.1) {
            let n = Int(base.load(fromByteOffset: top - 2, as: UInt8.self)) << 8 | Int(base.load(fromByteOffset: top - 1, as: UInt8.self))
            if i > 0 { guard h2PutFront(st, "; ") else { return false } }
            guard h2PutFront(st, UnsafeBufferPointer(start: (base + top - 2 - n).assumingMemoryBound(to: UInt8.self), count: n)) else { return false }
            top -= n + 2
        }
        return h2PutFront(st, "\r\n")
    }

    /// The request line and Host, from the pseudo-headers, before the first regular header.
    func h2WriteRequestLine(_ s: UnsafeMutablePointer<Connection>) {
        let st = h2s(s)
        st.pointee.lineWritten = true
        let method = h2Back(st, st.pointee.method), path = h2Back(st, st.pointee.path), authority = h2Back(st, st.pointee.authority)
        // A method must be a token, and a target and authority must not contain what would
        // change how the request line or Host reads (nghttp2 has refused CR, LF and NUL).
        guard !method.isEmpty, method.allSatisfy(isToken),
              !path.isEmpty, path.allSatisfy({ $0 > 0x20 && $0 < 0x7f }),
              // origin-form only (or `*`): an absolute-form target would route by an authority
              // other than :authority (RFC 9113 8.3.1).
              path[0] == UInt8(ascii: "/") || (path.count == 1 && path[0] == UInt8(ascii: "*")),
              authority.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: "?") && $0 != UInt8(ascii: "#") && $0 != UInt8(ascii: "@") })
        else { st.pointee.badPseudo = true; return }
        var ok = h2PutFront(st, method) && h2PutFront(st, " ") && h2PutFront(st, path) && h2PutFront(st, " HTTP/1.1\r\n")
        if !authority.isEmpty { ok = ok && h2PutFront(st, "host: ") && h2PutFront(st, authority) && h2PutFront(st, "\r\n") }
        if !ok { st.pointee.tooLarge = true }
    }

    /// Appends request bytes (body, chunk framing, trailers) to a stream's flow 0, in head
    /// buffers. False when none is free.
    func h2Append(_ s: UnsafeMutablePointer<Connection>, _ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        let flow = s.flow(0)
        var from = 0
        while from < bytes.count {
            let tail = Int(flow.pointee.tail)
            if tail >= buffers.count && Int(bufferLength[tail]) < limits.bufferBytes {
                let n = min(limits.bufferBytes - Int(bufferLength[tail]), bytes.count - from)
                (bufferPointer(tail) + Int(bufferLength[tail])).copyMemory(from: bytes.baseAddress! + from, byteCount: n)
                bufferLength[tail] += Int32(n)
                from += n
                continue
            }
            guard headFreeCount > h2HeadReserve, let b = takeHeadBuffer() else { return false }
            enqueue(flow, bid: buffers.count + Int(b), length: 0)
        }
        return true
    }

    func h2Append(_ s: UnsafeMutablePointer<Connection>, _ text: StaticString) -> Bool {
        h2Append(s, UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    // MARK: Writing the response

    /// Turns the response head at `pointer` into HEADERS (an interim one, or the final one with
    /// its body to follow as DATA), or a gRPC error for a response Weir made to a gRPC request.
    /// The head's bytes count as used; what follows them in the same send is body.
    func h2SubmitHead(_ s: UnsafeMutablePointer<Connection>, _ session: OpaquePointer, _ pointer: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        let st = h2s(s)
        if st.pointee.grpc && s.pointee.ex.phase == .local && s.pointee.ex.status >= 400 {
            h2GRPCError(session, st.pointee.id, httpStatus: Int(s.pointee.ex.status))
            st.pointee.pendingUsed = Int32(count)
            st.pointee.response = .body
            st.pointee.framing = .none
            return true
        }
        var limits = httpListener(s).limits
        limits.maxHeaderBytes = self.limits.bufferBytes
        limits.maxHeaderCount = headers.capacity
        guard case .complete(let rh) = HTTPParser.parseResponse(UnsafeRawBufferPointer(start: pointer, count: count), requestMethod: s.pointee.ex.method,
                                                                 limits: limits, headers: headers) else { return false }
        let source = UnsafeRawBufferPointer(start: pointer, count: rh.headLength)
        var n = 0
        let names = h2Scratch
        var used = 0
        func add(_ name: UnsafeMutablePointer<UInt8>, _ nameLength: Int, _ value: UnsafeMutablePointer<UInt8>, _ valueLength: Int) {
            h2Nva[n] = nghttp2_nv(name: name, value: value, namelen: nameLength, valuelen: valueLength, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
            n += 1
        }
        // :status
        let status = names
        status[0] = UInt8(48 + rh.status / 100 % 10); status[1] = UInt8(48 + rh.status / 10 % 10); status[2] = UInt8(48 + rh.status % 10)
        used = 3
        add(h2StatusName, 7, status, 3)
        let raw = UnsafeMutableRawPointer(mutating: source.baseAddress!)
        let chunked = rh.framing == .chunked
        for i in 0..<headers.count where n < h2NvaCapacity {
            let nr = headers.name(i), vr = headers.value(i)
            let name = UnsafeBufferPointer(start: source.baseAddress!.assumingMemoryBound(to: UInt8.self) + Int(nr.start), count: nr.count)
            if equalsLower(name, "transfer-encoding") {
                // HTTP/2 has no transfer codings: only chunked can be taken off; a body under
                // another (gzip, chunked) cannot be passed on as what its headers say.
                let value = UnsafeBufferPointer(start: source.baseAddress!.assumingMemoryBound(to: UInt8.self) + Int(vr.start), count: vr.count)
                if !equalsLower(value, "chunked") { return false }
                continue
            }
            // A chunked body's length is what the chunks say, whatever a Content-Length beside it claims.
            if chunked && equalsLower(name, "content-length") { continue }
            if h2IsConnectionSpecific(name) { continue }
            guard used + name.count <= self.limits.bufferBytes else { break }
            let lower = names + used
            for k in 0..<name.count { let b = name[k]; lower[k] = b >= 65 && b <= 90 ? b + 32 : b }
            used += name.count
            add(lower, name.count, (raw + Int(vr.start)).assumingMemoryBound(to: UInt8.self), vr.count)
        }
        if rh.status < 200 {
            // 100 Continue and other interim responses: HEADERS without END_STREAM.
            _ = nghttp2_submit_headers(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), st.pointee.id, nil, h2Nva, n, nil)
            st.pointee.pendingUsed = Int32(rh.headLength)
            return true
        }
        switch rh.framing {
        case .none, .contentLength(0): st.pointee.framing = .none
        case .contentLength(let length): st.pointee.framing = .length; st.pointee.remaining = length
        case .chunked: st.pointee.framing = .chunked; st.pointee.chunk = .size; st.pointee.chunkRemaining = 0
        case .untilClose: st.pointee.framing = .untilClose
        }
        st.pointee.response = .body
        st.pointee.pendingUsed = Int32(rh.headLength)
        if st.pointee.framing == .none {
            // Whatever follows the head is not this response's (a HEAD answered with a body).
            st.pointee.pendingUsed = Int32(count)
            return nghttp2_submit_response(session, st.pointee.id, h2Nva, n, nil) == 0
        }
        var provider = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: H2Bridge.provider)
        return nghttp2_submit_response(session, st.pointee.id, h2Nva, n, &provider) == 0
    }

    /// Headers HTTP/2 forbids (RFC 9113 8.2.2): HTTP/1.1's connection-level fields.
    func h2IsConnectionSpecific(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        switch name.count {
        case 7: return equalsLower(name, "upgrade")
        case 10: return equalsLower(name, "connection") || equalsLower(name, "keep-alive")
        case 16: return equalsLower(name, "proxy-connection")
        case 17: return equalsLower(name, "transfer-encoding")
        default: return false
        }
    }

    /// A response Weir makes, straight from the callbacks (a header block it refused).
    func h2Respond(_ session: OpaquePointer, _ id: Int32, status: Int) {
        let digits = h2Scratch + limits.bufferBytes - 8
        digits[0] = UInt8(48 + status / 100 % 10); digits[1] = UInt8(48 + status / 10 % 10); digits[2] = UInt8(48 + status % 10)
        h2Nva[0] = nghttp2_nv(name: h2StatusName, value: digits, namelen: 7, valuelen: 3, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
        _ = nghttp2_submit_response(session, id, h2Nva, 1, nil)
    }

    /// A gRPC request Weir answers itself gets a gRPC status in a trailers-only response, not an
    /// HTML page: 14 UNAVAILABLE for no upstream or a failed one, 4 DEADLINE_EXCEEDED for a
    /// timeout, and the mapping gRPC documents for the rest.
    func h2GRPCError(_ session: OpaquePointer, _ id: Int32, httpStatus: Int) {
        let code: Int
        switch httpStatus {
        case 400: code = 13
        case 401: code = 16
        case 403: code = 7
        case 404, 501: code = 12
        case 408, 504: code = 4
        case 413, 431: code = 8
        case 429, 502, 503: code = 14
        default: code = 2
        }
        let scratch = h2Scratch + limits.bufferBytes - 64
        var k = 0
        for b in "200application/grpc".utf8 { scratch[k] = b; k += 1 }
        let codeText = String(code)
        let codeStart = k
        for b in codeText.utf8 { scratch[k] = b; k += 1 }
        let flags = UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)
        h2Nva[0] = nghttp2_nv(name: h2StatusName, value: scratch, namelen: 7, valuelen: 3, flags: flags)
        h2Nva[1] = nghttp2_nv(name: h2ContentTypeName, value: scratch + 3, namelen: 12, valuelen: 16, flags: flags)
        h2Nva[2] = nghttp2_nv(name: h2GRPCStatusName, value: scratch + codeStart, namelen: 11, valuelen: k - codeStart, flags: flags)
        _ = nghttp2_submit_response(session, id, h2Nva, 3, nil)
    }

    /// DATA for a stream: payload from its pending range, de-chunked when the response was
    /// chunked; the end of the stream (with trailers, if the chunked body had them) once the body
    /// is whole or the exchange is done.
    func h2DataRead(_ parent: Int, _ id: Int32, _ buffer: UnsafeMutablePointer<UInt8>, _ room: Int, _ flags: UnsafeMutablePointer<UInt32>) -> Int {
        guard let s = h2Stream(parent, id) else {
            Log.debug("shard \(index): HTTP/2 stream \(id) asked for DATA after its slot went")
            return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
        }
        let st = h2s(s)
        var out = 0
        while out < room && st.pointee.pendingUsed < st.pointee.pendingCount, let base = st.pointee.pendingPointer {
            let src = (base + Int(st.pointee.pendingUsed)).assumingMemoryBound(to: UInt8.self)
            let avail = Int(st.pointee.pendingCount - st.pointee.pendingUsed)
            switch st.pointee.framing {
            case .none:
                st.pointee.pendingUsed = st.pointee.pendingCount
            case .length, .untilClose:
                var n = min(avail, room - out)
                if st.pointee.framing == .length { n = Int(min(UInt64(n), st.pointee.remaining)); st.pointee.remaining -= UInt64(n) }
                if n == 0 { st.pointee.pendingUsed = st.pointee.pendingCount; break }
                (buffer + out).update(from: src, count: n)
                out += n
                st.pointee.pendingUsed += Int32(n)
            case .chunked:
                if st.pointee.chunk == .data {
                    let n = Int(min(UInt64(min(avail, room - out)), st.pointee.chunkRemaining))
                    (buffer + out).update(from: src, count: n)
                    out += n
                    st.pointee.pendingUsed += Int32(n)
                    st.pointee.chunkRemaining -= UInt64(n)
                    if st.pointee.chunkRemaining == 0 { st.pointee.chunk = .dataEnd }
                } else if st.pointee.chunk == .done {
                    st.pointee.pendingUsed = st.pointee.pendingCount
                } else {
                    h2Dechunk(s, src.pointee)
                    st.pointee.pendingUsed += 1
                }
            }
        }
        if st.pointee.pendingUsed > 0 { h2Credit(s) }
        let exhausted = st.pointee.pendingUsed >= st.pointee.pendingCount
        let whole: Bool
        switch st.pointee.framing {
        case .none: whole = true
        case .length: whole = st.pointee.remaining == 0
        case .chunked: whole = st.pointee.chunk == .done
        case .untilClose: whole = false
        }
        if exhausted && (whole || st.pointee.response == .done) {
            // Trailers that found no buffer (gRPC's status is in them): the stream fails rather
            // than end as if it had none.
            if st.pointee.trailersLost { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
            flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
            if st.pointee.trailerLength > 0, let session = h2Connections[parent].session {
                flags.pointee |= NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
                h2SubmitTrailers(s, session)
            }
            return out
        }
        if out == 0 {
            st.pointee.deferred = true
            return Int(NGHTTP2_ERR_DEFERRED.rawValue)
        }
        return out
    }

    /// One framing byte of a chunked body (size line, extensions, the CRLF after data, trailers).
    func h2Dechunk(_ s: UnsafeMutablePointer<Connection>, _ b: UInt8) {
        let st = h2s(s)
        switch st.pointee.chunk {
        case .size:
            if let d = hexValue(b) { st.pointee.chunkRemaining = st.pointee.chunkRemaining << 4 | UInt64(d) }
            else if b == 10 { st.pointee.chunk = st.pointee.chunkRemaining == 0 ? .trailers : .data; st.pointee.trailerLine = 0 }
            else if b != 13 { st.pointee.chunk = .extensions }
        case .extensions:
            if b == 10 { st.pointee.chunk = st.pointee.chunkRemaining == 0 ? .trailers : .data; st.pointee.trailerLine = 0 }
        case .dataEnd:
            if b == 10 { st.pointee.chunk = .size; st.pointee.chunkRemaining = 0 }
        case .trailers:
            if b == 10 {
                if st.pointee.trailerLine == 0 { st.pointee.chunk = .done; return }
                st.pointee.trailerLine = 0
                h2TrailerByte(st, 10)
            } else if b != 13 {
                st.pointee.trailerLine += 1
                h2TrailerByte(st, b)
            }
        case .data, .done: break
        }
    }

    func h2TrailerByte(_ st: UnsafeMutablePointer<H2Stream>, _ b: UInt8) {
        if st.pointee.trailers < 0 {
            guard let t = takeHeadBuffer() else { st.pointee.trailersLost = true; return }
            st.pointee.trailers = t
        }
        guard Int(st.pointee.trailerLength) < limits.bufferBytes else { st.pointee.trailersLost = true; return }
        (headBuffer(st.pointee.trailers) + Int(st.pointee.trailerLength)).storeBytes(of: b, as: UInt8.self)
        st.pointee.trailerLength += 1
    }

    /// The trailer lines kept from a chunked body ("name: value\n" each) as HTTP/2 trailers.
    func h2SubmitTrailers(_ s: UnsafeMutablePointer<Connection>, _ session: OpaquePointer) {
        let st = h2s(s)
        let base = headBuffer(st.pointee.trailers).assumingMemoryBound(to: UInt8.self)
        let end = Int(st.pointee.trailerLength)
        var n = 0, line = 0
        while line < end && n < h2NvaCapacity {
            var e = line
            while e < end && base[e] != 10 { e += 1 }
            var colon = line
            while colon < e && base[colon] != UInt8(ascii: ":") { colon += 1 }
            if colon < e && colon > line {
                for k in line..<colon where base[k] >= 65 && base[k] <= 90 { base[k] += 32 }
                var v = colon + 1
                while v < e && (base[v] == 32 || base[v] == 9) { v += 1 }
                var ve = e
                while ve > v && (base[ve - 1] == 32 || base[ve - 1] == 9) { ve -= 1 }
                let name = UnsafeBufferPointer(start: base + line, count: colon - line)
                if !h2IsConnectionSpecific(name) {
                    h2Nva[n] = nghttp2_nv(name: base + line, value: base + v, namelen: colon - line, valuelen: ve - v, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
                    n += 1
                }
            }
            line = e + 1
        }
        _ = nghttp2_submit_trailer(session, st.pointee.id, h2Nva, n)
    }
}

@inline(__always) func hexValue(_ b: UInt8) -> UInt8? {
    switch b {
    case 48...57: return b - 48
    case 65...70: return b - 55
    case 97...102: return b - 87
    default: return nil
    }
}

/// `bytes` equal `lower` (ASCII lowercase) ignoring case.
@inline(__always) func equalsLower(_ bytes: UnsafeBufferPointer<UInt8>, _ lower: StaticString) -> Bool {
    guard bytes.count == lower.utf8CodeUnitCount else { return false }
    let l = lower.utf8Start
    for i in 0..<bytes.count {
        var b = bytes[i]
        if b >= 65 && b <= 90 { b += 32 }
        if b != l[i] { return false }
    }
    return true
}

/// Header names nghttp2 reads from (it copies them; these only need to outlive the call).
let h2StatusName: UnsafeMutablePointer<UInt8> = staticBytes(":status")
let h2ContentTypeName: UnsafeMutablePointer<UInt8> = staticBytes("content-type")
let h2GRPCStatusName: UnsafeMutablePointer<UInt8> = staticBytes("grpc-status")

func staticBytes(_ s: String) -> UnsafeMutablePointer<UInt8> {
    let bytes = Array(s.utf8)
    let p = UnsafeMutablePointer<UInt8>.allocate(capacity: bytes.count)
    p.initialize(from: bytes, count: bytes.count)
    return p
}
