// Why a message was refused, as the status Weir answers with. The parser decides the status; the
// proxy only writes it, so every refusal rule lives in one place.

public struct HTTPError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Equatable, Sendable {
        /// Malformed or ambiguous (smuggling attempts included): 400 and close.
        case badRequest
        /// Request line or header section over its limit, or too many header fields: 431.
        case headersTooLarge
        /// Body over `maxBodyBytes`: 413.
        case bodyTooLarge
        /// A transfer coding Weir does not implement: 501.
        case notImplemented
        /// HTTP major version other than 1: 505.
        case versionNotSupported
        /// An upstream's response Weir cannot frame: the proxy answers 502.
        case badResponse
    }
    public let kind: Kind
    /// A short reason for logs (never sent to the client in full).
    public let reason: StaticString

    public init(_ kind: Kind, _ reason: StaticString) { self.kind = kind; self.reason = reason }

    public var status: Int {
        switch kind {
        case .badRequest: return 400
        case .headersTooLarge: return 431
        case .bodyTooLarge: return 413
        case .notImplemented: return 501
        case .versionNotSupported: return 505
        case .badResponse: return 502
        }
    }

    public var description: String { "\(status) \(reason)" }

    public static func == (a: HTTPError, b: HTTPError) -> Bool { a.kind == b.kind }
}

/// Bounds on what a message may ask of Weir. Every one has a config knob (see weir.yaml(5)).
public struct HTTPLimits: Sendable, Equatable {
    /// The request line (method, target, version), CRLF excluded.
    public var maxRequestLineBytes = 8 * 1024
    /// The whole head: request line and header fields.
    public var maxHeaderBytes = 60 * 1024
    public var maxHeaderCount = 100
    public var maxBodyBytes: UInt64 = 1 << 30
    /// A chunk extension or trailer section longer than this is refused.
    public var maxChunkExtensionBytes = 1024
    public init() {}
}
