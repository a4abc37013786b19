// `tls:` on a listener: certificates loaded and checked when the snapshot compiles (a bad file, a
// key that does not match, an expired certificate are config errors with file:line), one OpenSSL
// context per certificate, SNI choosing among them (exact name, then wildcard, then default),
// ALPN, a minimum version and optional client certificates. Shards only create SSL objects from
// these contexts; a reload builds new contexts for new connections while open ones keep theirs.
import COpenSSL
import Foundation
import CWeirTLS
import WeirCore

public final class TLSContext: @unchecked Sendable {
    /// SSL_CTX per certificate, in the order written.
    public let contexts: [OpaquePointer]
    /// Lowercase server name -> certificate; wildcard suffix (".example.com") -> certificate.
    let exact: [String: Int]
    let wildcard: [String: Int]
    public let defaultIndex: Int
    /// ALPN protocols in wire format (length-prefixed), server preference first.
    let alpnWire: UnsafeMutableBufferPointer<UInt8>
    public let alpn: [String]
    public let minVersion: String
    public let clientCA: String?
    public let summaries: [String]
    /// Session ticket keys shared by every certificate's context, rotated on a timer.
    let ticketKeys: OpaquePointer?
    /// Per context: the DER OCSP response stapled to its handshakes, if any.
    let staples: [[UInt8]?]
    public let ticketKeyRotationSeconds: Int

    init(contexts: [OpaquePointer], exact: [String: Int], wildcard: [String: Int], defaultIndex: Int, alpn: [String],
         minVersion: String, clientCA: String?, summaries: [String], ticketKeyRotationSeconds: Int, staples: [[UInt8]?] = []) {
        self.contexts = contexts; self.exact = exact; self.wildcard = wildcard; self.defaultIndex = defaultIndex
        self.staples = staples
        self.alpn = alpn; self.minVersion = minVersion; self.clientCA = clientCA; self.summaries = summaries
        self.ticketKeyRotationSeconds = ticketKeyRotationSeconds
        ticketKeys = weir_ticket_keys_new(ticketKeyRotationSeconds)
        for ctx in contexts where ticketKeys != nil { _ = weir_ticket_keys_install(ctx, ticketKeys) }
        let wire = WeirConfig.alpnWire(alpn) ?? []  // lengths were checked when the listener compiled
        alpnWire = .allocate(capacity: max(1, wire.count))
        _ = alpnWire.initialize(from: wire)
        let arg = Unmanaged.passUnretained(self).toOpaque()
        for ctx in contexts {
            weir_ssl_ctx_set_servername_callback(ctx, tlsServerNameCallback, arg)
            if !alpn.isEmpty { SSL_CTX_set_alpn_select_cb(ctx, tlsALPNCallback, arg) }
            if staples.contains(where: { $0 != nil }) { _ = weir_ssl_ctx_set_status_cb(ctx, tlsStatusCallback, arg) }
        }
    }

    deinit {
        for c in contexts { SSL_CTX_free(c) }
        weir_ticket_keys_free(ticketKeys)
        alpnWire.deallocate()
    }

    /// Ticket key rotations so far.
    public var ticketKeyRotations: Int { ticketKeys.map { weir_ticket_keys_rotations($0) } ?? 0 }

    /// The context new connections start with (SNI may move them to another).
    public var primary: OpaquePointer { contexts[defaultIndex] }

    /// The certificate for a (lowercase) server name: exact, then the closest wildcard, then default.
    public func select(_ name: String) -> Int {
        if let i = exact[name] { return i }
        var rest = Substring(name)
        while let dot = rest.firstIndex(of: ".") {
            rest = rest[dot...]
            if let i = wildcard[String(rest)] { return i }
            rest = rest.dropFirst()
        }
        return defaultIndex
    }
}

/// SNI: switch the connection to the certificate its server name asks for.
let tlsServerNameCallback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int32>?, UnsafeMutableRawPointer?) -> Int32 = { ssl, _, arg in
    guard let ssl, let arg else { return weir_tlsext_err_noack() }
    let tls = Unmanaged<TLSContext>.fromOpaque(arg).takeUnretainedValue()
    guard let name = SSL_get_servername(ssl, weir_nametype_host()) else { return weir_tlsext_err_ok() }
    let i = tls.select(String(cString: name).lowercased())
    if SSL_get_SSL_CTX(ssl) != tls.contexts[i] { SSL_set_SSL_CTX(ssl, tls.contexts[i]) }
    return weir_tlsext_err_ok()
}

/// OCSP stapling: a client that asks for the certificate's status gets the response configured
/// for the certificate its server name chose (SNI runs first), or none.
let tlsStatusCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Int32 = { ssl, arg in
    guard let ssl, let arg else { return weir_tlsext_err_noack() }
    let tls = Unmanaged<TLSContext>.fromOpaque(arg).takeUnretainedValue()
    let current = SSL_get_SSL_CTX(ssl)
    guard let i = tls.contexts.firstIndex(where: { $0 == current }), i < tls.staples.count, let der = tls.staples[i] else {
        return weir_tlsext_err_noack()
    }
    _ = der.withUnsafeBufferPointer { weir_ssl_staple(ssl, $0.baseAddress, $0.count) }
    return weir_tlsext_err_ok()
}

/// ALPN: the first of our protocols the client offers; none in common means no ALPN.
let tlsALPNCallback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<UnsafePointer<UInt8>?>?, UnsafeMutablePointer<UInt8>?,
                                     UnsafePointer<UInt8>?, UInt32, UnsafeMutableRawPointer?) -> Int32 = { _, out, outLength, input, inputLength, arg in
    guard let arg, let out, let outLength, let input else { return weir_tlsext_err_noack() }
    let tls = Unmanaged<TLSContext>.fromOpaque(arg).takeUnretainedValue()
    var chosen: UnsafeMutablePointer<UInt8>? = nil
    var length: UInt8 = 0
    let rc = SSL_select_next_proto(&chosen, &length, tls.alpnWire.baseAddress, UInt32(tls.alpnWire.count), input, inputLength)
    guard rc == OPENSSL_NPN_NEGOTIATED, let chosen else { return weir_tlsext_err_noack() }
    out.pointee = UnsafePointer(chosen)
    outLength.pointee = length
    return weir_tlsext_err_ok()
}

/// The text of OpenSSL's error queue (and clears it).
public func openSSLErrors() -> String {
    var parts: [String] = []
    while true {
        let e = ERR_get_error()
        if e == 0 { break }
        var buf = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(e, &buf, buf.count)
        parts.append(String(cString: buf))
    }
    return parts.isEmpty ? "unknown OpenSSL error" : parts.joined(separator: "; ")
}

extension Compiler {
    static let tlsVersions = ["1.2", "1.3"]
    /// Mozilla's "intermediate" profile: forward secrecy and AEAD only (no CBC, so no LUCKY13
    /// class of attacks), ECDSA and RSA certificates; TLS 1.3 suites are OpenSSL's (all AEAD).
    /// The profile's DHE suites are left out: Weir loads no DH parameters.
    public static let defaultCiphers = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
        + "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    public static let defaultCurves = "X25519:P-256:P-384"

    /// Why TLS parameters would not compile (nil: they would), checked without certificates, so
    /// a control plane's context can be judged before its secrets arrive.
    public static func tlsParameterProblem(min: String?, max: String?, ciphers: String?, curves: String?, alpn: [String]) -> String? {
        let lo = min ?? "1.2", hi = max ?? "1.3"
        guard tlsVersions.contains(lo), tlsVersions.contains(hi), lo <= hi else { return "TLS versions \(lo) to \(hi) are not within 1.2 to 1.3" }
        if alpnWire(alpn) == nil { return "alpn protocols must be 1 to 255 bytes" }
        guard let ctx = SSL_CTX_new(TLS_method()) else { return "cannot create a TLS context" }
        defer { SSL_CTX_free(ctx) }
        var problem: String? = nil
        let p = SourcePosition(file: "", line: 0, column: 0)
        _ = applyTLSParameters(ctx, min: lo, max: hi, ciphers: ciphers.map { Located($0, at: p) }, suites: nil,
                               curves: curves.map { Located($0, at: p) }, at: p) { _, m in if problem == nil { problem = m } }
        return problem
    }

    /// min/max version, ciphers, TLS 1.3 suites and groups on a context; false (with `bad`
    /// told) when OpenSSL refuses a list, naming it.
    static func applyTLSParameters(_ ctx: OpaquePointer, min: String, max: String, ciphers: Located<String>?, suites: Located<String>?,
                                   curves: Located<String>?, at position: SourcePosition, _ bad: (SourcePosition, String) -> Void) -> Bool {
        func version(_ v: String) -> Int32 { v == "1.3" ? weir_tls1_3_version() : weir_tls1_2_version() }
        _ = weir_ssl_ctx_set_min_proto(ctx, version(min))
        _ = weir_ssl_ctx_set_max_proto(ctx, version(max))
        var ok = true
        ERR_clear_error()
        if SSL_CTX_set_cipher_list(ctx, ciphers?.value ?? defaultCiphers) != 1 {
            bad(ciphers?.position ?? position, "ciphers: OpenSSL accepts none of '\(ciphers?.value ?? defaultCiphers)' (\(openSSLErrors()))"); ok = false
        }
        if let s = suites, SSL_CTX_set_ciphersuites(ctx, s.value) != 1 {
            bad(s.position, "ciphersuites: OpenSSL refuses '\(s.value)' (\(openSSLErrors())); TLS 1.3 names look like TLS_AES_128_GCM_SHA256"); ok = false
        }
        if weir_ssl_ctx_set_groups_list(ctx, curves?.value ?? defaultCurves) != 1 {
            bad(curves?.position ?? position, "curves: OpenSSL refuses '\(curves?.value ?? defaultCurves)' (\(openSSLErrors()))"); ok = false
        }
        return ok
    }

    static func compileTLS(_ d: TLSDocument, listener: String, fail: (SourcePosition, String) -> Void) -> TLSContext? {
        var ok = true
        func bad(_ p: SourcePosition, _ m: String) { fail(p, "listener '\(listener)' tls: \(m)"); ok = false }
        let minVersion = d.minVersion?.value ?? "1.2"
        if !tlsVersions.contains(minVersion) { bad(d.minVersion!.position, "min_version must be \"1.2\" or \"1.3\", not '\(minVersion)'") }
        let maxVersion = d.maxVersion?.value ?? "1.3"
        if !tlsVersions.contains(maxVersion) { bad(d.maxVersion!.position, "max_version must be \"1.2\" or \"1.3\", not '\(maxVersion)'") }
        else if maxVersion < minVersion { bad(d.maxVersion!.position, "max_version \(maxVersion) is below min_version \(minVersion)") }
        for p in d.alpn where p.value.isEmpty || p.value.utf8.count > 255 { bad(p.position, "an alpn protocol must be 1 to 255 bytes") }
        if d.certificates.isEmpty { bad(d.position, "needs at least one entry under 'certificates'") }
        if let first = d.clientSAN.first, d.clientCA == nil { bad(first.position, "client_san needs client_ca (names are checked on certificates the CA verified)") }
        for m in d.clientSAN where m.value.value.isEmpty { bad(m.position, "a client_san entry cannot be empty") }
        var contexts: [OpaquePointer] = []
        var exact: [String: Int] = [:], wildcard: [String: Int] = [:]
        var defaultIndex: Int? = nil
        var summaries: [String] = []
        var staples: [[UInt8]?] = []
        defer { if !ok { for c in contexts { SSL_CTX_free(c) } } }
        for c in d.certificates {
            guard let cert = c.cert, let key = c.key else { bad(c.position, "a certificate needs 'cert' and 'key' (PEM file paths)"); continue }
            guard let ctx = SSL_CTX_new(TLS_server_method()) else { bad(c.position, "cannot create a TLS context: \(openSSLErrors())"); continue }
            var usable = true
            ERR_clear_error()
            weir_ctx_no_password(ctx)
            let loadedChain = c.inlinePEM.map { p in p.cert.withCString { weir_ctx_use_pem_chain(ctx, $0, p.cert.utf8.count) } }
                ?? SSL_CTX_use_certificate_chain_file(ctx, cert.value)
            let loadedKey = { c.inlinePEM.map { p in p.key.withCString { weir_ctx_use_pem_key(ctx, $0, p.key.utf8.count) } }
                ?? SSL_CTX_use_PrivateKey_file(ctx, key.value, SSL_FILETYPE_PEM) }
            if loadedChain != 1 {
                bad(cert.position, "cannot load certificate \(cert.value): \(openSSLErrors())"); usable = false
            } else if loadedKey() != 1 {
                let why = openSSLErrors()
                if why.contains("mismatch") { bad(key.position, "key \(key.value) does not match certificate \(cert.value)") }
                else { bad(key.position, "cannot load key \(key.value): \(why)") }
                usable = false
            } else if SSL_CTX_check_private_key(ctx) != 1 {
                bad(key.position, "key \(key.value) does not match certificate \(cert.value)"); usable = false
            } else if let x = SSL_CTX_get0_certificate(ctx) {
                // A file's certificate out of date is an operator's error; one from SDS is
                // served anyway (as Envoy does), with a warning: its rotation is the agent's.
                let when = X509_cmp_current_time(X509_get0_notAfter(x)) < 0 ? "has expired" : X509_cmp_current_time(X509_get0_notBefore(x)) > 0 ? "is not valid yet" : nil
                if let when {
                    if c.inlinePEM != nil { Log.warning("listener '\(listener)' tls: certificate \(cert.value) \(when); serving it until a new version comes") }
                    else { bad(cert.position, "certificate \(cert.value) \(when)"); usable = false }
                }
            }
            if !applyTLSParameters(ctx, min: minVersion, max: maxVersion, ciphers: d.ciphers, suites: d.cipherSuites, curves: d.curves,
                                   at: d.position, bad) { usable = false }
            // The server's order (its list is strongest first): a client cannot steer the
            // choice to the weakest suite both allow.
            _ = weir_ssl_ctx_prefer_server_ciphers(ctx)
            _ = weir_ssl_ctx_set_mode(ctx, weir_mode_partial_and_moving())
            // Resumption is by stateless tickets (keys per context, so a reload rotates them):
            // OpenSSL's own session cache would only add a locked table walked every 255
            // handshakes. One ticket per handshake is enough for a client to resume.
            _ = weir_ssl_ctx_session_cache_off(ctx)
            _ = SSL_CTX_set_num_tickets(ctx, 1)
            if let ca = d.clientCA, let pem = d.clientCAPEM {
                if pem.withCString({ weir_ctx_trust_pem(ctx, $0, pem.utf8.count, 1) }) < 1 {
                    bad(ca.position, "client CA \(ca.value) holds no certificate: \(openSSLErrors())"); usable = false
                } else {
                    if !installSANs(ctx, d.clientSAN.map(\.value)) { bad(d.clientSAN[0].position, "client_san: cannot install the matchers"); usable = false }
                    weir_ctx_set_verify(ctx, weir_verify_peer_required())
                    _ = SSL_CTX_set_session_id_context(ctx, "weir", 4)
                }
            } else if let ca = d.clientCA {
                if SSL_CTX_load_verify_locations(ctx, ca.value, nil) != 1 {
                    bad(ca.position, "cannot load client_ca \(ca.value): \(openSSLErrors())"); usable = false
                } else {
                    if let names = SSL_load_client_CA_file(ca.value) { SSL_CTX_set_client_CA_list(ctx, names) }
                    if !installSANs(ctx, d.clientSAN.map(\.value)) { bad(d.clientSAN[0].position, "client_san: cannot install the matchers"); usable = false }
                    weir_ctx_set_verify(ctx, weir_verify_peer_required())
                    // Sessions resumed across certificates must share an id context.
                    _ = SSL_CTX_set_session_id_context(ctx, "weir", 4)
                }
            }
            var staple: [UInt8]? = nil
            if let s = c.ocspStaple {
                if let data = c.ocspStapleDER.map({ Data($0) }) ?? FileManager.default.contents(atPath: s.value) {
                    let bytes = [UInt8](data)
                    let status = bytes.withUnsafeBufferPointer { weir_ocsp_response_status($0.baseAddress, $0.count) }
                    if status < 0 { bad(s.position, "ocsp_staple \(s.value) is not a DER OCSP response"); usable = false }
                    else if status != 0 { bad(s.position, "ocsp_staple \(s.value) is an OCSP response with status \(status), not successful"); usable = false }
                    else { staple = bytes }
                } else {
                    bad(s.position, "cannot read ocsp_staple \(s.value)"); usable = false
                }
            }
            if !usable { SSL_CTX_free(ctx); continue }
            let index = contexts.count
            contexts.append(ctx)
            staples.append(staple)
            if c.serverNames.isEmpty {
                if defaultIndex != nil { bad(c.position, "only one certificate may leave out server_names (the default)") }
                defaultIndex = index
            }
            for n in c.serverNames {
                let name = n.value.lowercased()
                let bare = name.hasPrefix("*.") ? String(name.dropFirst(2)) : name
                if bare.isEmpty || bare.contains("*") || bare.contains(" ") { bad(n.position, "server name '\(n.value)' must be a name or '*.' and a domain"); continue }
                if name.hasPrefix("*.") {
                    if wildcard[String(name.dropFirst())] != nil { bad(n.position, "server name '\(n.value)' is listed twice") }
                    wildcard[String(name.dropFirst())] = index
                } else {
                    if exact[name] != nil { bad(n.position, "server name '\(n.value)' is listed twice") }
                    exact[name] = index
                }
            }
            summaries.append("\(cert.value)" + (c.serverNames.isEmpty ? " (default)" : " for " + c.serverNames.map(\.value).joined(separator: ", ")))
        }
        guard ok, !contexts.isEmpty else { return nil }
        var rotation = 43_200
        if let r = d.ticketKeyRotation {
            if (1_000_000_000...604_800_000_000_000).contains(r.value) { rotation = Int(r.value / 1_000_000_000) }
            else { bad(r.position, "ticket_key_rotation must be 1s to 7d") }
        }
        guard ok else { return nil }
        return TLSContext(contexts: contexts, exact: exact, wildcard: wildcard, defaultIndex: defaultIndex ?? 0,
                          alpn: d.alpn.map(\.value), minVersion: minVersion, clientCA: d.clientCA?.value, summaries: summaries,
                          ticketKeyRotationSeconds: rotation, staples: staples)
    }
}

extension Compiler {
    /// Why a certificate chain and key in PEM would not load (nil: they load and match), checked
    /// when an SDS secret arrives so a bad one is refused by its own name.
    public static func certificateProblem(chain: String, key: String) -> String? {
        guard let ctx = SSL_CTX_new(TLS_server_method()) else { return "cannot create a TLS context" }
        defer { SSL_CTX_free(ctx) }
        ERR_clear_error()
        weir_ctx_no_password(ctx)
        if chain.withCString({ weir_ctx_use_pem_chain(ctx, $0, chain.utf8.count) }) != 1 { return "its certificate_chain does not load: \(openSSLErrors())" }
        if key.withCString({ weir_ctx_use_pem_key(ctx, $0, key.utf8.count) }) != 1 { return "its private_key does not load: \(openSSLErrors())" }
        if SSL_CTX_check_private_key(ctx) != 1 { return "its private_key does not match its certificate" }
        return nil
    }

    /// Why a CA bundle in PEM holds no usable certificate (nil: it does).
    public static func caProblem(_ pem: String) -> String? {
        guard let ctx = SSL_CTX_new(TLS_server_method()) else { return "cannot create a TLS context" }
        defer { SSL_CTX_free(ctx) }
        ERR_clear_error()
        return pem.withCString({ weir_ctx_trust_pem(ctx, $0, pem.utf8.count, 0) }) < 1 ? "its trusted_ca holds no certificate: \(openSSLErrors())" : nil
    }
}

/// TLS from Weir to a cluster's endpoints: a client context (verification, subject alt name
/// matchers, optional client certificate, ALPN) and the server name to send. `checkHost`: the
/// certificate must be for `serverName` (YAML `tls:` with verify and no verify_san); from xDS the
/// name is only sent, as Envoy does (Istio's SNI is a cluster key, not a certificate name).
public final class UpstreamTLS: @unchecked Sendable {
    public let context: OpaquePointer
    public let serverName: String?
    public let verify: Bool
    public let checkHost: Bool
    /// What the handshake checks, for /config_dump and messages.
    public let summary: String
    /// A fingerprint of everything the context was made from (never 0): pooled connections
    /// remember it, and one made under other settings is not lent. A recompile of the same
    /// settings (a reload, an EDS update) keeps the pool.
    public let id: UInt64
    /// ALPN for TCP sessions, in wire form, when it differs from the context's (HTTP's).
    public let tcpALPNWire: [UInt8]?
    init(context: OpaquePointer, serverName: String?, verify: Bool, checkHost: Bool, summary: String, fingerprint: Hasher,
         tcpALPNWire: [UInt8]? = nil) {
        self.context = context; self.serverName = serverName; self.verify = verify; self.checkHost = checkHost; self.summary = summary
        self.tcpALPNWire = tcpALPNWire
        var h = fingerprint
        h.combine(serverName); h.combine(verify); h.combine(checkHost)
        self.id = UInt64(bitPattern: Int64(h.finalize())) | 1
    }
    deinit { SSL_CTX_free(context) }
}

/// Adds subject alt name matchers to a context (checked by weir_ctx_set_verify's callback).
func installSANs(_ ctx: OpaquePointer, _ matchers: [SANMatcher]) -> Bool {
    for m in matchers {
        let ok = m.value.withCString { weir_ctx_add_san_matcher(ctx, m.kind.rawValue, m.operation.rawValue, m.ignoreCase ? 1 : 0, $0, m.value.utf8.count) }
        if ok != 1 { return false }
    }
    return true
}

/// ALPN protocols in wire form (length-prefixed), or nil when one is empty or too long.
func alpnWire(_ protocols: [String]) -> [UInt8]? {
    var wire: [UInt8] = []
    for p in protocols {
        guard !p.isEmpty, p.utf8.count <= 255 else { return nil }
        wire.append(UInt8(p.utf8.count)); wire += Array(p.utf8)
    }
    return wire
}

extension Compiler {
    static func compileUpstreamTLS(_ t: [String: Located<String>], position: SourcePosition, cluster: String,
                                   fail: (SourcePosition, String) -> Void) -> UpstreamTLS? {
        var ok = true
        func bad(_ p: SourcePosition, _ m: String) { fail(p, "cluster '\(cluster)' tls: \(m)"); ok = false }
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { bad(position, "cannot create a TLS context: \(openSSLErrors())"); return nil }
        _ = applyTLSParameters(ctx, min: "1.2", max: "1.3", ciphers: nil, suites: nil, curves: nil, at: position, bad)
        _ = weir_ssl_ctx_set_mode(ctx, weir_mode_partial_and_moving())
        weir_ctx_no_renegotiation(ctx)
        var verify = true
        if let v = t["verify"] {
            switch v.value {
            case "true": verify = true
            case "false": verify = false
            default: bad(v.position, "verify must be true or false")
            }
        }
        ERR_clear_error()
        if let ca = t["ca"] {
            if SSL_CTX_load_verify_locations(ctx, ca.value, nil) != 1 { bad(ca.position, "cannot load ca \(ca.value): \(openSSLErrors())") }
        } else if verify {
            _ = SSL_CTX_set_default_verify_paths(ctx)
        }
        var sans: [SANMatcher] = []
        if let v = t["verify_san"] {
            sans = v.value.split(separator: ",").map { SANMatcher(text: String($0).trimmingCharacters(in: .whitespaces)) }
            if sans.isEmpty || sans.contains(where: { $0.value.isEmpty }) { bad(v.position, "verify_san must list names (an empty prefix, suffix or contains would match any name)") }
            if !verify { bad(v.position, "verify_san needs verify: true") }
            if !installSANs(ctx, sans) { bad(v.position, "cannot install the verify_san matchers") }
        }
        weir_ctx_set_verify(ctx, verify ? weir_verify_peer() : weir_verify_none())
        if let a = t["alpn"] {
            let list = a.value.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
            if let wire = alpnWire(list), !wire.isEmpty {
                if SSL_CTX_set_alpn_protos(ctx, wire, UInt32(wire.count)) != 0 { bad(a.position, "cannot set alpn: \(openSSLErrors())") }
            } else {
                bad(a.position, "alpn must list protocol names of 1 to 255 bytes")
            }
        }
        weir_ctx_no_password(ctx)
        switch (t["cert"], t["key"]) {
        case (let cert?, let key?):
            if SSL_CTX_use_certificate_chain_file(ctx, cert.value) != 1 {
                bad(cert.position, "cannot load certificate \(cert.value): \(openSSLErrors())")
            } else if SSL_CTX_use_PrivateKey_file(ctx, key.value, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1 {
                bad(key.position, "key \(key.value) cannot be loaded or does not match certificate \(cert.value)")
            } else if let x = SSL_CTX_get0_certificate(ctx), X509_cmp_current_time(X509_get0_notAfter(x)) < 0 {
                bad(cert.position, "certificate \(cert.value) has expired")
            }
        case (let cert?, nil): bad(cert.position, "a client certificate needs its 'key'")
        case (nil, let key?): bad(key.position, "a client key needs its 'cert'")
        default: break
        }
        if let n = t["sni"], n.value.isEmpty || n.value.contains(" ") { bad(n.position, "sni must be a host name") }
        guard ok else { SSL_CTX_free(ctx); return nil }
        // The settings and the files' contents as read now.
        var h = Hasher()
        for key in t.keys.sorted() {
            h.combine(key); h.combine(t[key]!.value)
            if key == "ca" || key == "cert" || key == "key" { h.combine(FileManager.default.contents(atPath: t[key]!.value)) }
        }
        let summary = verify ? (sans.isEmpty ? "verify \(t["sni"]?.value ?? "(no name)")" : "verify san \(sans.map(\.description).joined(separator: ","))") : "no verification"
        return UpstreamTLS(context: ctx, serverName: t["sni"]?.value, verify: verify, checkHost: verify && sans.isEmpty, summary: summary, fingerprint: h)
    }

    /// TLS to the endpoints from xDS: PEM from SDS or inline, SAN matchers, ALPN, TLS parameters.
    static func compileUpstreamTLS(_ d: UpstreamTLSDocument, cluster: String, fail: (SourcePosition, String) -> Void) -> UpstreamTLS? {
        var ok = true
        func bad(_ p: SourcePosition, _ m: String) { fail(p, "cluster '\(cluster)' tls: \(m)"); ok = false }
        let p = d.position
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { bad(p, "cannot create a TLS context: \(openSSLErrors())"); return nil }
        if !tlsVersions.contains(d.minVersion) || !tlsVersions.contains(d.maxVersion) || d.maxVersion < d.minVersion {
            bad(p, "TLS versions \(d.minVersion) to \(d.maxVersion) are not 1.2 to 1.3")
        }
        _ = applyTLSParameters(ctx, min: d.minVersion, max: d.maxVersion, ciphers: d.ciphers.map { Located($0, at: p) }, suites: nil,
                               curves: d.curves.map { Located($0, at: p) }, at: p, bad)
        _ = weir_ssl_ctx_set_mode(ctx, weir_mode_partial_and_moving())
        weir_ctx_no_renegotiation(ctx)
        weir_ctx_no_password(ctx)
        ERR_clear_error()
        if let ca = d.trustedCA {
            if ca.pem.withCString({ weir_ctx_trust_pem(ctx, $0, ca.pem.utf8.count, 0) }) < 1 { bad(p, "trusted CA \(ca.name) holds no certificate: \(openSSLErrors())") }
        } else if !d.san.isEmpty {
            bad(p, "subject alt name matchers need a trusted CA")
        }
        if d.san.contains(where: { $0.value.isEmpty }) { bad(p, "an empty subject alt name matcher would match any name") }
        if !installSANs(ctx, d.san) { bad(p, "cannot install the subject alt name matchers") }
        weir_ctx_set_verify(ctx, d.trustedCA != nil ? weir_verify_peer() : weir_verify_none())
        if let c = d.certificate {
            if c.chain.withCString({ weir_ctx_use_pem_chain(ctx, $0, c.chain.utf8.count) }) != 1 { bad(p, "certificate \(c.name) does not load: \(openSSLErrors())") }
            else if c.key.withCString({ weir_ctx_use_pem_key(ctx, $0, c.key.utf8.count) }) != 1 || SSL_CTX_check_private_key(ctx) != 1 {
                bad(p, "the private key of \(c.name) does not load or does not match its certificate")
            } else if let x = SSL_CTX_get0_certificate(ctx), X509_cmp_current_time(X509_get0_notAfter(x)) < 0 {
                Log.warning("cluster '\(cluster)' tls: certificate \(c.name) has expired; sending it until a new version comes")
            }
        }
        if !d.alpn.isEmpty {
            if let wire = alpnWire(d.alpn) {
                if SSL_CTX_set_alpn_protos(ctx, wire, UInt32(wire.count)) != 0 { bad(p, "cannot set alpn: \(openSSLErrors())") }
            } else {
                bad(p, "alpn protocols must be 1 to 255 bytes")
            }
        }
        var tcpWire: [UInt8]? = nil
        if let tcp = d.tcpALPN {
            tcpWire = alpnWire(tcp)
            if tcpWire == nil { bad(p, "alpn protocols must be 1 to 255 bytes") }
        }
        if let n = d.serverName, n.isEmpty || n.utf8.count > 255 { bad(p, "sni must be 1 to 255 bytes") }
        guard ok else { SSL_CTX_free(ctx); return nil }
        var summary = d.trustedCA.map { "verify by \($0.name)" } ?? "no verification"
        if !d.san.isEmpty { summary += ", san \(d.san.map(\.description).joined(separator: ","))" }
        if let c = d.certificate { summary += ", client certificate \(c.name)" }
        var h = Hasher()
        h.combine(d.certificate?.chain); h.combine(d.certificate?.key); h.combine(d.trustedCA?.pem)
        for m in d.san { h.combine(m.kind); h.combine(m.operation); h.combine(m.value); h.combine(m.ignoreCase) }
        h.combine(d.alpn); h.combine(d.minVersion); h.combine(d.maxVersion); h.combine(d.ciphers); h.combine(d.curves)
        return UpstreamTLS(context: ctx, serverName: d.serverName, verify: d.trustedCA != nil, checkHost: false, summary: summary, fingerprint: h,
                           tcpALPNWire: tcpWire)
    }
}
