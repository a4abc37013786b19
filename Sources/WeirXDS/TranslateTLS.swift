// Downstream TLS from xDS: a filter chain's DownstreamTlsContext, with its certificate and CA
// from SDS (Secret resources over ADS, as istiod and pilot-agent serve them) or inline, into the
// listener TLS document a YAML `tls:` gives; a cluster's UpstreamTlsContext into the client
// context document. Subject alt name matchers are checked in the handshake. What Weir cannot
// check (regex SAN matchers, CRLs, pinned hashes) refuses the resource: skipping it would accept
// peers the control plane meant to refuse.
import Foundation
import SwiftProtobuf
import WeirConfig
import WeirXDSProtos

public typealias EnvoySecret = Envoy_Extensions_TransportSockets_Tls_V3_Secret
typealias DownstreamTLS = Envoy_Extensions_TransportSockets_Tls_V3_DownstreamTlsContext
typealias CommonTLS = Envoy_Extensions_TransportSockets_Tls_V3_CommonTlsContext
typealias ValidationContext = Envoy_Extensions_TransportSockets_Tls_V3_CertificateValidationContext
typealias SDSConfig = Envoy_Extensions_TransportSockets_Tls_V3_SdsSecretConfig

let downstreamTLSType = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"

/// What a chain's transport socket gives: its TLS document, or the secret it still waits for.
typealias ChainTLS = TLSPart<TLSDocument>

/// The SDS names a TLS transport socket (either direction) refers to: certificates and
/// validation context.
func sdsNames(of socket: Envoy_Config_Core_V3_TransportSocket) -> [String] { sdsConfigs(of: socket).map(\.name) }

/// What a CommonTlsContext gives either direction, its SDS secrets resolved.
struct CommonTLSParts {
    var certificates: [CertificateDocument] = []
    /// The trusted CA: a file, or PEM text, with the name to show.
    var trustedCA: (file: String?, pem: String?, name: String)? = nil
    var san: [SANMatcher] = []
    var alpn: [String] = []
    var minVersion: String? = nil, maxVersion: String? = nil
    var ciphers: String? = nil, curves: String? = nil
}

enum TLSPart<T> {
    case ready(T)
    case waiting(secret: String)
}

/// A CommonTlsContext: certificates (SDS or inline), the validation context (trusted CA and
/// subject alt name matchers; SDS or inline), ALPN and TLS parameters. Everything about the
/// context itself is checked before any secret is looked up, so a context Weir cannot honour is
/// refused now, not once its secrets arrive.
func translateCommonTLS(_ common: CommonTLS, at: String, secrets: [String: EnvoySecret], _ p: SourcePosition,
                        fail: (String) -> XDSError) throws -> TLSPart<CommonTLSParts> {
    var commonRest = common
    commonRest.tlsCertificateSdsSecretConfigs = []
    commonRest.tlsCertificates = []
    commonRest.validationContextType = nil
    commonRest.alpnProtocols = []
    commonRest.clearTlsParams()
    if let extra = leftover(commonRest) { throw fail("\(at).common_tls_context: unsupported field(s) \(extra)") }
    var parts = CommonTLSParts()
    for s in common.tlsCertificateSdsSecretConfigs { try checkSDSConfig(s, at, fail) }
    switch common.validationContextType {
    case nil: break
    case .validationContext(let v)?: parts.san = try checkValidation(v, "\(at).validation_context", fail)
    case .validationContextSdsSecretConfig(let s)?: try checkSDSConfig(s, at, fail)
    case .combinedValidationContext(let c)?:
        try checkSDSConfig(c.validationContextSdsSecretConfig, at, fail)
        var cRest = c
        cRest.clearDefaultValidationContext()
        cRest.clearValidationContextSdsSecretConfig()
        if let extra = leftover(cRest) { throw fail("\(at).combined_validation_context: unsupported field(s) \(extra)") }
        var extraRest = c.defaultValidationContext
        extraRest.matchSubjectAltNames = []
        extraRest.matchTypedSubjectAltNames = []
        if let left = leftover(extraRest) { throw fail("\(at).combined_validation_context.default_validation_context: unsupported field(s) \(left)") }
        parts.san = try sanMatchers(c.defaultValidationContext, "\(at).combined_validation_context.default_validation_context", fail)
    default: throw fail("\(at): certificate providers are not supported (validation_context or its SDS secret are)")
    }
    if common.hasTlsParams {
        let t = common.tlsParams
        var tRest = t
        tRest.tlsMinimumProtocolVersion = .tlsAuto
        tRest.tlsMaximumProtocolVersion = .tlsAuto
        tRest.cipherSuites = []
        tRest.ecdhCurves = []
        if let extra = leftover(tRest) { throw fail("\(at).common_tls_context.tls_params: unsupported field(s) \(extra)") }
        func version(_ v: Envoy_Extensions_TransportSockets_Tls_V3_TlsParameters.TlsProtocol, _ what: String) throws -> String? {
            switch v {
            case .tlsAuto: return nil
            case .tlsv12: return "1.2"
            case .tlsv13: return "1.3"
            default: throw fail("\(at).common_tls_context.tls_params.\(what): Weir speaks TLS 1.2 and 1.3, not \(v)")
            }
        }
        parts.minVersion = try version(t.tlsMinimumProtocolVersion, "tls_minimum_protocol_version")
        parts.maxVersion = try version(t.tlsMaximumProtocolVersion, "tls_maximum_protocol_version")
        // Envoy's cipher_suites hold TLS 1.2 suites (OpenSSL names; a bracketed group is Envoy's
        // equal-preference syntax, which OpenSSL reads as one more name and refuses).
        if !t.cipherSuites.isEmpty { parts.ciphers = t.cipherSuites.joined(separator: ":") }
        if !t.ecdhCurves.isEmpty { parts.curves = t.ecdhCurves.joined(separator: ":") }
    }
    parts.alpn = common.alpnProtocols
    // What does not depend on a secret is judged now, with the resource that carries it: found
    // only when a secret arrives, it could only refuse that secret, which others share.
    if let why = Compiler.tlsParameterProblem(min: parts.minVersion, max: parts.maxVersion, ciphers: parts.ciphers, curves: parts.curves,
                                              alpn: parts.alpn) {
        throw fail("\(at).common_tls_context: \(why)")
    }
    // Certificates: from SDS by name, or inline.
    for s in common.tlsCertificateSdsSecretConfigs {
        guard let secret = secrets[s.name] else { return .waiting(secret: s.name) }
        guard case .tlsCertificate(let cert)? = secret.type else { throw secretFail(s.name, "\(at): secret '\(s.name)' is not a tls_certificate", fail) }
        parts.certificates.append(try certificate(cert, name: "sds:\(s.name)", p, fail))
    }
    for (i, c) in common.tlsCertificates.enumerated() { parts.certificates.append(try certificate(c, name: "\(at).tls_certificates[\(i)]", p, fail)) }
    // The validation context: inline, or an SDS secret (whose own matchers add to the default's).
    var validation: ValidationContext? = nil
    var validationName = ""
    func fromSecret(_ name: String) throws -> ValidationContext? {
        guard let secret = secrets[name] else { return nil }
        guard case .validationContext(let v)? = secret.type else { throw secretFail(name, "\(at): secret '\(name)' is not a validation_context", fail) }
        do { parts.san += try checkValidation(v, "secret '\(name)'", fail) } catch let e as XDSError { throw secretFail(name, e.message, fail) }
        return v
    }
    switch common.validationContextType {
    case .validationContext(let v)?: validation = v; validationName = "\(at).validation_context"
    case .validationContextSdsSecretConfig(let s)?:
        guard let v = try fromSecret(s.name) else { return .waiting(secret: s.name) }
        validation = v; validationName = "sds:\(s.name)"
    case .combinedValidationContext(let c)?:
        let name = c.validationContextSdsSecretConfig.name
        guard let v = try fromSecret(name) else { return .waiting(secret: name) }
        validation = v; validationName = "sds:\(name)"
    default: break
    }
    if let v = validation {
        switch v.trustedCa.specifier {
        case .filename(let f)?: parts.trustedCA = (f, nil, f)
        default: parts.trustedCA = (nil, try pem(v.trustedCa, "\(validationName).trusted_ca", fail), validationName)
        }
    }
    if !parts.san.isEmpty && parts.trustedCA == nil { throw fail("\(at): subject alt name matchers need a trusted_ca") }
    return .ready(parts)
}

/// A TLS transport socket on a filter chain as a listener TLS document.
func translateDownstreamTLS(_ socket: Envoy_Config_Core_V3_TransportSocket, label: String, secrets: [String: EnvoySecret],
                            _ p: SourcePosition, notes: Notes, fail: (String) -> XDSError) throws -> ChainTLS {
    let at = "\(label).transport_socket"
    guard socket.typedConfig.typeURL.hasSuffix(downstreamTLSType) else {
        throw fail("\(at): \(socket.typedConfig.typeURL) is not supported (DownstreamTlsContext is)")
    }
    let tls: DownstreamTLS
    do { tls = try DownstreamTLS(unpackingAny: socket.typedConfig) } catch { throw fail("\(at): cannot decode: \(error)") }
    var rest = tls
    rest.clearCommonTlsContext()
    rest.clearRequireClientCertificate()
    if tls.hasRequireSni && !tls.requireSni.value { rest.clearRequireSni() }
    rest.ocspStaplePolicy = .lenientStapling
    if let extra = leftover(rest) { throw fail("\(at): unsupported field(s) \(extra)") }
    if tls.ocspStaplePolicy != .lenientStapling { notes.ignore("transport_socket ocsp_staple_policy (no staples come from xDS)") }
    let parts: CommonTLSParts
    switch try translateCommonTLS(tls.commonTlsContext, at: at, secrets: secrets, p, fail: fail) {
    case .waiting(let name): return .waiting(secret: name)
    case .ready(let r): parts = r
    }
    var d = TLSDocument(position: p)
    d.certificates = parts.certificates
    if d.certificates.isEmpty { throw fail("\(at): needs a certificate (tls_certificate_sds_secret_configs or tls_certificates)") }
    // Who may connect: the CA that signs client certificates, and the names they must carry.
    if let ca = parts.trustedCA {
        d.clientCA = located(ca.file ?? ca.name, p)
        d.clientCAPEM = ca.pem
    }
    d.clientSAN = parts.san.map { located($0, p) }
    let requireClient = tls.hasRequireClientCertificate && tls.requireClientCertificate.value
    if requireClient && d.clientCA == nil { throw fail("\(at): require_client_certificate needs a validation context with trusted_ca") }
    if !requireClient && d.clientCA != nil {
        // Envoy then asks for a certificate but lets clients without one in; Weir verifies
        // every client it asks, so it cannot honour "optional" without weakening nothing.
        throw fail("\(at): a validation context without require_client_certificate (optional client certificates) is not supported")
    }
    // ALPN: h2 and http/1.1 as given (an http listener without HTTP/2, codec_type HTTP1, drops
    // h2 when it compiles); Istio's istio-peer-exchange would start a metadata exchange Weir
    // does not speak.
    let served = parts.alpn.filter { $0 != "istio-peer-exchange" }
    if served.count != parts.alpn.count { notes.ignore("transport_socket alpn_protocols istio-peer-exchange (not offered: Weir does not speak it)") }
    d.alpn = served.map { located($0, p) }
    d.minVersion = parts.minVersion.map { located($0, p) }
    d.maxVersion = parts.maxVersion.map { located($0, p) }
    d.ciphers = parts.ciphers.map { located($0, p) }
    d.curves = parts.curves.map { located($0, p) }
    return .ready(d)
}

let upstreamTLSType = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
typealias UpstreamTLSContext = Envoy_Extensions_TransportSockets_Tls_V3_UpstreamTlsContext

/// A cluster's TLS transport socket (UpstreamTlsContext) as the document the compiler makes a
/// client context from. Without a validation context the endpoints are not verified (Envoy's
/// meaning); the SNI is sent and never checked against the certificate (Envoy checks SANs).
func translateUpstreamTLS(_ socket: Envoy_Config_Core_V3_TransportSocket, at: String, secrets: [String: EnvoySecret],
                          _ p: SourcePosition, notes: Notes, fail: (String) -> XDSError) throws -> TLSPart<UpstreamTLSDocument> {
    guard socket.typedConfig.typeURL.hasSuffix(upstreamTLSType) else {
        throw fail("\(at): \(socket.typedConfig.typeURL) is not supported (UpstreamTlsContext and raw_buffer are)")
    }
    let tls: UpstreamTLSContext
    do { tls = try UpstreamTLSContext(unpackingAny: socket.typedConfig) } catch { throw fail("\(at): cannot decode: \(error)") }
    var rest = tls
    rest.clearCommonTlsContext()
    rest.sni = ""
    if tls.hasMaxSessionKeys { notes.ignore("transport_socket max_session_keys (upstream sessions are not resumed)"); rest.clearMaxSessionKeys() }
    if tls.hasEnforceRsaKeyUsage && !tls.enforceRsaKeyUsage.value { rest.clearEnforceRsaKeyUsage() }
    if let extra = leftover(rest) { throw fail("\(at): unsupported field(s) \(extra)") }
    let common = tls.commonTlsContext
    guard common.tlsCertificateSdsSecretConfigs.count + common.tlsCertificates.count <= 1 else { throw fail("\(at): one client certificate is supported") }
    if !tls.sni.isEmpty && tls.sni.utf8.count > 255 { throw fail("\(at): sni must be 1 to 255 bytes") }
    let parts: CommonTLSParts
    switch try translateCommonTLS(common, at: at, secrets: secrets, p, fail: fail) {
    case .waiting(let name): return .waiting(secret: name)
    case .ready(let r): parts = r
    }
    var d = UpstreamTLSDocument(position: p)
    d.serverName = tls.sni.isEmpty ? nil : tls.sni
    if let c = parts.certificates.first {
        if let (chain, key) = c.inlinePEM {
            d.certificate = (chain, key, c.cert?.value ?? "certificate")
        } else if let cf = c.cert?.value, let kf = c.key?.value {
            guard let chain = FileManager.default.contents(atPath: cf), let key = FileManager.default.contents(atPath: kf) else {
                throw fail("\(at): cannot read client certificate \(cf) or key \(kf)")
            }
            d.certificate = (String(decoding: chain, as: UTF8.self), String(decoding: key, as: UTF8.self), cf)
        }
    }
    if let ca = parts.trustedCA {
        if let pem = ca.pem { d.trustedCA = (pem, ca.name) } else if let f = ca.file {
            guard let data = FileManager.default.contents(atPath: f) else { throw fail("\(at): cannot read trusted_ca \(f)") }
            d.trustedCA = (String(decoding: data, as: UTF8.self), f)
        }
    }
    d.san = parts.san
    // ALPN. Istio's (istio-peer-exchange, istio) is rewritten per request by its istio.alpn
    // HTTP filter to istio-http/1.1 for an HTTP/1.1 upstream, which is what Weir's HTTP
    // sessions offer; TCP sessions offer istio. The peer sidecar's inbound chains select on
    // them. istio-peer-exchange would start a metadata exchange, and h2 a protocol Weir does
    // not speak upstream.
    if parts.alpn.contains("istio-peer-exchange") || parts.alpn.contains("istio") {
        d.alpn = ["istio-http/1.1"]
        d.tcpALPN = ["istio"]
        notes.ignore("transport_socket alpn_protocols istio-peer-exchange, istio (HTTP offers istio-http/1.1, as istio.alpn would; TCP offers istio)")
    } else {
        d.alpn = parts.alpn.filter { $0 != "h2" }
        if d.alpn.count != parts.alpn.count { notes.ignore("transport_socket alpn_protocols h2 (not offered: Weir speaks HTTP/1.1 upstream)") }
    }
    if let v = parts.minVersion { d.minVersion = v }
    if let v = parts.maxVersion { d.maxVersion = v }
    d.ciphers = parts.ciphers
    d.curves = parts.curves
    return .ready(d)
}

/// A validation context's subject alt name matchers, untyped (any SAN type) and typed.
func sanMatchers(_ v: ValidationContext, _ at: String, _ fail: (String) -> XDSError) throws -> [SANMatcher] {
    func matcher(_ m: Envoy_Type_Matcher_V3_StringMatcher, _ kind: SANMatcher.Kind, _ what: String) throws -> SANMatcher {
        // An empty prefix, suffix or contains would match every name (Envoy refuses them too).
        switch m.matchPattern {
        case .prefix("")?, .suffix("")?, .contains("")?: throw fail("\(at).\(what): an empty prefix, suffix or contains matcher would match any name")
        default: break
        }
        switch m.matchPattern {
        case .exact(let s)?: return SANMatcher(kind: kind, .exact, s, ignoreCase: m.ignoreCase)
        case .prefix(let s)?: return SANMatcher(kind: kind, .prefix, s, ignoreCase: m.ignoreCase)
        case .suffix(let s)?: return SANMatcher(kind: kind, .suffix, s, ignoreCase: m.ignoreCase)
        case .contains(let s)?: return SANMatcher(kind: kind, .contains, s, ignoreCase: m.ignoreCase)
        default: throw fail("\(at).\(what): only exact, prefix, suffix and contains matchers are supported")
        }
    }
    var out = try v.matchSubjectAltNames.map { try matcher($0, .any, "match_subject_alt_names") }
    for t in v.matchTypedSubjectAltNames {
        let kind: SANMatcher.Kind
        switch t.sanType {
        case .dns: kind = .dns
        case .uri: kind = .uri
        case .email: kind = .email
        case .ipAddress: kind = .ip
        default: throw fail("\(at).match_typed_subject_alt_names: san_type \(t.sanType) is not supported (DNS, URI, EMAIL, IP_ADDRESS are)")
        }
        out.append(try matcher(t.matcher, kind, "match_typed_subject_alt_names"))
    }
    return out
}

/// What Weir checks of a validation context: a trusted_ca and subject alt name matchers, and
/// nothing else (CRLs, pinned hashes would each refuse some peers Weir would let in).
func checkValidation(_ v: ValidationContext, _ at: String, _ fail: (String) -> XDSError) throws -> [SANMatcher] {
    let san = try sanMatchers(v, at, fail)
    var vRest = v
    vRest.clearTrustedCa()
    vRest.matchSubjectAltNames = []
    vRest.matchTypedSubjectAltNames = []
    if let extra = leftoverNames(vRest) { throw fail("\(at): unsupported field(s) \(extra)") }
    guard v.hasTrustedCa else { throw fail("\(at): needs trusted_ca") }
    return san
}

/// An error about a secret's own content: the SDS update that brought it refuses that secret.
func secretFail(_ name: String, _ message: String, _ fail: (String) -> XDSError) -> XDSError {
    var e = fail(message)
    e.involved[.secret] = name
    return e
}

/// The names of the fields set in `message` (never their values: secrets hold keys).
func leftoverNames<M: SwiftProtobuf.Message>(_ message: M) -> String? {
    guard let json = leftover(message) else { return nil }
    guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else { return "(fields not shown)" }
    return object.keys.sorted().joined(separator: ", ")
}

/// Why a secret as it arrives cannot be served (a chain or key that does not load, a CA
/// bundle with no certificate), checked before anything uses it; nil when it is fine.
public func secretProblem(_ s: EnvoySecret) -> String? {
    switch s.type {
    case .tlsCertificate(let c)?:
        var rest = c
        rest.clearCertificateChain()
        rest.clearPrivateKey()
        rest.clearOcspStaple()
        if let extra = leftoverNames(rest) { return "secret '\(s.name)': unsupported field(s) \(extra)" }
        func text(_ d: Envoy_Config_Core_V3_DataSource) -> String? {
            switch d.specifier {
            case .inlineBytes(let b)?: return String(decoding: b, as: UTF8.self)
            case .inlineString(let t)?: return t
            default: return nil
            }
        }
        guard let chain = text(c.certificateChain), let key = text(c.privateKey) else { return nil }  // files: checked when they load
        return Compiler.certificateProblem(chain: chain, key: key).map { "secret '\(s.name)': \($0)" }
    case .validationContext(let v)?:
        switch v.trustedCa.specifier {
        case .inlineBytes(let b)?: return Compiler.caProblem(String(decoding: b, as: UTF8.self)).map { "secret '\(s.name)': \($0)" }
        case .inlineString(let t)?: return Compiler.caProblem(t).map { "secret '\(s.name)': \($0)" }
        default: return nil
        }
    case nil: return "secret '\(s.name)': it holds nothing"
    default: return "secret '\(s.name)': only tls_certificate and validation_context secrets are supported"
    }
}

/// Whether an SDS secret config points at pilot-agent's SDS socket (the bootstrap's sds-grpc
/// cluster) rather than ADS.
func viaSDSSocket(_ s: SDSConfig) -> Bool {
    guard s.hasSdsConfig, case .apiConfigSource(let api)? = s.sdsConfig.configSourceSpecifier else { return false }
    return api.grpcServices.first?.envoyGrpc.clusterName == "sds-grpc"
}

/// Every SDS secret config of a transport socket (either direction).
func sdsConfigs(of socket: Envoy_Config_Core_V3_TransportSocket) -> [SDSConfig] {
    let common: CommonTLS
    if socket.typedConfig.typeURL.hasSuffix(downstreamTLSType), let t = try? DownstreamTLS(unpackingAny: socket.typedConfig) { common = t.commonTlsContext }
    else if socket.typedConfig.typeURL.hasSuffix(upstreamTLSType), let t = try? UpstreamTLSContext(unpackingAny: socket.typedConfig) { common = t.commonTlsContext }
    else { return [] }
    var out = common.tlsCertificateSdsSecretConfigs
    switch common.validationContextType {
    case .validationContextSdsSecretConfig(let s)?: out.append(s)
    case .combinedValidationContext(let c)?: out.append(c.validationContextSdsSecretConfig)
    default: break
    }
    return out
}

func checkSDSConfig(_ s: SDSConfig, _ at: String, _ fail: (String) -> XDSError) throws {
    guard !s.name.isEmpty else { throw fail("\(at): an SDS secret config needs a name") }
    // Secrets come over the same ADS stream (istiod serves kubernetes:// names so), or, when
    // pointed at pilot-agent's SDS socket (sds-grpc: the workload certificate and root CA), on
    // their own stream to that socket (xds.sds_address; without it they are asked for on ADS).
    if s.hasSdsConfig {
        switch s.sdsConfig.configSourceSpecifier {
        case .ads?, nil: break
        case .apiConfigSource(let api)? where api.grpcServices.first?.envoyGrpc.clusterName == "sds-grpc": break
        default: throw fail("\(at): secret '\(s.name)': only SDS over ADS is supported")
        }
    }
}

/// A secret's certificate and key as a certificate document (PEM inline, or files).
func certificate(_ c: Envoy_Extensions_TransportSockets_Tls_V3_TlsCertificate, name: String, _ p: SourcePosition,
                 _ fail: (String) -> XDSError) throws -> CertificateDocument {
    var rest = c
    rest.clearCertificateChain()
    rest.clearPrivateKey()
    rest.clearOcspStaple()
    if let extra = leftoverNames(rest) { throw fail("\(name): unsupported field(s) \(extra)") }
    var d = CertificateDocument(position: p)
    // An OCSP response to staple: inline DER, or a file (checked when the snapshot compiles).
    if c.hasOcspStaple {
        switch c.ocspStaple.specifier {
        case .filename(let f)?: d.ocspStaple = located(f, p)
        case .inlineBytes(let b)?: d.ocspStaple = located("\(name).ocsp_staple", p); d.ocspStapleDER = [UInt8](b)
        default: throw fail("\(name).ocsp_staple: needs inline_bytes (DER) or filename")
        }
    }
    if case .filename(let cf)? = c.certificateChain.specifier, case .filename(let kf)? = c.privateKey.specifier {
        d.cert = located(cf, p)
        d.key = located(kf, p)
        return d
    }
    d.cert = located(name, p)
    d.key = located(name, p)
    d.inlinePEM = (try pem(c.certificateChain, "\(name).certificate_chain", fail), try pem(c.privateKey, "\(name).private_key", fail))
    return d
}

/// PEM text from a DataSource's inline bytes or string.
func pem(_ s: Envoy_Config_Core_V3_DataSource, _ what: String, _ fail: (String) -> XDSError) throws -> String {
    switch s.specifier {
    case .inlineBytes(let b)?: return String(decoding: b, as: UTF8.self)
    case .inlineString(let t)?: return t
    case .filename(let f)?:
        guard let data = FileManager.default.contents(atPath: f) else { throw fail("\(what): cannot read \(f)") }
        return String(decoding: data, as: UTF8.self)
    default: throw fail("\(what): needs inline_bytes, inline_string or filename")
    }
}
