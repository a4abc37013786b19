// Finds where a chunked body ends (RFC 9112 section 7.1) while the proxy forwards its bytes
// unchanged. Incremental: feed it each buffer as it arrives; it keeps its place between calls.

public struct ChunkedScanner: Equatable, Sendable {
    enum State: Equatable, Sendable {
        case size, extensions, sizeLF, data, dataCR, dataLF, trailerStart, trailerLine, trailerLF, finalLF, done
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
                } else if c == UInt8(ascii: ";") || c == SP || c == HTAB {
                    state = .extensions
                } else if c == CR {
                    state = .sizeLF
                } else {
                    return .failed(HTTPError(.badRequest, "bad chunk size"))
                }
            case .extensions:
                extensionBytes += 1
                if extensionBytes > limits.maxChunkExtensionBytes { return .failed(HTTPError(.badRequest, "chunk extension too long")) }
                if c == CR { state = .sizeLF } else if c == LF || (c < 0x20 && c != HTAB) || c == 0x7F {
                    return .failed(HTTPError(.badRequest, "control byte in a chunk extension"))
                }
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
                if c == CR { state = .finalLF } else if c == LF || c == SP || c == HTAB {
                    return .failed(HTTPError(.badRequest, "bad trailer"))
                } else { state = .trailerLine; trailerBytes += 1 }
            case .trailerLine:
                trailerBytes += 1
                if trailerBytes > limits.maxHeaderBytes { return .failed(HTTPError(.headersTooLarge, "trailer section too large")) }
                if c == CR { state = .trailerLF } else if c == LF || !isFieldByte(c) && c != UInt8(ascii: ":") {
                    return .failed(HTTPError(.badRequest, "bad trailer"))
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
