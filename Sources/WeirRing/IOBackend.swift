// The completion interface a shard and the health checker are written against. A backend queues
// operations, starts them all at the next submit, and reports each result as a completion
// (user data, result, flags) in io_uring's terms: a result is a byte count or a negated errno,
// flags carry IORING_CQE_F_MORE for multishot operations and the buffer id of a provided buffer.
// Code is generic over the backend and specialized, so the io_uring path calls liburing directly.
import CURing
import CWeirSys
import WeirCore
#if canImport(Glibc)
import Glibc
#endif

/// A fixed pool of equal receive buffers that multishot receives take from. A buffer taken by a
/// completion is the caller's until it recycles it; recycled buffers return at `commit`.
public protocol ReceiveBuffers: AnyObject {
    var group: UInt16 { get }
    var count: Int { get }
    var bufferBytes: Int { get }
    /// Buffers handed out and not yet recycled.
    var outstanding: Int { get }
    func pointer(_ bid: UInt16) -> UnsafeMutableRawPointer
    /// Notes that a completion handed out a buffer.
    func didTake()
    func recycle(_ bid: UInt16)
    /// Makes the recycled buffers available again; returns how many.
    @discardableResult func commit() -> Int32
}

/// Which backend runs a process's shards, as the config and the command line name it.
public enum IOBackendKind: String, Sendable, CaseIterable {
    case ioUring = "io_uring"
    case epoll
    /// The in-memory kernel of the simulation harness (never chosen by configuration).
    case simulated
}

public protocol IOBackend: AnyObject {
    associatedtype Buffers: ReceiveBuffers
    static var kind: IOBackendKind { get }
    /// `entries`: how many operations may be queued between submits without an early submit.
    init(entries: UInt32) throws
    /// What the backend set up, for the start-up log.
    var setupDescription: String { get }
    func makeBuffers(group: UInt16, count: Int, bufferBytes: Int) throws -> Buffers
    /// Makes room for `count` operations that must start in the same submit (a linked pair).
    func reserve(_ count: UInt32)
    /// Starts what is queued and waits for a completion or `timeoutNanoseconds`.
    @discardableResult func submitAndWait(timeoutNanoseconds: Int64) -> Int32
    /// Starts what is queued without waiting.
    @discardableResult func submit() -> Int32
    /// Calls `body(userData, result, flags)` for every completion ready now.
    @discardableResult func forEachCompletion(_ body: (UInt64, Int32, UInt32) -> Void) -> Int

    /// Accepts until cancelled or an error: a completion per connection (the new fd), with MORE.
    func acceptMultishot(fd: Int32, userData: UserData)
    /// Receives into buffers of `group` until EOF, an error, a cancel, an empty pool (-ENOBUFS) or
    /// `limitBytes` (when not 0, and where the kernel can: see Ring.probeRecvLimit); the last completion lacks MORE.
    func recvMultishot(fd: Int32, group: UInt16, limitBytes: UInt32, userData: UserData)
    /// One receive into `buffer`.
    func recv(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, userData: UserData)
    func send(fd: Int32, buffer: UnsafeRawPointer, count: Int, userData: UserData)
    /// A gather send; `message` and its iovecs stay valid until the completion.
    func sendmsg(fd: Int32, message: UnsafePointer<msghdr>, userData: UserData)
    /// A connect that `timeout` cancels (-ECANCELED); the timeout completes under `timeoutUserData`.
    func connect(fd: Int32, address: UnsafePointer<sockaddr>, length: socklen_t,
                 timeout: UnsafeMutablePointer<__kernel_timespec>, userData: UserData, timeoutUserData: UserData)
    /// One-shot readiness: completes with the ready events.
    func poll(fd: Int32, events: UInt32, userData: UserData)
    /// A timer: completes with -ETIME after `timeout` (read at submit).
    func timeout(_ timeout: UnsafeMutablePointer<__kernel_timespec>, userData: UserData)
    func read(fd: Int32, into buffer: UnsafeMutableRawPointer, count: UInt32, userData: UserData)
    /// Appends to a file opened with O_APPEND.
    func append(fd: Int32, from buffer: UnsafeRawPointer, count: UInt32, userData: UserData)
    /// Cancels the operation submitted with `target` on `fd` (-1 for a timer); it completes with
    /// -ECANCELED.
    func cancel(_ target: UserData, on fd: Int32, userData: UserData)
    /// Cancels every operation pending on `fd`.
    func cancelAll(fd: Int32, userData: UserData)
    /// Closes a descriptor this backend may have watched (every socket and file goes through here,
    /// so a backend that keeps per-descriptor state never mistakes a reused number for the old one).
    func close(fd: Int32)

    // The rest of what a shard asks of the kernel, here so a simulated one can answer it.
    /// A TCP socket for an upstream connection (TCP_NODELAY set), or -1 with errno.
    func tcpSocket(family: SocketAddress.Family) -> Int32
    func shutdown(fd: Int32, how: Int32)
    /// The peer's address (getpeername); 0, or -1 with errno.
    func peerName(fd: Int32, into storage: UnsafeMutablePointer<sockaddr_storage>) -> Int32
    /// The socket's own address (getsockname); 0, or -1 with errno.
    func localName(fd: Int32, into storage: UnsafeMutablePointer<sockaddr_storage>) -> Int32
    /// Where an accepted connection was going before a NAT redirect brought it here
    /// (SO_ORIGINAL_DST, set by iptables REDIRECT); 0, or -1 when there was none.
    func originalDestination(fd: Int32, into storage: UnsafeMutablePointer<sockaddr_storage>) -> Int32
    /// Binds an upstream socket to a source address before it connects (port 0: the kernel
    /// picks one at connect time, so one source IP serves more than 64k upstreams); 0 or -errno.
    func bindSource(fd: Int32, address: UnsafePointer<sockaddr>, length: socklen_t) -> Int32
    /// Monotonic time in nanoseconds (coarse: the cheap, tick-grained clock).
    func clock(coarse: Bool) -> Int64

    // The splice data path's synchronous calls (it moves bytes on the shard thread and uses the
    // backend only to wait for readiness with `poll`).
    /// Puts a socket in non-blocking mode (splice(2) honours SPLICE_F_NONBLOCK only on the pipe).
    func setNonBlocking(fd: Int32)
    /// A non-blocking pipe that holds about `bytes`; nil with errno set when none can be made.
    func makePipe(bytes: Int) -> (read: Int32, write: Int32)?
    /// Moves up to `count` bytes from `from` to `to` (one of them a pipe) without blocking: the
    /// bytes moved, 0 at the end of the source, or a negated errno (-EAGAIN: not ready).
    func splice(from: Int32, to: Int32, count: Int) -> Int
    /// Closes one end of a pipe from `makePipe`.
    func closePipe(fd: Int32)
}

/// The kernel's answers, for the real backends.
extension IOBackend {
    @inlinable public func tcpSocket(family: SocketAddress.Family) -> Int32 { Sockets.tcpSocket(for: family) }
    @inlinable public func shutdown(fd: Int32, how: Int32) { _ = Glibc.shutdown(fd, how) }
    @inlinable public func peerName(fd: Int32, into storage: UnsafeMutablePointer<sockaddr_storage>) -> Int32 {
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        return storage.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
    }
    @inlinable public func localName(fd: Int32, into storage: UnsafeMutablePointer<sockaddr_storage>) -> Int32 {
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        return storage.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    public func originalDestination(fd: Int32, into storage: UnsafeMutablePointer<sockaddr_storage>) -> Int32 {
        // SO_ORIGINAL_DST (IPv4) and IP6T_SO_ORIGINAL_DST (IPv6) are both 80; the connection's
        // own family says which level asks (an IPv4 client on a dual-stack socket has a
        // v4-mapped address and an IPv4 NAT entry).
        guard localName(fd: fd, into: storage) == 0 else { return -1 }
        var level = Int32(IPPROTO_IP)
        if Int32(storage.pointee.ss_family) == AF_INET6 {
            let mapped = UnsafeRawPointer(storage).withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                withUnsafeBytes(of: p.pointee.sin6_addr) { b in (0..<10).allSatisfy { b[$0] == 0 } && b[10] == 0xFF && b[11] == 0xFF }
            }
            if !mapped { level = Int32(IPPROTO_IPV6) }
        }
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        return getsockopt(fd, level, 80, storage, &len)
    }
    public func bindSource(fd: Int32, address: UnsafePointer<sockaddr>, length: socklen_t) -> Int32 {
        var one: Int32 = 1
        // IP_BIND_ADDRESS_NO_PORT (24): the port is chosen at connect, per destination.
        _ = setsockopt(fd, Int32(IPPROTO_IP), 24, &one, socklen_t(MemoryLayout<Int32>.size))
        return Glibc.bind(fd, address, length) == 0 ? 0 : -errno
    }
    @inlinable public func clock(coarse: Bool) -> Int64 { monotonicNanoseconds(coarse: coarse) }
    public func setNonBlocking(fd: Int32) { _ = weir_set_nonblock(fd) }
    public func makePipe(bytes: Int) -> (read: Int32, write: Int32)? {
        var fds: (Int32, Int32) = (-1, -1)
        let rc = withUnsafeMutablePointer(to: &fds) { $0.withMemoryRebound(to: Int32.self, capacity: 2) { weir_pipe_nonblock($0) } }
        guard rc == 0 else { return nil }
        _ = weir_set_pipe_size(fds.1, Int32(clamping: bytes))
        return (fds.0, fds.1)
    }
    public func splice(from: Int32, to: Int32, count: Int) -> Int {
        let n = weir_splice_nonblock(from, to, count)
        return n >= 0 ? n : -Int(errno)
    }
    public func closePipe(fd: Int32) { _ = Glibc.close(fd) }
}
