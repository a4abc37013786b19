// The HTTP/2 codec on the client side: a connection that began with the h2 preface (h2 chosen by
// ALPN, or h2c with prior knowledge) runs an nghttp2 server session over the shard's own I/O.
// Bytes received (decrypted, for TLS) are fed to nghttp2; the frames it writes are copied into the
// connection's out buffer and sent. Each stream is a slot of its own running an ordinary exchange
// (H2Stream.swift), so routing, retries, timeouts, pools and access logs are the HTTP/1 ones.
import CNGHTTP2
import COpenSSL
import CWeirSys
import WeirConfig
import WeirCore
import WeirHTTP
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

extension Shard {
    @inline(__always) func h2(_ c: UnsafeMutablePointer<Connection>) -> UnsafeMutablePointer<H2Connection> { h2Connections + slot(of: c) }

    /// At the first request of a connection on a listener with HTTP/2: true when the bytes start
    /// the h2 preface, and the connection became an HTTP/2 one (or waits for the rest of it).
    func startsH2(_ c: UnsafeMutablePointer<Connection>, _ base: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        guard c.pointee.carrier == .socket, c.pointee.requestsSeen == 1, count >= 1,
              base.load(as: UInt8.self) == UInt8(ascii: "P"), let settings = httpListener(c).http2 else { return false }
        let preface = Shard.h2PrefaceBytes
        let n = min(count, preface.count)
        for i in 0..<n where base.load(fromByteOffset: i, as: UInt8.self) != preface[i] { return false }
        if n < preface.count {
            // The rest may be in the next buffer (TLS records, small segments): join them and look again.
            let flow = c.flow(0)
            if flow.pointee.queued > 1 && compact(flow) {
                let head = Int(flow.pointee.head)
                return startsH2(c, bufferPointer(head) + Int(flow.pointee.sendOffset), Int(bufferLength[head]) - Int(flow.pointee.sendOffset))
            }
            return true  // the rest of the preface is still to come
        }
        startH2(c, settings)
        return true
    }

    static var h2PrefaceBytes: UnsafeBufferPointer<UInt8> { h2PrefaceStorage }

    /// An HTTP/2 connection's frame buffer: a few frames of 16 KiB per send.
    static var h2OutBytes: Int { 48 * 1024 }

    /// Turns an HTTP connection (nothing answered on it yet) into an HTTP/2 one; the preface and
    /// what follows it are still queued on flow 0.
    func startH2(_ c: UnsafeMutablePointer<Connection>, _ settings: HTTP2Settings) {
        let h = h2(c)
        h.pointee = H2Connection()
        h.pointee.out = .allocate(byteCount: Shard.h2OutBytes, alignment: 64)
        h2Contexts[slot(of: c)] = H2Context(bridge: Unmanaged.passUnretained(h2Bridge), slot: slot(of: c))
        var option: OpaquePointer? = nil
        nghttp2_option_new(&option)
        defer { nghttp2_option_del(option) }
        // Windows are given back only as the stream's bytes go upstream (backpressure).
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_max_outbound_ack(option, settings.maxPendingAcks)
        nghttp2_option_set_max_settings(option, settings.maxSettingsEntries)
        // Weir's own limit (H2Stream's h2FrameRecv) ends a rapid reset with ENHANCE_YOUR_CALM;
        // nghttp2's, set looser, stays as a backstop.
        nghttp2_option_set_stream_reset_rate_limit(option, UInt64(settings.resetBurst) * 2, UInt64(settings.resetsPerSecond) * 2)
        nghttp2_option_set_max_continuations(option, settings.maxContinuations)
        nghttp2_option_set_max_send_header_block_length(option, limits.bufferBytes)
        var session: OpaquePointer? = nil
        // Its allocations (streams, header fields, frames) come from the shard's recycled blocks.
        var mem = nghttp2_mem(mem_user_data: h2Slab, malloc: weir_slab_malloc, free: weir_slab_free,
                              calloc: weir_slab_calloc, realloc: weir_slab_realloc)
        guard nghttp2_session_server_new3(&session, H2Bridge.callbacks, h2Contexts + slot(of: c), option, &mem) == 0, let session else {
            h.pointee.out?.deallocate()
            h.pointee = H2Connection()
            return abortHTTP(c)
        }
        h.pointee.session = session
        h.pointee.phase = .open
        h.pointee.resetTokens = Int64(settings.resetBurst)
        h.pointee.resetRefilled = now
        c.pointee.kind = .h2
        c.pointee.ex = HTTPExchange()
        control.stats.pointee.h2Connections += 1
        let http = httpListener(c)
        var iv = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: UInt32(settings.maxConcurrentStreams)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(settings.streamWindowBytes)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(http.limits.maxHeaderBytes)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
        ]
        _ = nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &iv, iv.count)
        if settings.connectionWindowBytes > 65535 {
            _ = nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, Int32(settings.connectionWindowBytes))
        }
        h2Ingest(c)
    }

    /// Feeds what flow 0 holds to nghttp2, runs what its callbacks left, and sends its frames.
    func h2Ingest(_ c: UnsafeMutablePointer<Connection>) {
        let flow = c.flow(0)
        let h = h2(c)
        // A failed session reads nothing more: what comes is dropped until the GOAWAY is out.
        if h.pointee.phase == .failed { dropQueue(flow) }
        while flow.pointee.queued > 0, let session = h.pointee.session {
            let bid = Int(flow.pointee.head)
            let off = Int(flow.pointee.sendOffset)
            let len = Int(bufferLength[bid]) - off
            if len > 0 {
                let p = (bufferPointer(bid) + off).assumingMemoryBound(to: UInt8.self)
                let rv = nghttp2_session_mem_recv(session, p, len)
                h2RunEvents()
                guard c.pointee.state == .open else { return }
                if rv < 0 {
                    // A connection error: nghttp2 has queued its GOAWAY where it could.
                    if Int32(rv) == NGHTTP2_ERR_FLOODED.rawValue { control.stats.pointee.h2GoawayFlood += 1 }
                    Log.debug("shard \(index): HTTP/2 connection failed: \(String(cString: nghttp2_strerror(Int32(rv))))")
                    dropQueue(flow)
                    h.pointee.phase = .failed
                    return h2Finish(c)
                }
            }
            popHead(flow)
        }
        h2Flush(c)
    }

    /// The client's bytes on an HTTP/2 connection.
    func onH2Recv(_ c: UnsafeMutablePointer<Connection>, _ ud: UserData, _ res: Int32, _ bid: UInt16?) {
        let flow = c.flow(0)
        if res > 0, let bid {
            if c.pointee.isTLS {
                var closeNotify = false
                guard tlsReceive(c, bid: Int(bid), count: Int(res), closeNotify: &closeNotify) != nil else { return }
                if closeNotify { flow.pointee.sourceEnded = true }
            } else {
                enqueueReceived(flow, bid: bid, length: res)
            }
            flow.pointee.bytes += Int64(res)
            c.pointee.lastActivity = now
            h2Ingest(c)
            guard c.pointee.state == .open else { return }
            if flow.pointee.sourceEnded { return h2ClientEnded(c) }
            if !flow.pointee.recv.pending { rearmIfRoom(c, 0) }
            return
        }
        if let bid { buffers.recycle(bid) }
        switch res {
        case 0:
            flow.pointee.sourceEnded = true
            h2ClientEnded(c)
        case -ENOBUFS: starve(c, 0)
        case -ECANCELED: rearmIfRoom(c, 0)
        default: abortHTTP(c)
        }
    }

    /// Copies frames nghttp2 wrote into the out buffer and sends them; in between, streams whose
    /// response bytes went into frames get their sends completed (credited), which may hand over
    /// more bytes. Loops until nothing moves.
    func h2Flush(_ c: UnsafeMutablePointer<Connection>) {
        let h = h2(c)
        guard c.pointee.state == .open, !h.pointee.flushing, let session = h.pointee.session else { return }
        h.pointee.flushing = true
        var rounds = 0
        while c.pointee.state == .open {
            rounds += 1
            if !c.flow(1).pointee.sending && h.pointee.outLength == 0 {
                let rv = nghttp2_session_send(session)
                if rv != 0 {
                    Log.debug("shard \(index): HTTP/2 send failed: \(String(cString: nghttp2_strerror(rv)))")
                    h.pointee.flushing = false
                    return abortHTTP(c)
                }
            }
            let credited = h2RunCredits()
            h2RunEvents()
            guard c.pointee.state == .open else { h.pointee.flushing = false; return }
            if h.pointee.outLength > 0 && !c.flow(1).pointee.sending {
                h.pointee.outSent = 0
                downstreamSend(c, h.pointee.out!, Int(h.pointee.outLength))
            }
            // More rounds only while streams hand over bytes and the out buffer is free to take them.
            if !credited || c.flow(1).pointee.sending || rounds > 64 { break }
        }
        h.pointee.flushing = false
        if c.pointee.state == .open && !c.flow(1).pointee.sending && h.pointee.outLength == 0 { h2CloseIfDone(c) }
    }

    /// The send callback: frame bytes into the out buffer, as many as fit.
    func h2Take(_ parent: Int, _ data: UnsafePointer<UInt8>, _ count: Int) -> Int {
        let h = h2Connections + parent
        guard let out = h.pointee.out, !connections[parent].flows.1.sending else { return 0 }
        let room = Shard.h2OutBytes - Int(h.pointee.outLength)
        let n = min(room, count)
        guard n > 0 else { return 0 }
        (out + Int(h.pointee.outLength)).copyMemory(from: data, byteCount: n)
        h.pointee.outLength += Int32(n)
        return n
    }

    func onH2Send(_ c: UnsafeMutablePointer<Connection>, _ sent: Int32) {
        let flow = c.flow(1)
        flow.pointee.sending = false
        c.pointee.inflight -= 1
        if c.pointee.state != .open { return finishIfIdle(c) }
        guard sent > 0 else { return abortHTTP(c) }
        var res = sent
        if c.pointee.isTLS {
            guard let credit = tlsSent(c, sent) else { return }
            guard c.pointee.state == .open else { return }
            if credit == 0 { c.pointee.lastActivity = now; return h2Flush(c) }
            res = credit
        }
        c.pointee.lastActivity = now
        let h = h2(c)
        h.pointee.outSent += res
        if h.pointee.outSent < h.pointee.outLength {
            return downstreamSend(c, h.pointee.out! + Int(h.pointee.outSent), Int(h.pointee.outLength - h.pointee.outSent))
        }
        h.pointee.outLength = 0
        h.pointee.outSent = 0
        h2Flush(c)
    }

    /// The client ended its side (FIN, or TLS close_notify): as a GOAWAY from it. Streams whose
    /// requests are whole are still answered (as HTTP/1.1 answers the requests of a client that
    /// half-closed); the others cannot complete and are reset; the connection closes after.
    func h2ClientEnded(_ c: UnsafeMutablePointer<Connection>) {
        let h = h2(c)
        if h.pointee.phase == .open { h.pointee.phase = .goingAway }
        // Over a copy of the list: a reset flushes, which may end and unlink other streams.
        for (s, generation) in h2StreamSlots(c) {
            let sc = connections + Int(s)
            if sc.pointee.generation == generation && sc.pointee.state == .open && !h2Streams[Int(s)].requestEnded { abortHTTP(sc) }
        }
        guard c.pointee.state == .open else { return }
        h2Flush(c)
        h2CloseIfDone(c)
    }

    /// The session failed: send what nghttp2 still has (a GOAWAY), then close.
    func h2Finish(_ c: UnsafeMutablePointer<Connection>) {
        let h = h2(c)
        if h.pointee.phase == .open { h.pointee.phase = .goingAway }
        h2EndStreams(c)
        guard c.pointee.state == .open else { return }
        // Frames on their way (the GOAWAY among them): closed once they are out, or by the idle
        // timeout if they never go.
        if c.flow(1).pointee.sending || h.pointee.outLength > 0 { return h2CloseIfDone(c) }
        if let session = h.pointee.session, !c.flow(0).pointee.sourceEnded {
            _ = nghttp2_session_send(session)
            if h.pointee.outLength > 0 {
                h.pointee.outSent = 0
                downstreamSend(c, h.pointee.out!, Int(h.pointee.outLength))
                return h2CloseIfDone(c)
            }
        }
        closeHTTP(c)
    }

    /// Ends every stream of the connection (their exchanges abort; nghttp2 forgets them with
    /// the session).
    func h2EndStreams(_ c: UnsafeMutablePointer<Connection>) {
        for (s, generation) in h2StreamSlots(c) {
            let sc = connections + Int(s)
            let st = h2Streams + Int(s)
            guard sc.pointee.generation == generation, sc.pointee.carrier == .h2Stream else { continue }
            if st.pointee.open {
                st.pointee.open = false
                sc.pointee.inflight -= 1
            }
            if sc.pointee.state == .open { abortHTTP(sc) } else { finishIfIdle(sc) }
        }
    }

    /// The connection's stream slots and their generations, copied (once per connection end,
    /// not per request) so that walking them survives streams ending on the way.
    func h2StreamSlots(_ c: UnsafeMutablePointer<Connection>) -> [(Int32, UInt32)] {
        var list: [(Int32, UInt32)] = []
        list.reserveCapacity(Int(h2(c).pointee.streams))
        var s = h2(c).pointee.first
        while s >= 0 && list.count <= limits.maxConnectionsPerShard {
            list.append((s, connections[Int(s)].generation))
            s = h2Streams[Int(s)].next
        }
        return list
    }

    /// Flushes asked for where a flush could not run safely (a stream slot being freed): run at
    /// the end of the loop turn.
    func h2RunPendingFlushes() {
        var i = 0
        while i < h2PendingFlushes.count {
            let r = h2PendingFlushes[i]
            i += 1
            let c = connections + Int(r.slot)
            guard c.pointee.generation == r.generation, c.pointee.kind == .h2, c.pointee.state == .open else { continue }
            h2Flush(c)
        }
        h2PendingFlushes.removeAll(keepingCapacity: true)
    }

    /// A connection with nothing left to do closes: nghttp2 wants neither to read nor to write
    /// (after GOAWAY both ways), or it is going away with its last stream done.
    func h2CloseIfDone(_ c: UnsafeMutablePointer<Connection>) {
        let h = h2(c)
        guard let session = h.pointee.session, c.pointee.state == .open, !h.pointee.flushing, !c.flow(1).pointee.sending, h.pointee.outLength == 0 else { return }
        let idle = nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0
        if idle || (h.pointee.phase != .open && h.pointee.streams == 0) { closeHTTP(c) }
    }

    /// Drain or reload: GOAWAY with the last stream taken, so the client sends new requests on a
    /// new connection and in-flight streams finish here.
    func h2GoAway(_ c: UnsafeMutablePointer<Connection>) {
        let h = h2(c)
        guard h.pointee.phase == .open, let session = h.pointee.session else { return }
        h.pointee.phase = .goingAway
        _ = nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nghttp2_session_get_last_proc_stream_id(session),
                                  NGHTTP2_NO_ERROR.rawValue, nil, 0)
        h2Flush(c)
    }

    func h2Tick(_ c: UnsafeMutablePointer<Connection>) {
        let h = h2(c)
        if draining && h.pointee.phase == .open { h2GoAway(c) }
        if h.pointee.phase == .open && snapshotOf(c) !== snapshot { h2FollowSnapshot(c) }
        guard c.pointee.state == .open, now - c.pointee.lastActivity > c.pointee.idleTimeout else { return }
        // Streams waiting on their upstreams (a long poll, a quiet gRPC stream) keep the
        // connection: their own timeouts govern them.
        if h.pointee.streams > 0 && !c.flow(1).pointee.sending { return }
        control.stats.pointee.idleTimeouts += 1
        // Idle with no streams: GOAWAY, given one more idle period to go out. A client that took
        // nothing of what was sent for a whole idle period: the connection ends.
        if h.pointee.streams == 0 && h.pointee.phase == .open && !c.flow(1).pointee.sending {
            h2GoAway(c)
            c.pointee.lastActivity = now
            return
        }
        abortHTTP(c)
    }

    /// A reload: the connection takes the new snapshot if its listener is still there (its
    /// streams start on it), or says GOAWAY so its client moves to a listener that is.
    func h2FollowSnapshot(_ c: UnsafeMutablePointer<Connection>) {
        let old = snapshotOf(c)
        let oldIndex = Int(c.pointee.listenerIndex)
        let name = old.listeners[oldIndex].name
        if let li = snapshot.listeners.firstIndex(where: { $0.name == name && $0.proto == .http && $0.http?.http2 != nil }),
           old.chainMatch(of: oldIndex) == snapshot.chainMatch(of: li) {
            c.pointee.snapshot?.release()
            c.pointee.snapshot = Unmanaged.passRetained(snapshot)
            c.pointee.listenerIndex = Int32(li)
        } else {
            h2GoAway(c)
        }
    }

    /// The slot of an HTTP/2 connection is freed: its session and out buffer go with it.
    func endH2(_ c: UnsafeMutablePointer<Connection>) {
        let h = h2(c)
        if let session = h.pointee.session { nghttp2_session_del(session) }
        h.pointee.out?.deallocate()
        h.pointee = H2Connection()
    }

    /// Runs the work nghttp2's callbacks queued, in order. An event may flush another session,
    /// whose callbacks add more: the outer run takes those too (a nested one returns at once).
    func h2RunEvents() {
        guard !h2RunningEvents else { return }
        h2RunningEvents = true
        defer { h2RunningEvents = false }
        var i = 0
        while i < h2Events.count {
            let e = h2Events[i]
            i += 1
            let s = connections + Int(e.slot)
            guard s.pointee.generation == e.generation, s.pointee.carrier == .h2Stream else { continue }
            switch e.kind {
            case .start: h2StartExchange(s)
            case .data: if s.pointee.state == .open && !h2Streams[Int(e.slot)].peerClosed { pumpRequest(s) }
            case .closed: h2StreamClosed(s)
            case .resetAfterResponse: h2ResetAfterResponse(s)
            }
        }
        h2Events.removeAll(keepingCapacity: true)
    }

    func h2Queue(_ s: UnsafeMutablePointer<Connection>, _ kind: H2Event.Kind) {
        h2Events.append(H2Event(slot: Int32(slot(of: s)), generation: s.pointee.generation, kind: kind))
    }
}

let h2PrefaceStorage: UnsafeBufferPointer<UInt8> = {
    let bytes = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    let p = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: bytes.count)
    _ = p.initialize(from: bytes)
    return UnsafeBufferPointer(p)
}()
