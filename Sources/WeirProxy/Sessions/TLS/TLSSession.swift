// TLS termination on a shard. OpenSSL runs over memory BIOs, so the ring still does every read
// and write and a handshake never blocks the loop: ciphertext a recv brings is written into the
// connection's read BIO and decrypted back into the same receive buffer (spilling into a head
// buffer when a completed record makes the plaintext longer than the ciphertext was); plaintext
// to send is encrypted into a head buffer, which is sent and credited back to the plaintext it
// carried only once all of it is out.
import COpenSSL
import WeirConfig
import WeirCore
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

struct TLSState {
    var ssl: OpaquePointer? = nil
    var readBIO: OpaquePointer? = nil
    var writeBIO: OpaquePointer? = nil
    var handshakeDone = false
    /// Ciphertext being sent: a head buffer, its length, how much went out, and the plaintext
    /// bytes it carries (0 for handshake records, alerts and session tickets).
    var sendBuffer: Int32 = -1
    var sendLength: Int32 = 0
    var sendSent: Int32 = 0
    var credit: Int32 = 0
    /// close_notify was written (tcp: the upstream closed, so the client is told before FIN).
    var closeNotifySent = false
    /// TLS to a TCP upstream: plaintext has come from it (a failure before that is the
    /// endpoint refusing the connection, counted against it).
    var plaintextSeen = false
}

extension Shard {
    @inline(__always) func tlsState(_ c: UnsafeMutablePointer<Connection>) -> UnsafeMutablePointer<TLSState> { tlsStates + slot(of: c) }

    /// Sets up server-side TLS for a connection accepted on a `tls:` listener.
    func startTLS(_ c: UnsafeMutablePointer<Connection>, _ context: TLSContext) -> Bool {
        let t = tlsState(c)
        t.pointee = TLSState()
        guard let ssl = SSL_new(context.primary) else { return false }
        guard let r = BIO_new(BIO_s_mem()), let w = BIO_new(BIO_s_mem()) else { SSL_free(ssl); return false }
        SSL_set_bio(ssl, r, w)
        SSL_set_accept_state(ssl)
        t.pointee.ssl = ssl
        t.pointee.readBIO = r
        t.pointee.writeBIO = w
        c.pointee.isTLS = true
        return true
    }

    func endTLS(_ c: UnsafeMutablePointer<Connection>) {
        let t = tlsState(c)
        if let ssl = t.pointee.ssl { SSL_free(ssl) }
        if t.pointee.sendBuffer >= 0 { releaseHeadBuffer(t.pointee.sendBuffer) }
        t.pointee = TLSState()
        c.pointee.isTLS = false
    }

    /// Takes `count` bytes of ciphertext from ring buffer `bid`, decrypts what it can and queues
    /// the plaintext on flow 0. Returns the plaintext bytes queued, or nil when the connection
    /// failed (and was closed). Sets `closeNotify` when the client ended the TLS session.
    func tlsReceive(_ c: UnsafeMutablePointer<Connection>, bid: Int, count: Int, closeNotify: inout Bool) -> Int? {
        let t = tlsState(c)
        switch tlsIngest(t, bid: bid, count: count, into: c.flow(0)) {
        case .failed(let handshake):
            if handshake { tlsHandshakeFailed(c) } else { abortHTTP(c) }
            return nil
        case .handshaking:
            tlsFlush(c)
            return 0
        case .data(let plain, let notify, let justDone):
            if justDone, c.pointee.listenerSlot >= 0, let ssl = t.pointee.ssl {
                let l = Int(c.pointee.listenerSlot)
                control.named.listeners[l].tlsHandshakes += 1
                if SSL_session_reused(ssl) == 1 { control.named.listeners[l].tlsResumptions += 1 }
            }
            closeNotify = notify
            tlsFlush(c)
            // tcp: what the upstream said before the handshake ended can go now.
            let back = c.flow(1)
            if c.pointee.kind == .tcp && c.pointee.state == .open && back.pointee.queued > 0 && !back.pointee.sending { sendHead(c, 1) }
            return plain
        }
    }

    enum TLSIngest {
        /// `handshake`: it failed during the handshake (count it so; an alert may be waiting).
        case failed(handshake: Bool)
        case handshaking
        /// Plaintext bytes queued; the peer sent close_notify; the handshake completed just now.
        case data(Int, closeNotify: Bool, handshakeDone: Bool)
    }

    /// The shared core of both sides: feeds `count` bytes of ciphertext from `bid` to OpenSSL,
    /// advances the handshake, and decrypts into the same buffer (spilling into head buffers),
    /// queueing plaintext on `flow`. `bid` is always consumed.
    func tlsIngest(_ t: UnsafeMutablePointer<TLSState>, bid: Int, count: Int, into flow: UnsafeMutablePointer<Flow>) -> TLSIngest {
        guard let ssl = t.pointee.ssl else { releaseBuffer(bid); return .failed(handshake: false) }
        let source = bufferPointer(bid)
        var written = 0
        while written < count {
            let w = BIO_write(t.pointee.readBIO, source + written, Int32(count - written))
            if w <= 0 { releaseBuffer(bid); return .failed(handshake: false) }
            written += Int(w)
        }
        var justDone = false
        if !t.pointee.handshakeDone {
            ERR_clear_error()
            let r = SSL_do_handshake(ssl)
            if r != 1 {
                let e = SSL_get_error(ssl, r)
                releaseBuffer(bid)
                if e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE { return .handshaking }
                return .failed(handshake: true)
            }
            t.pointee.handshakeDone = true
            justDone = true
        }
        let capacity = limits.bufferBytes
        var current = bid, offset = 0, total = 0
        var closeNotify = false
        while true {
            // SSL_get_error reads this thread's error queue: anything another connection left
            // there would make a read that only wants more bytes look like a failure.
            ERR_clear_error()
            let r = SSL_read(ssl, bufferPointer(current) + offset, Int32(capacity - offset))
            if r > 0 {
                offset += Int(r)
                total += Int(r)
                if offset == capacity {
                    enqueue(flow, bid: current, length: Int32(offset))
                    guard let spill = takeHeadBuffer() else {
                        control.stats.pointee.headBuffersExhausted += 1
                        return .failed(handshake: false)
                    }
                    current = buffers.count + Int(spill)
                    offset = 0
                }
                continue
            }
            let e = SSL_get_error(ssl, r)
            if e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE { break }
            if e == SSL_ERROR_ZERO_RETURN { closeNotify = true; break }
            if offset > 0 { enqueue(flow, bid: current, length: Int32(offset)) } else { releaseBuffer(current) }
            Log.debug("shard \(index): TLS read failed: \(openSSLErrors())")
            return .failed(handshake: false)
        }
        if offset > 0 { enqueueReceived(flow, bid: current, length: Int32(offset)) } else { releaseBuffer(current) }
        return .data(total, closeNotify: closeNotify, handshakeDone: justDone)
    }

    /// Encrypts up to `count` bytes (nil pointer: only what OpenSSL has pending) into a head
    /// buffer: (buffer, ciphertext length, plaintext taken). nil when nothing is to be sent now;
    /// `failed` is set when the connection cannot continue.
    func tlsSeal(_ t: UnsafeMutablePointer<TLSState>, _ pointer: UnsafeMutableRawPointer?, _ count: Int, failed: inout Bool) -> (Int32, Int32, Int32)? {
        guard let ssl = t.pointee.ssl, let w = t.pointee.writeBIO else { failed = true; return nil }
        var taken: Int32 = 0
        if let pointer, count > 0 {
            // Bytes before the handshake ended (a server that speaks first) wait for it.
            guard t.pointee.handshakeDone else { return nil }
            // Keep the ciphertext (records add ~22 bytes per 16 KiB, plus anything pending)
            // within one head buffer.
            let room = limits.bufferBytes - 2048 - Int(weir_bio_pending(w))
            ERR_clear_error()
            let n = SSL_write(ssl, pointer, Int32(min(count, max(1024, room))))
            if n <= 0 {
                if SSL_get_error(ssl, n) != SSL_ERROR_WANT_READ {
                    Log.debug("shard \(index): TLS write failed: \(openSSLErrors())")
                    failed = true
                    return nil
                }
            } else {
                taken = n
            }
        }
        guard weir_bio_pending(w) > 0 else { return nil }
        guard let out = takeHeadBuffer() else {
            control.stats.pointee.headBuffersExhausted += 1
            failed = true
            return nil
        }
        let n = BIO_read(w, headBuffer(out), Int32(limits.bufferBytes))
        guard n > 0 else { releaseHeadBuffer(out); return nil }
        return (out, n, taken)
    }

    func tlsHandshakeFailed(_ c: UnsafeMutablePointer<Connection>) {
        let reason = openSSLErrors()
        if c.pointee.listenerSlot >= 0 {
            let l = Int(c.pointee.listenerSlot)
            let lower = reason.lowercased()
            if lower.contains("version") || lower.contains("protocol") { control.named.listeners[l].tlsFailedVersion += 1 }
            else if lower.contains("certificate") { control.named.listeners[l].tlsFailedCertificate += 1 }
            else { control.named.listeners[l].tlsFailedOther += 1 }
        }
        Log.debug("shard \(index): TLS handshake failed: \(reason)")
        // Send the alert OpenSSL wrote, if the send path is free, then close.
        tlsFlush(c)
        guard c.pointee.kind == .http else { return abort(c) }
        c.pointee.ex.closeAfter = true
        if c.flow(1).pointee.sending { lingerClose(c) } else { closeHTTP(c) }
    }

    /// Sends what OpenSSL wrote on its own (handshake records, alerts, session tickets) when
    /// nothing else is being sent.
    func tlsFlush(_ c: UnsafeMutablePointer<Connection>) {
        let t = tlsState(c)
        guard c.pointee.state == .open || c.pointee.state == .connecting, !c.flow(1).pointee.sending, t.pointee.sendBuffer < 0,
              let w = t.pointee.writeBIO, weir_bio_pending(w) > 0 else { return }
        tlsStartSend(c, nil, 0)
    }

    /// Encrypts up to `count` plaintext bytes and starts sending the ciphertext. The plaintext is
    /// credited when all the ciphertext is out (see tlsSent).
    func tlsSend(_ c: UnsafeMutablePointer<Connection>, _ pointer: UnsafeMutableRawPointer, _ count: Int) {
        tlsStartSend(c, pointer, count)
    }

    func tlsStartSend(_ c: UnsafeMutablePointer<Connection>, _ pointer: UnsafeMutableRawPointer?, _ count: Int) {
        startCiphertext(c, .client, pointer, count)
    }

    /// A ciphertext send to the client finished `res` bytes: nil while more of it remains (the
    /// rest is being sent), else the plaintext bytes it carried (0 for TLS's own records).
    func tlsSent(_ c: UnsafeMutablePointer<Connection>, _ res: Int32) -> Int32? { ciphertextDone(c, .client, res) }

    /// The TLS layer of a connection a ciphertext goes to: the client's (terminated here, flow 1
    /// sends to it) or, in a TCP session, the upstream's (flow 0 sends to it).
    enum TLSSide {
        case client, upstream
        var flow: Int { self == .client ? 1 : 0 }
    }

    func tlsState(_ c: UnsafeMutablePointer<Connection>, _ side: TLSSide) -> UnsafeMutablePointer<TLSState> {
        side == .client ? tlsState(c) : upTLS(c)
    }

    /// Encrypts up to `count` plaintext bytes (nil: only what OpenSSL has pending) into a head
    /// buffer and starts sending it to `side`; the plaintext is credited when all of it is out.
    func startCiphertext(_ c: UnsafeMutablePointer<Connection>, _ side: TLSSide, _ pointer: UnsafeMutableRawPointer?, _ count: Int) {
        let t = tlsState(c, side)
        // One ciphertext send at a time: a second would overwrite the buffer still being sent.
        guard t.pointee.sendBuffer < 0 else { return }
        var failed = false
        guard let (out, length, taken) = tlsSeal(t, pointer, count, failed: &failed) else {
            if failed { if side == .client { abortHTTP(c) } else { abort(c) } }
            return
        }
        t.pointee.sendBuffer = out
        t.pointee.sendLength = length
        t.pointee.sendSent = 0
        t.pointee.credit = taken
        sendCiphertext(c, side)
    }

    func sendCiphertext(_ c: UnsafeMutablePointer<Connection>, _ side: TLSSide) {
        let t = tlsState(c, side)
        c.flow(side.flow).pointee.sending = true
        c.pointee.inflight += 1
        ring.send(fd: side == .client ? c.pointee.downstreamFD : c.pointee.upstreamFD,
                  buffer: headBuffer(t.pointee.sendBuffer) + Int(t.pointee.sendSent), count: Int(t.pointee.sendLength - t.pointee.sendSent),
                  userData: UserData(op: Op.send, sub: UInt8(side.flow), slot: slot(of: c), generation: c.pointee.generation))
    }

    /// A ciphertext send to `side` finished `res` bytes: nil while more of it remains, else the
    /// plaintext bytes it carried.
    func ciphertextDone(_ c: UnsafeMutablePointer<Connection>, _ side: TLSSide, _ res: Int32) -> Int32? {
        switch ciphertextSent(tlsState(c, side), res) {
        case .more:
            sendCiphertext(c, side)
            return nil
        case .done(let credit, let morePending):
            // More ciphertext than one buffer held: send it before anything else.
            if morePending { startCiphertext(c, side, nil, 0); if credit == 0 { return nil } }
            return credit
        }
    }

    /// A client-side SSL for `tls` in `t` (memory BIOs, connect state, SNI and the host check
    /// the context asks for); `alpn`, when given, replaces the context's ALPN. False when
    /// OpenSSL cannot make one.
    func newUpstreamSSL(_ tls: UpstreamTLS, in t: UnsafeMutablePointer<TLSState>, alpn: [UInt8]? = nil) -> Bool {
        t.pointee = TLSState()
        guard let ssl = SSL_new(tls.context) else { return false }
        guard let r = BIO_new(BIO_s_mem()), let w = BIO_new(BIO_s_mem()) else { SSL_free(ssl); return false }
        SSL_set_bio(ssl, r, w)
        SSL_set_connect_state(ssl)
        if let alpn, alpn.withUnsafeBufferPointer({ SSL_set_alpn_protos(ssl, $0.baseAddress, UInt32($0.count)) }) != 0 {
            SSL_free(ssl); return false
        }
        if let name = tls.serverName {
            _ = weir_ssl_set_host_name(ssl, name)
            if tls.checkHost { _ = SSL_set1_host(ssl, name) }
        }
        t.pointee.ssl = ssl
        t.pointee.readBIO = r
        t.pointee.writeBIO = w
        return true
    }

    enum CiphertextSend {
        /// Part of the buffer is still to go.
        case more
        /// The buffer is out (and released): the plaintext bytes it carried, and whether OpenSSL
        /// holds more ciphertext to send.
        case done(credit: Int32, morePending: Bool)
    }

    /// A send of `res` bytes of a TLS side's ciphertext buffer completed (both sides share this).
    func ciphertextSent(_ t: UnsafeMutablePointer<TLSState>, _ res: Int32) -> CiphertextSend {
        t.pointee.sendSent += res
        if t.pointee.sendSent < t.pointee.sendLength { return .more }
        releaseHeadBuffer(t.pointee.sendBuffer)
        t.pointee.sendBuffer = -1
        let credit = t.pointee.credit
        t.pointee.credit = 0
        return .done(credit: credit, morePending: t.pointee.writeBIO.map { weir_bio_pending($0) > 0 } ?? false)
    }
}

extension Shard {
    /// tcp over TLS: before passing the upstream's FIN to the client, send close_notify. True
    /// when it is on its way (shut the socket once that send completes).
    func tlsCloseNotify(_ c: UnsafeMutablePointer<Connection>) -> Bool {
        let t = tlsState(c)
        guard let ssl = t.pointee.ssl, !t.pointee.closeNotifySent else { return false }
        t.pointee.closeNotifySent = true
        // Before the handshake ended there is no session to close: a plain FIN (SSL_shutdown
        // would fail, "shutdown while in init").
        guard t.pointee.handshakeDone else { return false }
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
        tlsFlush(c)
        return c.flow(1).pointee.sending
    }
}

// MARK: TLS to upstreams

extension Shard {
    func startUpstreamTLS(_ u: UnsafeMutablePointer<Upstream>, _ tls: UpstreamTLS) -> Bool {
        let t = upstreamTLS + (u - upstreams)
        guard newUpstreamSSL(tls, in: t), let ssl = t.pointee.ssl else { return false }
        u.pointee.isTLS = true
        u.pointee.tlsID = tls.id
        // The first flight (ClientHello) is written now and sent by the caller.
        ERR_clear_error()
        _ = SSL_do_handshake(ssl)
        return true
    }

    /// Encrypts request bytes (or, with a nil pointer, sends what the handshake wrote) to the
    /// upstream; the owner's flow 0 is busy until the ciphertext is out.
    func upstreamTLSSend(_ c: UnsafeMutablePointer<Connection>, _ u: UnsafeMutablePointer<Upstream>, _ pointer: UnsafeMutableRawPointer?, _ count: Int) {
        let t = upstreamTLS + (u - upstreams)
        guard t.pointee.sendBuffer < 0 else { return }
        var failed = false
        guard let (out, length, taken) = tlsSeal(t, pointer, count, failed: &failed) else {
            if failed { upstreamFailed(c, .reset) }
            return
        }
        t.pointee.sendBuffer = out
        t.pointee.sendLength = length
        t.pointee.sendSent = 0
        t.pointee.credit = taken
        upstreamCiphertextSend(c, u)
    }

    func upstreamCiphertextSend(_ c: UnsafeMutablePointer<Connection>, _ u: UnsafeMutablePointer<Upstream>) {
        let t = upstreamTLS + (u - upstreams)
        c.flow(0).pointee.sending = true
        u.pointee.inflight += 1
        ring.send(fd: u.pointee.fd, buffer: headBuffer(t.pointee.sendBuffer) + Int(t.pointee.sendSent),
                  count: Int(t.pointee.sendLength - t.pointee.sendSent),
                  userData: UserData(op: Op.upSend, slot: u - upstreams, generation: u.pointee.generation))
    }

    /// As tlsSent, for the upstream side.
    func upstreamTLSSent(_ c: UnsafeMutablePointer<Connection>, _ u: UnsafeMutablePointer<Upstream>, _ res: Int32) -> Int32? {
        switch ciphertextSent(upstreamTLS + (u - upstreams), res) {
        case .more:
            upstreamCiphertextSend(c, u)
            return nil
        case .done(let credit, let morePending):
            if morePending { upstreamTLSSend(c, u, nil, 0); if credit == 0 { return nil } }
            return credit
        }
    }

}
