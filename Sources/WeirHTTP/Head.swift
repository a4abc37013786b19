// HTTP/1.1 message heads (RFC 9112) parsed in place: the parser records offsets into the bytes it
// was given and copies nothing, so a proxy can forward or rewrite the head straight from its
// receive buffer. It does no I/O and reads no clock.

/// Offsets [start, end) into the buffer that was parsed.
public struct ByteRange: Equatable, Sendable {
    public var start: Int32
    public var end: Int32
    @inlinable public init(_ start: Int, _ end: Int) { self.start = Int32(start); self.end = Int32(end) }
    @inlinable public var count: Int { Int(end - start) }
    public static let empty = ByteRange(0, 0)
}

/// Where a head's header fields are, in a table allocated once (per shard) and reused for every
/// message, so parsing allocates nothing.
public final class HeaderTable {
    public let capacity: Int
    @usableFromInline let names: UnsafeMutablePointer<ByteRange>
    @usableFromInline let values: UnsafeMutablePointer<ByteRange>
    public internal(set) var count = 0

    public init(capacity: Int) {
        self.capacity = capacity
        names = .allocate(capacity: capacity)
        values = .allocate(capacity: capacity)
    }
    deinit { names.deallocate(); values.deallocate() }

    @inlinable public func name(_ i: Int) -> ByteRange { names[i] }
    @inlinable public func value(_ i: Int) -> ByteRange { values[i] }
}

/// How the message body is delimited (RFC 9112 section 6).
public enum BodyFraming: Equatable, Sendable {
    case none
    case contentLength(UInt64)
    case chunked
    /// Response bodies only: the body ends when the upstream closes.
    case untilClose
}

public enum Method: Equatable, Sendable {
    case get, head, post, put, delete, options, patch, trace, connect, other

    /// Safe to retry: a repeat has the same effect (RFC 9110 section 9.2.2).
    public var isIdempotent: Bool {
        switch self {
        case .get, .head, .put, .delete, .options, .trace: return true
        case .post, .patch, .connect, .other: return false
        }
    }
}

public struct RequestHead: Equatable, Sendable {
    public var method: Method = .other
    public var methodRange = ByteRange.empty
    public var target = ByteRange.empty
    /// 0 for HTTP/1.0, 1 for HTTP/1.1 (and later 1.x).
    public var minorVersion = 1
    /// Bytes from the start of the buffer to the end of the blank line, leading CRLFs included.
    public var headLength = 0
    public var framing = BodyFraming.none
    public var keepAlive = true
    public var expectContinue = false
    /// `Connection: upgrade` with an `Upgrade` header: a tunnel if the upstream answers 101.
    public var upgrade = false
    public var host: ByteRange? = nil
    public init() {}
}

public struct ResponseHead: Equatable, Sendable {
    public var status = 0
    public var minorVersion = 1
    public var headLength = 0
    public var framing = BodyFraming.none
    public var keepAlive = true
    public init() {}
}

public enum ParseOutcome<Head: Equatable>: Equatable {
    /// Not all of the head is here yet (and nothing seen so far is wrong or over a limit).
    case incomplete
    case complete(Head)
    case failed(HTTPError)
}
