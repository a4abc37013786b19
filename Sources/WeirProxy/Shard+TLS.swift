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
        guard let ssl = t.pointee.ssl else { releaseBuffer(bid); abortHTTP(c); return nil }
        let source = bufferPointer(bid)
        var written = 0
        while written < count {
            let w = BIO_write(t.pointee.readBIO, source + written, Int32(count - written))
            if w <= 0 { releaseBuffer(bid); abortHTTP(c); return nil }
            written += Int(w)
        }
        if !t.pointee.handshakeDone {
            ERR_clear_error()
            let r = SSL_do_handshake(ssl)
            if r != 1 {
                let e = SSL_get_error(ssl, r)
                releaseBuffer(bid)
                if e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE { tlsFlush(c); return 0 }
                tlsHandshakeFailed(c)
                return nil
            }
            t.pointee.handshakeDone = true
            if c.pointee.listenerSlot >= 0 {
                let l = Int(c.pointee.listenerSlot)
                control.named.listeners[l].tlsHandshakes += 1
                if SSL_session_reused(ssl) == 1 { control.named.listeners[l].tlsResumptions += 1 }
            }
        }
        let flow = c.flow(0)
        let capacity = limits.bufferBytes
        var current = bid, offset = 0, total = 0
        while true {
            let r = SSL_read(ssl, bufferPointer(current) + offset, Int32(capacity - offset))
            if r > 0 {
                offset += Int(r)
                total += Int(r)
                if offset == capacity {
                    enqueue(flow, bid: current, length: Int32(offset))
                    guard let spill = takeHeadBuffer() else {
                        control.stats.pointee.headBuffersExhausted += 1
                        abortHTTP(c)
                        return nil
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
            abortHTTP(c)
            return nil
        }
        if offset > 0 { enqueue(flow, bid: current, length: Int32(offset)) } else { releaseBuffer(current) }
        tlsFlush(c)
        // tcp: what the upstream said before the handshake ended can go now.
        let back = c.flow(1)
        if !c.pointee.isHTTP && c.pointee.state == .open && back.pointee.queued > 0 && !back.pointee.sending { sendHead(c, 1) }
        return total
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
        guard c.pointee.isHTTP else { return abort(c) }
        c.pointee.ex.closeAfter = true
        if c.flow(1).pointee.sending { lingerClose(c) } else { closeHTTP(c) }
    }

    /// Sends what OpenSSL wrote on its own (handshake records, alerts, session tickets) when
    /// nothing else is being sent.
    func tlsFlush(_ c: UnsafeMutablePointer<Connection>) {
        let t = tlsState(c)
        guard c.pointee.state == .open || c.pointee.state == .connecting, !c.flow(1).pointee.sending, t.pointee.sendBuffer < 0,
              let w = t.pointee.writeBIO, weir_bio_pending(w) > 0 else { return }
        tlsSendPending(c, credit: 0)
    }

    /// Encrypts up to `count` plaintext bytes and starts sending the ciphertext. The plaintext is
    /// credited when all the ciphertext is out (see tlsSent).
    func tlsSend(_ c: UnsafeMutablePointer<Connection>, _ pointer: UnsafeMutableRawPointer, _ count: Int) {
        let t = tlsState(c)
        guard let ssl = t.pointee.ssl, let w = t.pointee.writeBIO else { return abortHTTP(c) }
        // Bytes from the upstream before the client finished its handshake (a server that
        // speaks first) wait until it has: tlsReceive sends them then.
        guard t.pointee.handshakeDone else { return }
        // Keep the ciphertext (records add ~22 bytes per 16 KiB, plus anything already pending)
        // within one head buffer.
        let room = limits.bufferBytes - 2048 - Int(weir_bio_pending(w))
        let take = min(count, max(1024, room))
        let n = SSL_write(ssl, pointer, Int32(take))
        if n <= 0 && SSL_get_error(ssl, n) == SSL_ERROR_WANT_READ { return tlsFlush(c) }
        guard n > 0 else {
            Log.debug("shard \(index): TLS write failed: \(openSSLErrors())")
            return abortHTTP(c)
        }
        tlsSendPending(c, credit: Int32(n))
    }

    func tlsSendPending(_ c: UnsafeMutablePointer<Connection>, credit: Int32) {
        let t = tlsState(c)
        guard let out = takeHeadBuffer() else {
            control.stats.pointee.headBuffersExhausted += 1
            return abortHTTP(c)
        }
        let n = BIO_read(t.pointee.writeBIO, headBuffer(out), Int32(limits.bufferBytes))
        guard n > 0 else { releaseHeadBuffer(out); return }
        t.pointee.sendBuffer = out
        t.pointee.sendLength = n
        t.pointee.sendSent = 0
        t.pointee.credit = credit
        sendCiphertext(c)
    }

    func sendCiphertext(_ c: UnsafeMutablePointer<Connection>) {
        let t = tlsState(c)
        c.flow(1).pointee.sending = true
        c.pointee.inflight += 1
        ring.send(fd: c.pointee.downstreamFD, buffer: headBuffer(t.pointee.sendBuffer) + Int(t.pointee.sendSent),
                  count: Int(t.pointee.sendLength - t.pointee.sendSent),
                  userData: UserData(op: Op.send, sub: 1, slot: slot(of: c), generation: c.pointee.generation))
    }

    /// A ciphertext send finished `res` bytes: nil while more of it remains (the rest is being
    /// sent), else the plaintext bytes it carried (0 for TLS's own records).
    func tlsSent(_ c: UnsafeMutablePointer<Connection>, _ res: Int32) -> Int32? {
        let t = tlsState(c)
        t.pointee.sendSent += res
        if t.pointee.sendSent < t.pointee.sendLength {
            sendCiphertext(c)
            return nil
        }
        releaseHeadBuffer(t.pointee.sendBuffer)
        t.pointee.sendBuffer = -1
        let credit = t.pointee.credit
        t.pointee.credit = 0
        if let w = t.pointee.writeBIO, weir_bio_pending(w) > 0 {
            // More ciphertext than one buffer held: send it before anything else.
            tlsSendPending(c, credit: 0)
            if credit == 0 { return nil }
        }
        return credit
    }
}

extension Shard {
    /// tcp over TLS: before passing the upstream's FIN to the client, send close_notify. True
    /// when it is on its way (shut the socket once that send completes).
    func tlsCloseNotify(_ c: UnsafeMutablePointer<Connection>) -> Bool {
        let t = tlsState(c)
        guard let ssl = t.pointee.ssl, !t.pointee.closeNotifySent else { return false }
        t.pointee.closeNotifySent = true
        _ = SSL_shutdown(ssl)
        tlsFlush(c)
        return c.flow(1).pointee.sending
    }
}
