// The HTTP inspector: tells from a plaintext connection's first bytes whether it speaks
// HTTP/1.0, HTTP/1.1 or HTTP/2 with prior knowledge (h2c), so a filter chain can be chosen by
// application protocol before any session reads the bytes. Nothing is consumed or copied.

public enum SniffedProtocol: Equatable, Sendable {
    /// More bytes are needed.
    case incomplete
    /// Not HTTP as far as these bytes show.
    case unknown
    case http10, http11, h2c

    /// The protocol's ALPN name in wire form (a length byte, then the name), the form filter
    /// chain matches read; empty for none.
    public var alpn: UnsafeRawBufferPointer {
        let s: StaticString
        switch self {
        case .http10: s = "\u{8}http/1.0"
        case .http11: s = "\u{8}http/1.1"
        case .h2c: s = "\u{3}h2c"
        case .incomplete, .unknown: return UnsafeRawBufferPointer(start: nil, count: 0)
        }
        return UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)
    }
}

public enum HTTPSniffer {
    static let preface: StaticString = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    /// Reads the request line (or the HTTP/2 preface) at the start of `buf`. A request line
    /// longer than `limit` bytes is not HTTP as far as the inspector is concerned.
    public static func sniff(_ buf: UnsafeRawBufferPointer, limit: Int = 8192) -> SniffedProtocol {
        let p = UnsafeRawBufferPointer(start: preface.utf8Start, count: preface.utf8CodeUnitCount)
        let n = min(buf.count, p.count)
        if n > 0 && buf[0] == UInt8(ascii: "P") && (0..<n).allSatisfy({ buf[$0] == p[$0] }) {
            return buf.count >= p.count ? .h2c : .incomplete
        }
        // method SP target SP HTTP/1.x CRLF, method a token, target without spaces or controls.
        var i = 0
        while i < buf.count, isTokenByte(buf[i]) { i += 1 }
        if i == buf.count { return i < min(limit, 32) ? .incomplete : .unknown }
        guard i > 0, buf[i] == UInt8(ascii: " ") else { return .unknown }
        i += 1
        let targetStart = i
        while i < buf.count, buf[i] > 0x20, buf[i] != 0x7F { i += 1 }
        if i == buf.count { return i < limit ? .incomplete : .unknown }
        guard i > targetStart, buf[i] == UInt8(ascii: " ") else { return .unknown }
        i += 1
        let version: StaticString = "HTTP/1."
        for k in 0..<version.utf8CodeUnitCount {
            if i + k == buf.count { return .incomplete }
            if buf[i + k] != version.utf8Start[k] { return .unknown }
        }
        i += version.utf8CodeUnitCount
        guard i + 1 < buf.count else { return .incomplete }
        let minor = buf[i]
        guard buf[i + 1] == UInt8(ascii: "\r") || buf[i + 1] == UInt8(ascii: "\n") else { return .unknown }
        switch minor {
        case UInt8(ascii: "0"): return .http10
        case UInt8(ascii: "1"): return .http11
        default: return .unknown
        }
    }

    static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): return true
        default: return "!#$%&'*+-.^_`|~".utf8.contains(b)
        }
    }
}
