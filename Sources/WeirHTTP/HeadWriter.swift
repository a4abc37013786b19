// Writes the request head a proxy forwards upstream, straight from the parsed bytes into a send
// buffer: hop-by-hop fields dropped (RFC 9110 section 7.6.1), X-Forwarded-* added, the target's
// prefix and the Host optionally rewritten, fields removed and added per route. No allocation.

/// What to change while forwarding one request.
public struct ForwardingRules: Sendable {
    /// Replace this many leading bytes of the target with `prefixReplacement`.
    public var prefixMatchedBytes = 0
    public var prefixReplacement: [UInt8] = []
    public var hostRewrite: [UInt8]? = nil
    /// Lowercase names of fields to drop.
    public var removeHeaders: [[UInt8]] = []
    /// Complete "Name: value" lines (without CRLF) to append.
    public var addHeaders: [[UInt8]] = []
    public init() {}
}

/// What the forwarded request carries as X-Forwarded-Client-Cert (Envoy's
/// forward_client_cert_details, decided per request by the listener and the connection).
public enum ClientCertHeader {
    /// The client's, as it sent them.
    case keep
    /// None.
    case remove
    /// The client's, then this element (one header, comma-separated).
    case append(UnsafeRawBufferPointer)
    /// Only this element.
    case set(UnsafeRawBufferPointer)
}

public struct ForwardContext {
    /// The client's address as text ("192.0.2.1" or "2001:db8::1"), for X-Forwarded-For.
    public var clientAddress: UnsafeRawBufferPointer
    public var https: Bool
    /// Used when the request has no X-Request-Id.
    public var requestID: UnsafeRawBufferPointer
    /// Keep Upgrade and `Connection: upgrade` (a WebSocket handshake being forwarded).
    public var upgrade: Bool
    public var clientCert: ClientCertHeader
    public init(clientAddress: UnsafeRawBufferPointer, https: Bool, requestID: UnsafeRawBufferPointer, upgrade: Bool,
                clientCert: ClientCertHeader = .keep) {
        self.clientAddress = clientAddress; self.https = https; self.requestID = requestID; self.upgrade = upgrade
        self.clientCert = clientCert
    }
}

public enum HeadWriter {
    /// Writes the forwarded head for `head` (parsed from `source` with `headers`) into `out`.
    /// Returns the bytes written, or nil when `out` is too small.
    public static func writeRequest(_ head: RequestHead, source: UnsafeRawBufferPointer, headers: HeaderTable,
                                    rules: ForwardingRules, prefixMatchedBytes: Int? = nil, context: ForwardContext,
                                    into out: UnsafeMutableRawBufferPointer) -> Int? {
        let prefixMatched = prefixMatchedBytes ?? rules.prefixMatchedBytes
        var w = Writer(out)
        w.put(source, head.methodRange)
        w.put(SP)
        if prefixMatched > 0 && prefixMatched <= head.target.count {
            w.put(rules.prefixReplacement)
            w.put(source, ByteRange(Int(head.target.start) + prefixMatched, Int(head.target.end)))
        } else {
            w.put(source, head.target)
        }
        w.put(head.minorVersion == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n")
        var forwardedFor: ByteRange? = nil
        var hasRequestID = false
        for i in 0..<headers.count {
            let name = headers.name(i), value = headers.value(i)
            if isHopByHop(source, name, headers: headers, upgrade: context.upgrade) { continue }
            if rules.removeHeaders.contains(where: { equalsLowercase(source, name, $0) }) { continue }
            if equalsIgnoringCase(source, name, "x-forwarded-for") { forwardedFor = value; continue }
            if equalsIgnoringCase(source, name, "x-forwarded-client-cert") {
                switch context.clientCert {
                case .remove, .set, .append: continue  // append: joined below, in order
                case .keep: break
                }
            }
            if equalsIgnoringCase(source, name, "x-forwarded-proto") { continue }
            if equalsIgnoringCase(source, name, "x-request-id") { hasRequestID = true }
            if let host = rules.hostRewrite, equalsIgnoringCase(source, name, "host") {
                w.put("Host: "); w.put(host); w.put("\r\n")
                continue
            }
            w.put(source, name); w.put(": "); w.put(source, value); w.put("\r\n")
        }
        w.put("X-Forwarded-For: ")
        if let prior = forwardedFor, prior.count > 0 { w.put(source, prior); w.put(", ") }
        w.put(context.clientAddress)
        w.put(context.https ? "\r\nX-Forwarded-Proto: https\r\n" : "\r\nX-Forwarded-Proto: http\r\n")
        if !hasRequestID { w.put("X-Request-Id: "); w.put(context.requestID); w.put("\r\n") }
        switch context.clientCert {
        case .append(let element):
            // One header: the client's values in their order, then Weir's element (as Envoy).
            w.put("X-Forwarded-Client-Cert: ")
            for i in 0..<headers.count where equalsIgnoringCase(source, headers.name(i), "x-forwarded-client-cert") {
                // The same fields the loop above would have kept (a route may remove it; a
                // Connection header may name it hop-by-hop).
                let name = headers.name(i)
                if isHopByHop(source, name, headers: headers, upgrade: context.upgrade) { continue }
                if rules.removeHeaders.contains(where: { equalsLowercase(source, name, $0) }) { continue }
                let v = headers.value(i)
                if v.count > 0 { w.put(source, v); w.put(",") }
            }
            w.put(element); w.put("\r\n")
        case .set(let element):
            w.put("X-Forwarded-Client-Cert: "); w.put(element); w.put("\r\n")
        case .keep, .remove: break
        }
        if context.upgrade { w.put("Connection: upgrade\r\n") }
        else if head.minorVersion == 0 { w.put("Connection: keep-alive\r\n") }
        for line in rules.addHeaders { w.put(line); w.put("\r\n") }
        w.put("\r\n")
        return w.overflow ? nil : w.count
    }

    /// How a forwarded response head ends the connection.
    public enum ConnectionHeader { case none, close, keepAlive, upgrade }

    /// Writes the response head forwarded to the client: the status line as the upstream wrote
    /// it, hop-by-hop fields dropped, `remove` (lowercase names) dropped, `add` lines appended,
    /// and the Connection header Weir decides on. Returns nil when `out` is too small.
    public static func writeResponse(_ head: ResponseHead, source: UnsafeRawBufferPointer, headers: HeaderTable,
                                     remove: [[UInt8]], add: [[UInt8]], connection: ConnectionHeader,
                                     into out: UnsafeMutableRawBufferPointer) -> Int? {
        var w = Writer(out)
        var lineEnd = 0
        while lineEnd + 1 < head.headLength && source[lineEnd] != CR { lineEnd += 1 }
        w.put(UnsafeRawBufferPointer(rebasing: source[0..<lineEnd]))
        w.put("\r\n")
        let upgrade = connection == .upgrade
        for i in 0..<headers.count {
            let name = headers.name(i)
            if isHopByHop(source, name, headers: headers, upgrade: upgrade) { continue }
            if !remove.isEmpty && remove.contains(where: { equalsLowercase(source, name, $0) }) { continue }
            w.put(source, name); w.put(": "); w.put(source, headers.value(i)); w.put("\r\n")
        }
        for line in add { w.put(line); w.put("\r\n") }
        switch connection {
        case .none: break
        case .close: w.put("Connection: close\r\n")
        case .keepAlive: w.put("Connection: keep-alive\r\n")
        case .upgrade: w.put("Connection: upgrade\r\n")
        }
        w.put("\r\n")
        return w.overflow ? nil : w.count
    }

    /// Fields that describe one hop, not the message: never forwarded. Transfer-Encoding stays,
    /// because Weir forwards a chunked body's bytes as they are.
    ///
    /// A `Connection` header may name more hop-by-hop fields (RFC 9110 section 7.6.1), but never
    /// one that frames or routes the message: Weir framed the body by Content-Length or
    /// Transfer-Encoding and routed by Host, so dropping one of them would let the next hop read
    /// the message differently (a request smuggled inside another's body). Such a token is
    /// ignored: the field goes on, only the Connection header (hop-by-hop itself) is dropped.
    public static func mayBeNominated(_ buf: UnsafeRawBufferPointer, _ name: ByteRange) -> Bool {
        !(equalsIgnoringCase(buf, name, "content-length") || equalsIgnoringCase(buf, name, "transfer-encoding")
            || equalsIgnoringCase(buf, name, "host"))
    }

    static func isHopByHop(_ buf: UnsafeRawBufferPointer, _ name: ByteRange, headers: HeaderTable, upgrade: Bool) -> Bool {
        if equalsIgnoringCase(buf, name, "connection") || equalsIgnoringCase(buf, name, "keep-alive")
            || equalsIgnoringCase(buf, name, "proxy-connection") || equalsIgnoringCase(buf, name, "te")
            || equalsIgnoringCase(buf, name, "trailer") || equalsIgnoringCase(buf, name, "proxy-authorization") {
            return true
        }
        if equalsIgnoringCase(buf, name, "upgrade") { return !upgrade }
        // And any field the Connection header names (RFC 9110 section 7.6.1), except the ones
        // that frame or route the message.
        guard mayBeNominated(buf, name) else { return false }
        for i in 0..<headers.count where equalsIgnoringCase(buf, headers.name(i), "connection") {
            var named = false
            _ = forEachListElement(buf, headers.value(i)) { token in
                if token.count == name.count && equalsRanges(buf, token, name) { named = true; return false }
                return true
            }
            if named && !(upgrade && equalsIgnoringCase(buf, name, "upgrade")) { return true }
        }
        return false
    }

    static func equalsRanges(_ buf: UnsafeRawBufferPointer, _ a: ByteRange, _ b: ByteRange) -> Bool {
        guard a.count == b.count else { return false }
        for k in 0..<a.count where buf[Int(a.start) + k] | 0x20 != buf[Int(b.start) + k] | 0x20 { return false }
        return true
    }

    static func equalsLowercase(_ buf: UnsafeRawBufferPointer, _ r: ByteRange, _ lower: [UInt8]) -> Bool {
        guard r.count == lower.count else { return false }
        for k in 0..<r.count where buf[Int(r.start) + k] | 0x20 != lower[k] | 0x20 { return false }
        return true
    }
}

/// Appends into a fixed buffer; remembers overflow instead of trapping.
struct Writer {
    let out: UnsafeMutableRawBufferPointer
    var count = 0
    var overflow = false
    init(_ out: UnsafeMutableRawBufferPointer) { self.out = out }

    mutating func put(_ byte: UInt8) {
        guard count < out.count else { overflow = true; return }
        out[count] = byte
        count += 1
    }
    mutating func put(_ bytes: UnsafeRawBufferPointer) {
        guard count + bytes.count <= out.count else { overflow = true; return }
        if bytes.count > 0 { (out.baseAddress! + count).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        count += bytes.count
    }
    mutating func put(_ source: UnsafeRawBufferPointer, _ r: ByteRange) {
        put(UnsafeRawBufferPointer(rebasing: source[Int(r.start)..<Int(r.end)]))
    }
    mutating func put(_ bytes: [UInt8]) { bytes.withUnsafeBytes { put($0) } }
    mutating func put(_ s: StaticString) { put(UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)) }
}
