// Finds where a chunked body ends (RFC 9112 section 7.1) while the proxy forwards its bytes
// unchanged. Incremental: feed it each buffer as it arrives; it keeps its place between calls.
// Because the bytes go on as received, every chunk line and trailer field is held to the RFC's
// grammar (no loose forms another parser might frame differently): a size is hex digits,
// whitespace may only come before a ';' or '=', an extension is a token name with an optional
// token or quoted-string value, and a trailer field is `token ":" field-value`.

public struct ChunkedScanner: Equatable, Sendable {
    enum State: Equatable, Sendable {
        case size
        /// Whitespace after the size or an extension value: only ';' may follow.
        case bws
        /// After ';': optional whitespace, then an extension name.
        case extNameStart, extName
        /// Whitespace after an extension name: ';' or '=' must follow.
        case extNameBWS
        /// After '=': optional whitespace, then a token or a quoted string.
        case extValueStart, extToken, extQuoted, extEscape, extQuotedEnd
        case sizeLF, data, dataCR, dataLF
        case trailerStart, trailerName, trailerValue, trailerLF, finalLF, done
    }
    var state = State.size
    var sizeDigits = 0
    var remaining: UInt64 = 0
    var extensionBytes = 0
    var trailerBytes = 0
    var lastChunk = false
    /// Payload bytes seen so far (chunk data only), checked against `maxBodyBytes`.
    public private(set) var dataBytes: UInt64 = 0
    public init() {}

    public enum Result: Equatable {
        /// Every byte given belongs to the body; more is needed.
        case needMore
        /// The body ends after this many bytes of the buffer given.
        case done(Int)
        case failed(HTTPError)
    }

    public var isDone: Bool { state == .done }

    @inlinable
    static func hexValue(_ c: UInt8) -> UInt64? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt64(c - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt64(c - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt64(c - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }

    /// One byte of a chunk extension (RFC 9112 section 7.1.1):
    /// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )` then CR. nil refuses it.
    static func extensionStep(_ state: State, _ c: UInt8) -> State? {
        let ws = c == SP || c == HTAB
        switch state {
        case .bws:
            return ws ? .bws : c == UInt8(ascii: ";") ? .extNameStart : nil
        case .extNameStart:
            return ws ? .extNameStart : isToken(c) ? .extName : nil
        case .extName:
            if isToken(c) { return .extName }
            if ws { return .extNameBWS }
            if c == UInt8(ascii: "=") { return .extValueStart }
            if c == UInt8(ascii: ";") { return .extNameStart }
            return c == CR ? .sizeLF : nil
        case .extNameBWS:
            return ws ? .extNameBWS : c == UInt8(ascii: "=") ? .extValueStart : c == UInt8(ascii: ";") ? .extNameStart : nil
        case .extValueStart:
            return ws ? .extValueStart : c == UInt8(ascii: "\"") ? .extQuoted : isToken(c) ? .extToken : nil
        case .extToken:
            if isToken(c) { return .extToken }
            if ws { return .bws }
            if c == UInt8(ascii: ";") { return .extNameStart }
            return c == CR ? .sizeLF : nil
        case .extQuoted:
            // qdtext: HTAB, SP, VCHAR except '"' and '\\', obs-text.
            if c == UInt8(ascii: "\"") { return .extQuotedEnd }
            if c == UInt8(ascii: "\\") { return .extEscape }
            return c == HTAB || (c >= 0x20 && c != 0x7F) ? .extQuoted : nil
        case .extEscape:
            return c == HTAB || (c >= 0x20 && c != 0x7F) ? .extQuoted : nil
        case .extQuotedEnd:
            if ws { return .bws }
            if c == UInt8(ascii: ";") { return .extNameStart }
            return c == CR ? .sizeLF : nil
        default:
            return nil
        }
    }

    public mutating func scan(_ buf: UnsafeRawBufferPointer, limits: HTTPLimits) -> Result {
        var i = 0
        while i < buf.count {
            let c = buf[i]
            switch state {
            case .size:
                if let v = ChunkedScanner.hexValue(c) {
                    sizeDigits += 1
                    guard sizeDigits <= 15 else { return .failed(HTTPError(.badRequest, "chunk size too large")) }
                    remaining = remaining << 4 | v
                } else if sizeDigits == 0 {
                    return .failed(HTTPError(.badRequest, "bad chunk size"))
                } else if c == UInt8(ascii: ";") {
                    state = .extNameStart
                } else if c == SP || c == HTAB {
                    state = .bws
                } else if c == CR {
                    state = .sizeLF
                } else {
                    return .failed(HTTPError(.badRequest, "bad chunk size"))
                }
            case .bws, .extNameStart, .extName, .extNameBWS, .extValueStart, .extToken, .extQuoted, .extEscape, .extQuotedEnd:
                extensionBytes += 1
                if extensionBytes > limits.maxChunkExtensionBytes { return .failed(HTTPError(.badRequest, "chunk extension too long")) }
                guard let next = ChunkedScanner.extensionStep(state, c) else {
                    return .failed(HTTPError(.badRequest, state == .extQuoted || state == .extEscape ? "bad quoted string in a chunk extension" : "bad chunk extension"))
                }
                state = next
            case .sizeLF:
                guard c == LF else { return .failed(HTTPError(.badRequest, "bare CR after chunk size")) }
                dataBytes += remaining
                if dataBytes > limits.maxBodyBytes { return .failed(HTTPError(.bodyTooLarge, "chunked body over the limit")) }
                lastChunk = remaining == 0
                sizeDigits = 0
                extensionBytes = 0
                state = lastChunk ? .trailerStart : .data
            case .data:
                let take = Int(min(remaining, UInt64(buf.count - i)))
                remaining -= UInt64(take)
                i += take
                if remaining == 0 { state = .dataCR }
                continue
            case .dataCR:
                guard c == CR else { return .failed(HTTPError(.badRequest, "chunk data longer than its size")) }
                state = .dataLF
            case .dataLF:
                guard c == LF else { return .failed(HTTPError(.badRequest, "bare CR after chunk data")) }
                state = .size
            case .trailerStart:
                if c == CR { state = .finalLF } else if isToken(c) { state = .trailerName; trailerBytes += 1 } else {
                    return .failed(HTTPError(.badRequest, "bad trailer field"))
                }
            case .trailerName:
                trailerBytes += 1
                if trailerBytes > limits.maxHeaderBytes { return .failed(HTTPError(.headersTooLarge, "trailer section too large")) }
                if c == UInt8(ascii: ":") { state = .trailerValue } else if !isToken(c) {
                    return .failed(HTTPError(.badRequest, "bad trailer field name"))
                }
            case .trailerValue:
                trailerBytes += 1
                if trailerBytes > limits.maxHeaderBytes { return .failed(HTTPError(.headersTooLarge, "trailer section too large")) }
                if c == CR { state = .trailerLF } else if !isFieldByte(c) {
                    return .failed(HTTPError(.badRequest, "control byte in a trailer field"))
                }
            case .trailerLF:
                guard c == LF else { return .failed(HTTPError(.badRequest, "bare CR in trailer")) }
                state = .trailerStart
            case .finalLF:
                guard c == LF else { return .failed(HTTPError(.badRequest, "bare CR at body end")) }
                state = .done
                return .done(i + 1)
            case .done:
                return .done(i)
            }
            i += 1
        }
        return .needMore
    }
}
