// Socket helpers used off the hot path: listeners, upstream sockets, the cross-thread wake-up.
import CURing
import WeirCore
#if canImport(Glibc)
import Glibc
#endif

public struct SocketError: Error, CustomStringConvertible {
    public let errno: Int32
    public let what: String
    public init(errno: Int32, what: String) { self.errno = errno; self.what = what }
    public var description: String {
        let name = String(cString: strerror(errno))
        switch errno {
        case EADDRINUSE: return "\(what): address in use (\(name)); is another process, or another weir, listening there?"
        case EADDRNOTAVAIL: return "\(what): address not available (\(name)); is that IP configured on this host?"
        case EACCES: return "\(what): permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE"
        default: return "\(what): \(name) (errno \(errno))"
        }
    }
}

public enum Sockets {
    /// A TCP listening socket. `reusePort` lets each shard own one socket on the same address;
    /// the kernel then spreads new connections across them.
    public static func listen(_ address: SocketAddress, backlog: Int32, reusePort: Bool) throws -> Int32 {
        let family = address.family == .inet ? AF_INET : AF_INET6
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError(errno: errno, what: "socket() for \(address)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if reusePort { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) }
        if address.family == .inet6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size)) }
        // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt here
        // instead of one per connection.
        setNoDelay(fd)
        let rc = address.withSockAddr { bind(fd, $0, $1) }
        guard rc == 0 else { let e = errno; close(fd); throw SocketError(errno: e, what: "bind \(address)") }
        guard Glibc.listen(fd, backlog) == 0 else { let e = errno; close(fd); throw SocketError(errno: e, what: "listen \(address)") }
        return fd
    }

    /// Fails when anyone already listens on `address`, even with SO_REUSEPORT: a leftover process
    /// sharing a reuse-port group would silently take a share of the connections.
    public static func checkFree(_ address: SocketAddress) throws {
        let fd = try listen(address, backlog: 1, reusePort: false)
        close(fd)
    }

    /// The address a socket is bound to (to learn the port after binding port 0).
    public static func localAddress(_ fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard rc == 0 else { return nil }
        return withUnsafePointer(to: &storage) { SocketAddress(storage: $0) }
    }

    /// A fresh TCP socket for an upstream connect, with Nagle off (a proxy forwards what it has).
    @inlinable
    public static func tcpSocket(for family: SocketAddress.Family) -> Int32 {
        let fd = socket(family == .inet ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd >= 0 { setNoDelay(fd) }
        return fd
    }

    @inlinable
    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }
}

/// Wakes a shard blocked in its ring from another thread: the shard keeps a read pending on this
/// eventfd, and `wake()` completes it.
public final class Waker: @unchecked Sendable {
    public let fd: Int32
    public init() throws {
        fd = weir_eventfd()
        guard fd >= 0 else { throw SocketError(errno: weir_errno(), what: "eventfd") }
    }
    deinit { close(fd) }
    public func wake() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }
}
