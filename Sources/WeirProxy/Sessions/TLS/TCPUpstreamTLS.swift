// TLS from a TCP session to its upstream (a tcp listener, or a tcp_proxy chain, whose cluster
// speaks TLS to the endpoint: Istio's mTLS to tlsMode istio endpoints). The mirror of
// termination: flow 0's bytes (client to upstream) are encrypted into a head buffer and sent on
// the upstream socket; what flow 1 receives is decrypted in place into its queue. Client bytes
// wait queued until the handshake (and the certificate and SAN checks) completed; nothing from
// the upstream reaches the client before that either. The state lives in
// Shard.tcpUpstreamTLS at the connection's slot.
import COpenSSL
import CWeirTLS
import WeirConfig
import WeirCore
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

extension Shard {
    @inline(__always) func upTLS(_ c: UnsafeMutablePointer<Connection>) -> UnsafeMutablePointer<TLSState> { tcpUpstreamTLS + slot(of: c) }

    /// Starts the client handshake on a connected upstream socket; its first flight is sent now.
    func startTCPUpstreamTLS(_ c: UnsafeMutablePointer<Connection>, _ tls: UpstreamTLS) -> Bool {
        let t = upTLS(c)
        // TCP's own ALPN (Istio: "istio", which the peer's TCP chains select on).
        guard newUpstreamSSL(tls, in: t, alpn: tls.tcpALPNWire), let ssl = t.pointee.ssl else { return false }
        c.pointee.upstreamIsTLS = true
        // The handshake is part of connecting: it must end within the connect timeout.
        let timeout = snapshotOf(c).clusters[Int(c.pointee.clusterIndex)].connectTimeoutNanoseconds
        c.pointee.helloDeadline = now + timeout
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if rc != 1 && SSL_get_error(ssl, rc) != SSL_ERROR_WANT_READ {
            Log.warning("shard \(index): TLS to upstream: the handshake cannot start: \(openSSLErrors())")
            return false
        }
        upTLSFlush(c)
        return true
    }

    /// The upstream's handshake failed (a certificate or SAN the cluster does not accept, an
    /// endpoint that speaks no TLS, closed or timed out before the end): a failed connect for
    /// outlier detection and stats, and the session closes. (Not retried on another endpoint: a
    /// receive may still be armed on the socket, and the client's bytes wait in its queue.)
    func upTLSFailed(_ c: UnsafeMutablePointer<Connection>, _ why: String, timedOut: Bool = false) {
        let e = Int(c.pointee.endpointSlot)
        if e >= 0 {
            if timedOut { control.named.endpoints[e].connectTimeouts += 1 } else { control.named.endpoints[e].connectFailures += 1 }
        }
        if !timedOut { control.stats.pointee.connectFailures += 1 }
        noteConnect(c, failed: true)
        let cluster = snapshotOf(c).clusters[Int(c.pointee.clusterIndex)]
        let ei = Int(c.pointee.endpointIndex)
        let address = cluster.endpoints.indices.contains(ei) ? "\(cluster.endpoints[ei].address)" : "its original destination"
        Log.warning("shard \(index): TLS to upstream \(address) of cluster '\(cluster.name)' failed: \(why)")
        abort(c)
    }

    func endTCPUpstreamTLS(_ c: UnsafeMutablePointer<Connection>) {
        let t = upTLS(c)
        if let ssl = t.pointee.ssl { SSL_free(ssl) }
        if t.pointee.sendBuffer >= 0 { releaseHeadBuffer(t.pointee.sendBuffer) }
        t.pointee = TLSState()
        c.pointee.upstreamIsTLS = false
    }

    /// Sends what OpenSSL wrote on its own (handshake records, alerts) when flow 0 is free.
    func upTLSFlush(_ c: UnsafeMutablePointer<Connection>) {
        let t = upTLS(c)
        guard c.pointee.state == .open, !c.flow(0).pointee.sending, t.pointee.sendBuffer < 0,
              let w = t.pointee.writeBIO, weir_bio_pending(w) > 0 else { return }
        upTLSStartSend(c, nil, 0)
    }

    /// Encrypts up to `count` bytes of flow 0 (nil: only what OpenSSL has pending) and sends it.
    func upTLSStartSend(_ c: UnsafeMutablePointer<Connection>, _ pointer: UnsafeMutableRawPointer?, _ count: Int) {
        startCiphertext(c, .upstream, pointer, count)
    }

    /// As tlsSent, for the upstream side of a TCP session.
    func upTLSSent(_ c: UnsafeMutablePointer<Connection>, _ res: Int32) -> Int32? { ciphertextDone(c, .upstream, res) }

    /// Ciphertext from the upstream: advances the handshake, queues plaintext on flow 1. False
    /// when the session ended (aborted).
    func upTLSReceive(_ c: UnsafeMutablePointer<Connection>, bid: Int, count: Int) -> Bool {
        let t = upTLS(c)
        let f0 = c.flow(0), f1 = c.flow(1)
        switch tlsIngest(t, bid: bid, count: count, into: f1) {
        case .failed(let handshake):
            // A failure in the handshake, or an alert right after it (TLS 1.3 servers refuse a
            // client certificate so): the endpoint did not accept this connection.
            if handshake || !t.pointee.plaintextSeen { upTLSFailed(c, openSSLErrors()) } else { abort(c) }
            return false
        case .handshaking:
            upTLSFlush(c)
            return c.pointee.state == .open
        case .data(let plain, let closeNotify, let justDone):
            if plain > 0 && !t.pointee.plaintextSeen {
                t.pointee.plaintextSeen = true
                if let ssl = t.pointee.ssl, SSL_version(ssl) == TLS1_3_VERSION { noteConnect(c, failed: false) }
            }
            // Each step may end the session (a send that finds no head buffer aborts): stop then.
            if justDone {
                // Verified: what the client sent meanwhile goes now. Under TLS 1.2 the server
                // has accepted Weir's certificate by now; under TLS 1.3 it may still refuse it
                // (an alert after its Finished), so the connect counts as a success once the
                // first plaintext comes.
                c.pointee.helloDeadline = 0
                if let ssl = t.pointee.ssl, SSL_version(ssl) != TLS1_3_VERSION { noteConnect(c, failed: false) }
                if f0.pointee.sourceEnded && f0.pointee.queued == 0 { shutDestination(c, 0) }
            }
            // Client bytes waiting (after the handshake, or a renegotiation that held a write).
            if f0.pointee.queued > 0 && !f0.pointee.sending { sendHead(c, 0) }
            guard c.pointee.state == .open else { return false }
            upTLSFlush(c)
            guard c.pointee.state == .open else { return false }
            if plain > 0 && !f1.pointee.sending { sendHead(c, 1) }
            guard c.pointee.state == .open else { return false }
            if closeNotify {
                f1.pointee.sourceEnded = true
                if !f1.pointee.sending && f1.pointee.queued == 0 { shutDestination(c, 1) }
            }
            return c.pointee.state == .open
        }
    }

    /// Before passing the client's FIN to the upstream, send close_notify. True when it is on its
    /// way (shut the socket once that send completes), or when the handshake has not finished
    /// (the FIN waits for it).
    func upTLSCloseNotify(_ c: UnsafeMutablePointer<Connection>) -> Bool {
        let t = upTLS(c)
        guard let ssl = t.pointee.ssl else { return false }
        if !t.pointee.handshakeDone { return true }
        guard !t.pointee.closeNotifySent else { return false }
        t.pointee.closeNotifySent = true
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
        upTLSFlush(c)
        return c.flow(0).pointee.sending
    }
}
