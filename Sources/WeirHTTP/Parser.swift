// The head parser. Strict where laxness lets two parsers disagree about where a message ends
// (the root of request smuggling): bare LF or CR, whitespace before a colon, obs-fold, both
// Content-Length and Transfer-Encoding, differing Content-Lengths, a transfer coding list that
// does not end in chunked, and control bytes in names, values or the target are all refused.

@usableFromInline let CR: UInt8 = 13
@usableFromInline let LF: UInt8 = 10
@usableFromInline let SP: UInt8 = 32
@usableFromInline let HTAB: UInt8 = 9

/// tchar (RFC 9110 section 5.6.2), as a 256-entry table.
@usableFromInline let tokenTable: [Bool] = (0..<256).map { c in
    switch UInt8(c) {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): return true
    default: return Array("!#$%&'*+-.^_`|~".utf8).contains(UInt8(c))
    }
}

@inlinable public func isToken(_ c: UInt8) -> Bool { tokenTable[Int(c)] }
/// field-vchar, SP and HTAB: what a field value may hold (obs-text included, as RFC 9110 allows).
@inlinable func isFieldByte(_ c: UInt8) -> Bool { c == HTAB || c >= 0x20 && c != 0x7F }

/// Compares buf[range] with a lowercase ASCII literal, ignoring case.
@inlinable
func equalsIgnoringCase(_ buf: UnsafeRawBufferPointer, _ r: ByteRange, _ lower: StaticString) -> Bool {
    guard r.count == lower.utf8CodeUnitCount else { return false }
    let l = lower.utf8Start
    for k in 0..<r.count where buf[Int(r.start) + k] | 0x20 != l[k] | 0x20 { return false }
    return true
}

/// Calls `body` for each comma-separated element of buf[r], trimmed of OWS, skipping empty ones.
@inlinable
func forEachListElement(_ buf: UnsafeRawBufferPointer, _ r: ByteRange, _ body: (ByteRange) -> Bool) -> Bool {
    var i = Int(r.start)
    let end = Int(r.end)
    while i < end {
        var s = i
        while i < end && buf[i] != UInt8(ascii: ",") { i += 1 }
        var e = i
        while s < e && (buf[s] == SP || buf[s] == HTAB) { s += 1 }
        while e > s && (buf[e - 1] == SP || buf[e - 1] == HTAB) { e -= 1 }
        if e > s && !body(ByteRange(s, e)) { return false }
        i += 1
    }
    return true
}

/// What the header fields say about framing and the connection, gathered in one pass.
@usableFromInline
struct FieldSummary {
    var contentLength: UInt64? = nil
    var transferEncoding = false
    var chunkedIsFinal = false
    var chunkedCount = 0
    var unknownCoding = false
    var close = false
    var keepAliveToken = false
    var upgradeToken = false
    var upgradeHeader = false
    var expectContinue = false
    var hostCount = 0
    var host: ByteRange? = nil
    var error: HTTPError? = nil
}

public enum HTTPParser {
    /// Parses a request head at the start of `buf`.
    public static func parseRequest(_ buf: UnsafeRawBufferPointer, limits: HTTPLimits, headers: HeaderTable) -> ParseOutcome<RequestHead> {
        var head = RequestHead()
        var i = 0
        // RFC 9112 section 2.2: ignore at least one empty line before a request line.
        var skipped = 0
        while skipped < 4 && i + 1 < buf.count && buf[i] == CR && buf[i + 1] == LF { i += 2; skipped += 1 }
        let lineStart = i
        guard let lineEnd = findLineEnd(buf, from: i, limit: limits.maxRequestLineBytes) else {
            return buf.count - lineStart > limits.maxRequestLineBytes
                ? .failed(HTTPError(.headersTooLarge, "request line too long")) : .incomplete
        }
        if lineEnd < 0 { return .failed(HTTPError(.badRequest, "bare CR or LF in request line")) }
        if lineEnd + 1 >= buf.count { return .incomplete }

        // method SP request-target SP HTTP-version
        var p = lineStart
        while p < lineEnd && isToken(buf[p]) { p += 1 }
        guard p > lineStart, p < lineEnd, buf[p] == SP else { return .failed(HTTPError(.badRequest, "bad method")) }
        head.methodRange = ByteRange(lineStart, p)
        head.method = method(buf, head.methodRange)
        p += 1
        let targetStart = p
        while p < lineEnd && buf[p] > SP && buf[p] < 0x7F { p += 1 }
        guard p > targetStart, p < lineEnd, buf[p] == SP else { return .failed(HTTPError(.badRequest, "bad request target")) }
        head.target = ByteRange(targetStart, p)
        p += 1
        switch version(buf, from: p, to: lineEnd) {
        case .some(let minor): head.minorVersion = minor
        case .none: return .failed(HTTPError(.badRequest, "bad HTTP version"))
        }
        if head.minorVersion < 0 { return .failed(HTTPError(.versionNotSupported, "HTTP major version is not 1")) }
        let first = buf[targetStart]
        if head.method == .connect { return .failed(HTTPError(.notImplemented, "CONNECT is not supported")) }
        if first != UInt8(ascii: "/") && !(first == UInt8(ascii: "*") && head.target.count == 1 && head.method == .options)
            && !startsWithHTTPScheme(buf, head.target) {
            return .failed(HTTPError(.badRequest, "request target is not origin, absolute or asterisk form"))
        }

        var summary = FieldSummary()
        switch parseFields(buf, from: lineEnd + 2, headStart: lineStart, limits: limits, headers: headers, summary: &summary) {
        case .incomplete: return .incomplete
        case .failed(let e): return .failed(e)
        case .complete(let end): head.headLength = end
        }
        if let e = summary.error { return .failed(e) }

        if summary.transferEncoding {
            if head.minorVersion == 0 { return .failed(HTTPError(.badRequest, "Transfer-Encoding in an HTTP/1.0 request")) }
            if summary.contentLength != nil { return .failed(HTTPError(.badRequest, "both Content-Length and Transfer-Encoding")) }
            if !summary.chunkedIsFinal { return .failed(HTTPError(.badRequest, "Transfer-Encoding does not end in chunked")) }
            if summary.unknownCoding { return .failed(HTTPError(.notImplemented, "unknown transfer coding")) }
            head.framing = .chunked
        } else if let n = summary.contentLength {
            if n > limits.maxBodyBytes { return .failed(HTTPError(.bodyTooLarge, "Content-Length over the body limit")) }
            head.framing = n == 0 ? .none : .contentLength(n)
        }
        if head.minorVersion >= 1 {
            if summary.hostCount == 0 { return .failed(HTTPError(.badRequest, "HTTP/1.1 request without Host")) }
            head.keepAlive = !summary.close
        } else {
            head.keepAlive = summary.keepAliveToken && !summary.close
        }
        if summary.hostCount > 1 { return .failed(HTTPError(.badRequest, "more than one Host")) }
        head.host = summary.host
        head.expectContinue = summary.expectContinue && head.minorVersion >= 1
        head.upgrade = summary.upgradeToken && summary.upgradeHeader
        return .complete(head)
    }

    /// Parses a response head at the start of `buf`. `requestMethod` decides whether a body
    /// follows (none after HEAD).
    public static func parseResponse(_ buf: UnsafeRawBufferPointer, requestMethod: Method, limits: HTTPLimits,
                                     headers: HeaderTable) -> ParseOutcome<ResponseHead> {
        var head = ResponseHead()
        guard let lineEnd = findLineEnd(buf, from: 0, limit: limits.maxHeaderBytes) else {
            return buf.count > limits.maxHeaderBytes ? .failed(HTTPError(.badResponse, "status line too long")) : .incomplete
        }
        if lineEnd < 0 { return .failed(HTTPError(.badResponse, "bare CR or LF in status line")) }
        if lineEnd + 1 >= buf.count { return .incomplete }
        // HTTP-version SP 3DIGIT SP [reason]
        guard lineEnd >= 12, buf[8] == SP, let minor = version(buf, from: 0, to: 8), minor >= 0 else {
            return .failed(HTTPError(.badResponse, "bad status line"))
        }
        head.minorVersion = minor
        var status = 0
        for k in 9..<12 {
            let d = buf[k]
            guard d >= UInt8(ascii: "0") && d <= UInt8(ascii: "9") else { return .failed(HTTPError(.badResponse, "bad status code")) }
            status = status * 10 + Int(d - UInt8(ascii: "0"))
        }
        guard status >= 100, lineEnd == 12 || buf[12] == SP else { return .failed(HTTPError(.badResponse, "bad status code")) }
        for k in 12..<lineEnd where !isFieldByte(buf[k]) { return .failed(HTTPError(.badResponse, "bad reason phrase")) }
        head.status = status

        var summary = FieldSummary()
        switch parseFields(buf, from: lineEnd + 2, headStart: 0, limits: limits, headers: headers, summary: &summary) {
        case .incomplete: return .incomplete
        case .failed(let e): return .failed(HTTPError(.badResponse, e.reason))
        case .complete(let end): head.headLength = end
        }
        if summary.error != nil { return .failed(HTTPError(.badResponse, "bad header field")) }
        head.keepAlive = minor >= 1 ? !summary.close : (summary.keepAliveToken && !summary.close)
        if requestMethod == .head || status < 200 || status == 204 || status == 304 {
            head.framing = .none
        } else if summary.transferEncoding {
            if summary.contentLength != nil { head.keepAlive = false }
            if summary.chunkedIsFinal && !summary.unknownCoding { head.framing = .chunked } else {
                head.framing = .untilClose; head.keepAlive = false
            }
        } else if let n = summary.contentLength {
            head.framing = n == 0 ? .none : .contentLength(n)
        } else {
            head.framing = .untilClose
            head.keepAlive = false
        }
        return .complete(head)
    }

    // MARK: Pieces

    /// The index of the CR of the first CRLF at or after `from`; -1 for a bare CR or LF (refuse);
    /// nil when no line end is within `limit` bytes.
    @inlinable
    static func findLineEnd(_ buf: UnsafeRawBufferPointer, from: Int, limit: Int) -> Int? {
        var i = from
        let end = min(buf.count, from + limit + 1)
        while i < end {
            let c = buf[i]
            if c == CR {
                if i + 1 < buf.count && buf[i + 1] != LF { return -1 }
                return i
            }
            if c == LF { return -1 }
            i += 1
        }
        return nil
    }

    /// "HTTP/1.x" exactly filling buf[from..<to]: the minor version, -1 for another major
    /// version, nil when it is not an HTTP version at all.
    @inlinable
    static func version(_ buf: UnsafeRawBufferPointer, from: Int, to: Int) -> Int? {
        guard to - from == 8 else { return nil }
        let prefix: StaticString = "HTTP/"
        for k in 0..<5 where buf[from + k] != prefix.utf8Start[k] { return nil }
        let major = buf[from + 5], dot = buf[from + 6], minor = buf[from + 7]
        let digits = UInt8(ascii: "0")...UInt8(ascii: "9")
        guard digits.contains(major), dot == UInt8(ascii: "."), digits.contains(minor) else { return nil }
        if major != UInt8(ascii: "1") { return -1 }
        return minor == UInt8(ascii: "0") ? 0 : 1
    }

    static func method(_ buf: UnsafeRawBufferPointer, _ r: ByteRange) -> Method {
        // Methods are case-sensitive (RFC 9110 section 9.1).
        func is_(_ s: StaticString) -> Bool {
            guard r.count == s.utf8CodeUnitCount else { return false }
            for k in 0..<r.count where buf[Int(r.start) + k] != s.utf8Start[k] { return false }
            return true
        }
        if is_("GET") { return .get }
        if is_("POST") { return .post }
        if is_("HEAD") { return .head }
        if is_("PUT") { return .put }
        if is_("DELETE") { return .delete }
        if is_("OPTIONS") { return .options }
        if is_("PATCH") { return .patch }
        if is_("TRACE") { return .trace }
        if is_("CONNECT") { return .connect }
        return .other
    }

    static func startsWithHTTPScheme(_ buf: UnsafeRawBufferPointer, _ r: ByteRange) -> Bool {
        func has(_ s: StaticString) -> Bool {
            guard r.count > s.utf8CodeUnitCount else { return false }
            for k in 0..<s.utf8CodeUnitCount where buf[Int(r.start) + k] | 0x20 != s.utf8Start[k] { return false }
            return true
        }
        return has("http://") || has("https://")
    }

    enum FieldsOutcome { case incomplete, complete(Int), failed(HTTPError) }

    /// Parses header fields from `from` up to and including the blank line.
    static func parseFields(_ buf: UnsafeRawBufferPointer, from: Int, headStart: Int, limits: HTTPLimits,
                            headers: HeaderTable, summary: inout FieldSummary) -> FieldsOutcome {
        headers.count = 0
        var p = from
        while true {
            if p >= buf.count { return p - headStart > limits.maxHeaderBytes ? .failed(HTTPError(.headersTooLarge, "header section too large")) : .incomplete }
            let c = buf[p]
            if c == CR {
                if p + 1 >= buf.count { return .incomplete }
                guard buf[p + 1] == LF else { return .failed(HTTPError(.badRequest, "bare CR")) }
                return .complete(p + 2)
            }
            if c == LF { return .failed(HTTPError(.badRequest, "bare LF")) }
            if c == SP || c == HTAB { return .failed(HTTPError(.badRequest, "obs-fold or whitespace before a field name")) }
            let room = limits.maxHeaderBytes - (p - headStart)
            guard let lineEnd = findLineEnd(buf, from: p, limit: max(0, room)) else {
                return buf.count - headStart > limits.maxHeaderBytes ? .failed(HTTPError(.headersTooLarge, "header section too large")) : .incomplete
            }
            if lineEnd < 0 { return .failed(HTTPError(.badRequest, "bare CR or LF in a field")) }
            if lineEnd + 1 >= buf.count { return .incomplete }
            if lineEnd + 2 - headStart > limits.maxHeaderBytes { return .failed(HTTPError(.headersTooLarge, "header section too large")) }

            var q = p
            while q < lineEnd && isToken(buf[q]) { q += 1 }
            guard q > p, q < lineEnd, buf[q] == UInt8(ascii: ":") else {
                return .failed(HTTPError(.badRequest, q < lineEnd && (buf[q] == SP || buf[q] == HTAB) ? "whitespace before a colon" : "bad field name"))
            }
            let name = ByteRange(p, q)
            var vs = q + 1
            while vs < lineEnd && (buf[vs] == SP || buf[vs] == HTAB) { vs += 1 }
            var ve = lineEnd
            while ve > vs && (buf[ve - 1] == SP || buf[ve - 1] == HTAB) { ve -= 1 }
            for k in vs..<ve where !isFieldByte(buf[k]) { return .failed(HTTPError(.badRequest, "control byte in a field value")) }
            guard headers.count < min(headers.capacity, limits.maxHeaderCount) else {
                return .failed(HTTPError(.headersTooLarge, "too many header fields"))
            }
            let value = ByteRange(vs, ve)
            headers.names[headers.count] = name
            headers.values[headers.count] = value
            headers.count += 1
            interpret(buf, name, value, &summary)
            p = lineEnd + 2
        }
    }

    /// Notes what a field means for framing and the connection.
    static func interpret(_ buf: UnsafeRawBufferPointer, _ name: ByteRange, _ value: ByteRange, _ s: inout FieldSummary) {
        switch name.count {
        case 14 where equalsIgnoringCase(buf, name, "content-length"):
            // One number (the value is already trimmed): not a list, not even "5, 5" or "5, ".
            // RFC 9110 section 8.6 lets a recipient refuse such a list or rewrite it to one value
            // before forwarding; Weir forwards fields as received, so it refuses them (an upstream
            // that reads "5, 5" differently would frame the body differently), and a second field.
            if value.count == 0 { s.error = HTTPError(.badRequest, "empty Content-Length"); return }
            guard value.count <= 19 else { s.error = HTTPError(.badRequest, "Content-Length too large"); return }
            var n: UInt64 = 0
            for k in Int(value.start)..<Int(value.end) {
                let d = buf[k]
                if d == UInt8(ascii: ",") { s.error = HTTPError(.badRequest, "Content-Length must be one number"); return }
                guard d >= UInt8(ascii: "0") && d <= UInt8(ascii: "9") else { s.error = HTTPError(.badRequest, "bad Content-Length"); return }
                n = n * 10 + UInt64(d - UInt8(ascii: "0"))
            }
            if let old = s.contentLength {
                s.error = HTTPError(.badRequest, old != n ? "differing Content-Length values" : "Content-Length given more than once")
                return
            }
            s.contentLength = n
        case 17 where equalsIgnoringCase(buf, name, "transfer-encoding"):
            s.transferEncoding = true
            _ = forEachListElement(buf, value) { e in
                // A second Transfer-Encoding field continues the list: only the very last coding
                // may be chunked.
                if s.chunkedIsFinal { s.chunkedIsFinal = false }
                if equalsIgnoringCase(buf, e, "chunked") {
                    s.chunkedIsFinal = true
                    s.chunkedCount += 1
                    // RFC 9112 section 6.1: chunked is applied at most once.
                    if s.chunkedCount > 1 { s.error = HTTPError(.badRequest, "chunked applied twice") }
                }
                else if !(equalsIgnoringCase(buf, e, "gzip") || equalsIgnoringCase(buf, e, "deflate")
                          || equalsIgnoringCase(buf, e, "compress") || equalsIgnoringCase(buf, e, "x-gzip")) {
                    s.unknownCoding = true
                }
                return true
            }
        case 4 where equalsIgnoringCase(buf, name, "host"):
            s.hostCount += 1
            s.host = value
        case 10 where equalsIgnoringCase(buf, name, "connection"):
            _ = forEachListElement(buf, value) { e in
                if equalsIgnoringCase(buf, e, "close") { s.close = true }
                else if equalsIgnoringCase(buf, e, "keep-alive") { s.keepAliveToken = true }
                else if equalsIgnoringCase(buf, e, "upgrade") { s.upgradeToken = true }
                return true
            }
        case 7 where equalsIgnoringCase(buf, name, "upgrade"):
            s.upgradeHeader = value.count > 0
        case 6 where equalsIgnoringCase(buf, name, "expect"):
            if equalsIgnoringCase(buf, value, "100-continue") { s.expectContinue = true }
        default:
            break
        }
    }
}
