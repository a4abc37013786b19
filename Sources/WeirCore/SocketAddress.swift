// IP socket addresses as values: parsed from "1.2.3.4:80" or "[::1]:80", and turned into the
// sockaddr bytes the kernel wants. No DNS: an appliance config names addresses, not names.
#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address with a port.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    public enum Family: Sendable { case inet, inet6 }

    /// Address bytes in network order: 4 for IPv4, 16 for IPv6.
    public let bytes: [UInt8]
    public let port: UInt16

    public var family: Family { bytes.count == 4 ? .inet : .inet6 }

    public init(ipv4 a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8, port: UInt16) {
        self.bytes = [a, b, c, d]
        self.port = port
    }

    public init(bytes: [UInt8], port: UInt16) {
        precondition(bytes.count == 4 || bytes.count == 16, "an IP address has 4 or 16 bytes")
        self.bytes = bytes
        self.port = port
    }

    /// Why a string is not an address, in words an operator can act on.
    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case missingPort(String)
        case badPort(String)
        case badHost(String)

        public var description: String {
            switch self {
            case .missingPort(let s): return "'\(s)' has no port; write HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
            case .badPort(let s): return "'\(s)' is not a port number from 0 to 65535"
            case .badHost(let s): return "'\(s)' is not an IPv4 or IPv6 address (names are not resolved; write an IP)"
            }
        }
    }

    /// Parses `A.B.C.D:PORT` or `[IPv6]:PORT`.
    public static func parse(_ text: String) throws(ParseError) -> SocketAddress {
        let host: String
        let portText: String
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw .badHost(text) }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw .missingPort(text) }
            portText = String(rest.dropFirst())
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw .missingPort(text) }
            host = String(text[..<colon])
            portText = String(text[text.index(after: colon)...])
            if host.contains(":") { throw .badHost(host + " (put IPv6 addresses in brackets)") }
        }
        guard !portText.isEmpty, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = UInt16(portText) else { throw .badPort(portText) }
        if let v4 = parseIPv4(host) { return SocketAddress(bytes: v4, port: port) }
        if let v6 = parseIPv6(host) { return SocketAddress(bytes: v6, port: port) }
        throw .badHost(host)
    }

    static func parseIPv4(_ s: String) -> [UInt8]? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let v = UInt8(p) else { return nil }
            out.append(v)
        }
        return out
    }

    static func parseIPv6(_ s: String) -> [UInt8]? {
        var storage = in6_addr()
        let ok = s.withCString { inet_pton(AF_INET6, $0, &storage) }
        guard ok == 1 else { return nil }
        return withUnsafeBytes(of: &storage) { Array($0) }
    }

    public var description: String {
        switch family {
        case .inet: return "\(bytes[0]).\(bytes[1]).\(bytes[2]).\(bytes[3]):\(port)"
        case .inet6:
            var storage = in6_addr()
            withUnsafeMutableBytes(of: &storage) { $0.copyBytes(from: bytes) }
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            _ = inet_ntop(AF_INET6, &storage, &buf, socklen_t(buf.count))
            let text = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            return "[\(text)]:\(port)"
        }
    }

    /// The address without its port (and without brackets for IPv6).
    public var hostText: String {
        let d = description
        let host = d[..<d.lastIndex(of: ":")!]
        return family == .inet6 ? String(host.dropFirst().dropLast()) : String(host)
    }

    /// Calls `body` with a sockaddr for this address.
    public func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        var storage = sockaddr_storage()
        let len = fill(&storage)
        return try withUnsafePointer(to: &storage) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, len) }
        }
    }

    /// Writes the sockaddr form into `storage` and returns its length.
    public func fill(_ storage: inout sockaddr_storage) -> socklen_t {
        storage = sockaddr_storage()
        return withUnsafeMutablePointer(to: &storage) { p in
            switch family {
            case .inet:
                return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    sin.pointee.sin_family = sa_family_t(AF_INET)
                    sin.pointee.sin_port = port.bigEndian
                    withUnsafeMutableBytes(of: &sin.pointee.sin_addr) { $0.copyBytes(from: bytes) }
                    return socklen_t(MemoryLayout<sockaddr_in>.size)
                }
            case .inet6:
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                    sin6.pointee.sin6_family = sa_family_t(AF_INET6)
                    sin6.pointee.sin6_port = port.bigEndian
                    withUnsafeMutableBytes(of: &sin6.pointee.sin6_addr) { $0.copyBytes(from: bytes) }
                    return socklen_t(MemoryLayout<sockaddr_in6>.size)
                }
            }
        }
    }

    /// Reads a sockaddr the kernel filled (accept, getsockname).
    public init?(storage: UnsafePointer<sockaddr_storage>) {
        switch Int32(storage.pointee.ss_family) {
        case AF_INET:
            let sin = UnsafeRawPointer(storage).assumingMemoryBound(to: sockaddr_in.self).pointee
            var a = sin.sin_addr
            self.init(bytes: withUnsafeBytes(of: &a) { Array($0) }, port: UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            let sin6 = UnsafeRawPointer(storage).assumingMemoryBound(to: sockaddr_in6.self).pointee
            var a = sin6.sin6_addr
            self.init(bytes: withUnsafeBytes(of: &a) { Array($0) }, port: UInt16(bigEndian: sin6.sin6_port))
        default:
            return nil
        }
    }

    public var isLoopback: Bool {
        switch family {
        case .inet: return bytes[0] == 127
        case .inet6: return bytes == [UInt8](repeating: 0, count: 15) + [1]
        }
    }

    public func with(port: UInt16) -> SocketAddress { SocketAddress(bytes: bytes, port: port) }
}

/// An IP address and port as two words and a flag: what a shard reads from a socket it accepted
/// and compares against listeners and filter chain matches, without the heap (a SocketAddress
/// keeps its bytes in an array). IPv4 sits in the low 32 bits of `low`.
public struct AddressKey: Hashable, Sendable {
    public var isIPv6: Bool
    public var high: UInt64
    public var low: UInt64
    public var port: UInt16

    public init(isIPv6: Bool, high: UInt64, low: UInt64, port: UInt16) {
        self.isIPv6 = isIPv6; self.high = high; self.low = low; self.port = port
    }

    public init(_ a: SocketAddress) {
        var high: UInt64 = 0, low: UInt64 = 0
        for (i, b) in a.bytes.enumerated() {
            if a.bytes.count == 16 && i < 8 { high = high << 8 | UInt64(b) } else { low = low << 8 | UInt64(b) }
        }
        self.init(isIPv6: a.family == .inet6, high: high, low: low, port: a.port)
    }

    /// Reads a sockaddr the kernel filled; nil for a family that is not IP.
    public init?(storage: UnsafeRawPointer) {
        switch Int32(storage.load(as: sa_family_t.self)) {
        case AF_INET:
            let sin = storage.load(as: sockaddr_in.self)
            self.init(isIPv6: false, high: 0, low: UInt64(UInt32(bigEndian: sin.sin_addr.s_addr)), port: UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            let sin6 = storage.load(as: sockaddr_in6.self)
            var high: UInt64 = 0, low: UInt64 = 0
            withUnsafeBytes(of: sin6.sin6_addr) { b in
                for i in 0..<8 { high = high << 8 | UInt64(b[i]) }
                for i in 8..<16 { low = low << 8 | UInt64(b[i]) }
            }
            // An IPv4 client on a dual-stack socket (::ffff:a.b.c.d) is an IPv4 address: IPv4
            // prefixes and listeners match it.
            if high == 0 && low >> 32 == 0xFFFF {
                self.init(isIPv6: false, high: 0, low: low & 0xFFFF_FFFF, port: UInt16(bigEndian: sin6.sin6_port))
                return
            }
            self.init(isIPv6: true, high: high, low: low, port: UInt16(bigEndian: sin6.sin6_port))
        default:
            return nil
        }
    }

    /// The same address on another port (0: the wildcard port a listener table never holds).
    public func with(port: UInt16) -> AddressKey { AddressKey(isIPv6: isIPv6, high: high, low: low, port: port) }

    /// The unspecified address of this family (0.0.0.0 or ::) on this port.
    public var anyAddress: AddressKey { AddressKey(isIPv6: isIPv6, high: 0, low: 0, port: port) }

    public var socketAddress: SocketAddress {
        if isIPv6 {
            let h = (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * $0)) }
            let l = (0..<8).map { UInt8(truncatingIfNeeded: low >> (56 - 8 * $0)) }
            return SocketAddress(bytes: h + l, port: port)
        }
        return SocketAddress(bytes: (0..<4).map { UInt8(truncatingIfNeeded: low >> (24 - 8 * $0)) }, port: port)
    }
}

/// An address prefix (`10.0.0.0/8`, `::/0`), as filter chain matches name them.
public struct AddressPrefix: Hashable, Sendable, CustomStringConvertible {
    public let isIPv6: Bool
    public let high: UInt64
    public let low: UInt64
    public let length: Int

    /// `address` is an IP without port; `length` 0 to 32 (IPv4) or 128 (IPv6). Bits past the
    /// length are cleared, as Envoy does.
    public init?(address: String, length: Int) {
        let probe = address.contains(":") ? "[\(address)]:0" : "\(address):0"
        guard let a = try? SocketAddress.parse(probe) else { return nil }
        let key = AddressKey(a)
        let bits = key.isIPv6 ? 128 : 32
        guard (0...bits).contains(length) else { return nil }
        isIPv6 = key.isIPv6
        self.length = length
        (high, low) = AddressPrefix.mask(key, length)
    }

    static func mask(_ a: AddressKey, _ length: Int) -> (UInt64, UInt64) {
        if !a.isIPv6 {
            let m: UInt64 = length == 0 ? 0 : (0xFFFF_FFFF << (32 - length)) & 0xFFFF_FFFF
            return (0, a.low & m)
        }
        let hm: UInt64 = length >= 64 ? ~0 : (length == 0 ? 0 : ~0 << (64 - length))
        let lm: UInt64 = length <= 64 ? 0 : (length >= 128 ? ~0 : ~0 << (128 - length))
        return (a.high & hm, a.low & lm)
    }

    public func contains(_ a: AddressKey) -> Bool {
        guard a.isIPv6 == isIPv6 else { return false }
        let (h, l) = AddressPrefix.mask(a, length)
        return h == high && l == low
    }

    public var description: String { "\(AddressKey(isIPv6: isIPv6, high: high, low: low, port: 0).socketAddress.hostText)/\(length)" }
}
