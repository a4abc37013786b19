// One io_uring, owned by one thread. Wraps liburing's calls in the few shapes Weir uses and reports
// setup failures with their likely cause.
import CURing
import WeirCore
#if canImport(Glibc)
import Glibc
#endif

/// Why a ring could not be created, in words an operator can act on.
public struct RingError: Error, CustomStringConvertible {
    public let errno: Int32
    public let call: String
    public init(errno: Int32, call: String) { self.errno = errno; self.call = call }
    public var description: String {
        let name = String(cString: strerror(errno))
        switch errno {
        case EPERM:
            return "\(call) failed: EPERM (\(name)); is io_uring disabled by seccomp, a container runtime, or sysctl kernel.io_uring_disabled?"
        case ENOSYS:
            return "\(call) failed: ENOSYS; this kernel has no io_uring (Linux 6.1 or newer is needed)"
        case ENOMEM:
            return "\(call) failed: ENOMEM; the locked-memory limit (ulimit -l) may be too low for the ring and buffers"
        case EINVAL:
            return "\(call) failed: EINVAL (\(name)); the kernel may be older than 6.1 and lack a feature Weir needs"
        default:
            return "\(call) failed: \(name) (errno \(errno))"
        }
    }
}

public final class Ring: IOBackend {
    public static var kind: IOBackendKind { .ioUring }

    @usableFromInline let ring: UnsafeMutablePointer<io_uring>
    /// Which setup flags the kernel accepted, for the startup log.
    public let setupDescription: String

    /// Creates a ring, preferring SINGLE_ISSUER + DEFER_TASKRUN (measured here: about a quarter less
    /// CPU per request), then COOP_TASKRUN, then none. Must run on the thread that will use it.
    public init(entries: UInt32) throws {
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        let attempts: [(UInt32, String)] = [
            (weir_setup_single_issuer() | weir_setup_defer_taskrun() | weir_setup_submit_all(), "SINGLE_ISSUER|DEFER_TASKRUN"),
            (weir_setup_coop_taskrun() | weir_setup_submit_all(), "COOP_TASKRUN"),
            (0, "default flags"),
        ]
        var lastError: Int32 = 0
        for (flags, name) in attempts {
            let rc = io_uring_queue_init(entries, ring, flags)
            if rc == 0 { setupDescription = name; return }
            lastError = -rc
            // Only an unsupported flag is worth retrying without it.
            if lastError != EINVAL { break }
        }
        ring.deallocate()
        throw RingError(errno: lastError, call: "io_uring_setup")
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
    }

    /// Checks, on a throwaway ring, that io_uring works here with what a shard needs: a
    /// provided buffer ring (Linux 5.19) and a multishot recv taking from it (6.0). A kernel
    /// that lets a ring be created but lacks these must not be chosen (io: auto then uses epoll).
    public static func probe() throws -> String {
        let r = try Ring(entries: 8)
        let buffers = try BufferRing(ring: r, group: 1, count: 16, bufferBytes: 512)
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else {
            throw RingError(errno: errno, call: "socketpair (probing io_uring)")
        }
        defer { Glibc.close(fds[0]); Glibc.close(fds[1]) }
        var byte: UInt8 = 1
        _ = Glibc.write(fds[1], &byte, 1)
        r.recvMultishot(fd: fds[0], group: buffers.group, userData: UserData(raw: 1))
        var result: Int32? = nil
        var flags: UInt32 = 0
        let deadline = monotonicNanoseconds() + 1_000_000_000
        while result == nil && monotonicNanoseconds() < deadline {
            r.submitAndWait(timeoutNanoseconds: 50_000_000)
            r.forEachCompletion { _, res, f in if result == nil { result = res; flags = f } }
        }
        guard let result, result == 1, bufferID(flags: flags) != nil else {
            throw RingError(errno: (result ?? 0) < 0 ? -(result ?? 0) : EINVAL, call: "multishot recv with provided buffers")
        }
        return r.setupDescription
    }

    /// A submission entry; when the queue is full, submits what is queued to make room.
    @inlinable
    public func sqe() -> UnsafeMutablePointer<io_uring_sqe> {
        if let s = io_uring_get_sqe(ring) { return s }
        _ = io_uring_submit(ring)
        guard let s = io_uring_get_sqe(ring) else { fatalError("io_uring submission queue still full after submit") }
        return s
    }

    /// Makes room for `count` submission entries that must go to the kernel in one submit (a
    /// linked pair: a connect and its timeout). When fewer are free, what is queued goes now.
    @inlinable
    public func reserve(_ count: UInt32) {
        if io_uring_sq_space_left(ring) < count { _ = io_uring_submit(ring) }
    }

    /// Entries queued and not yet submitted.
    public var queuedEntries: UInt32 { io_uring_sq_ready(ring) }

    /// Submits everything queued and waits for at least one completion or `timeoutNanoseconds`.
    /// This is the one system call per loop turn.
    @discardableResult @inlinable
    public func submitAndWait(timeoutNanoseconds: Int64) -> Int32 {
        var ts = __kernel_timespec(tv_sec: timeoutNanoseconds / 1_000_000_000, tv_nsec: timeoutNanoseconds % 1_000_000_000)
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        return io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, nil)
    }

    /// Submits without waiting.
    @discardableResult @inlinable
    public func submit() -> Int32 { io_uring_submit(ring) }

    /// Calls `body(userData, result, flags)` for every completion ready now, then marks them seen.
    @discardableResult @inlinable
    public func forEachCompletion(_ body: (UInt64, Int32, UInt32) -> Void) -> Int {
        var total = 0
        while true {
            let ready = weir_cq_ready(ring)
            if ready == 0 { return total }
            let head = weir_cq_head(ring)
            for i in 0..<ready {
                let cqe = weir_cqe_at(ring, head &+ i)!
                body(cqe.pointee.user_data, cqe.pointee.res, cqe.pointee.flags)
            }
            io_uring_cq_advance(ring, ready)
            total += Int(ready)
        }
    }

    // MARK: Operations. Each queues one SQE; the next submit sends it.

    @inlinable public func acceptMultishot(fd: Int32, userData: UserData) {
        let s = sqe()
        io_uring_prep_multishot_accept(s, fd, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
        io_uring_sqe_set_data64(s, userData.raw)
    }

    /// Multishot recv that picks buffers from `group`; the kernel ends it on EOF, error, cancel,
    /// an empty buffer ring, or after `limitBytes` (when not 0) have been received. The last
    /// completion lacks IORING_CQE_F_MORE.
    @inlinable public func recvMultishot(fd: Int32, group: UInt16, limitBytes: UInt32 = 0, userData: UserData) {
        let s = sqe()
        io_uring_prep_recv_multishot(s, fd, nil, 0, 0)
        weir_sqe_set_buf_group(s, group)
        if limitBytes > 0 { weir_sqe_set_recv_limit(s, limitBytes) }
        io_uring_sqe_set_data64(s, userData.raw)
    }

    @inlinable public func send(fd: Int32, buffer: UnsafeRawPointer, count: Int, userData: UserData) {
        let s = sqe()
        io_uring_prep_send(s, fd, buffer, count, Int32(MSG_NOSIGNAL))
        io_uring_sqe_set_data64(s, userData.raw)
    }

    /// Sends several buffers in one operation (a gather write). `message` and its iovecs must stay
    /// valid until the completion arrives.
    @inlinable public func sendmsg(fd: Int32, message: UnsafePointer<msghdr>, userData: UserData) {
        let s = sqe()
        io_uring_prep_sendmsg(s, fd, message, UInt32(MSG_NOSIGNAL))
        io_uring_sqe_set_data64(s, userData.raw)
    }

    /// Connect, linked to a timeout that cancels it (the connect then completes with -ECANCELED).
    /// `address` and `timeout` are read when the ring submits: keep them alive until then.
    @inlinable public func connect(fd: Int32, address: UnsafePointer<sockaddr>, length: socklen_t,
                                   timeout: UnsafeMutablePointer<__kernel_timespec>, userData: UserData, timeoutUserData: UserData) {
        // A link only holds within one submit: were the queue to fill between the two entries,
        // the connect would go alone and never time out.
        reserve(2)
        let c = sqe()
        io_uring_prep_connect(c, fd, address, length)
        io_uring_sqe_set_data64(c, userData.raw)
        weir_sqe_set_link(c)
        let t = sqe()
        io_uring_prep_link_timeout(t, timeout, 0)
        io_uring_sqe_set_data64(t, timeoutUserData.raw)
    }

    /// One-shot readiness poll: completes with the ready events.
    @inlinable public func poll(fd: Int32, events: UInt32, userData: UserData) {
        let s = sqe()
        io_uring_prep_poll_add(s, fd, events)
        io_uring_sqe_set_data64(s, userData.raw)
    }

    /// A timer: completes with -ETIME after `timeout`. `timeout` must live until the next submit.
    @inlinable public func timeout(_ timeout: UnsafeMutablePointer<__kernel_timespec>, userData: UserData) {
        let s = sqe()
        io_uring_prep_timeout(s, timeout, 0, 0)
        io_uring_sqe_set_data64(s, userData.raw)
    }

    @inlinable public func read(fd: Int32, into buffer: UnsafeMutableRawPointer, count: UInt32, userData: UserData) {
        let s = sqe()
        io_uring_prep_read(s, fd, buffer, count, 0)
        io_uring_sqe_set_data64(s, userData.raw)
    }

    /// Appends `count` bytes to a file opened with O_APPEND (offset -1: the file position).
    @inlinable public func append(fd: Int32, from buffer: UnsafeRawPointer, count: UInt32, userData: UserData) {
        let s = sqe()
        io_uring_prep_write(s, fd, buffer, count, UInt64.max)
        io_uring_sqe_set_data64(s, userData.raw)
    }

    /// Cancels the operation submitted with `target`.
    @inlinable public func cancel(_ target: UserData, on fd: Int32, userData: UserData) {
        let s = sqe()
        io_uring_prep_cancel64(s, target.raw, 0)
        io_uring_sqe_set_data64(s, userData.raw)
    }

    /// Cancels every operation pending on `fd`.
    @inlinable public func cancelAll(fd: Int32, userData: UserData) {
        let s = sqe()
        io_uring_prep_cancel_fd(s, fd, UInt32(IORING_ASYNC_CANCEL_ALL))
        io_uring_sqe_set_data64(s, userData.raw)
    }

    /// One receive into `buffer`.
    @inlinable public func recv(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, userData: UserData) {
        let s = sqe()
        io_uring_prep_recv(s, fd, buffer, count, 0)
        io_uring_sqe_set_data64(s, userData.raw)
    }

    /// Closes through the ring (IORING_OP_CLOSE, no completion unless it fails), so ending a
    /// connection costs no system call of its own: it goes with the loop turn's one submit.
    /// The number stays taken until then, and the caller has no operation pending on it.
    @inlinable public func close(fd: Int32) {
        let s = sqe()
        io_uring_prep_close(s, fd)
        weir_sqe_set_skip_success(s)
        io_uring_sqe_set_data64(s, UserData.backendInternal.raw)
    }

    /// Shuts a socket down now, synchronously. Not through the ring: the kernel runs
    /// IORING_OP_SHUTDOWN on a worker thread, so it may run after the close queued behind it
    /// and after the number went to a new connection, shutting that one down (measured: the
    /// integration tests lost requests that way).
    @inlinable public func shutdown(fd: Int32, how: Int32) { _ = Glibc.shutdown(fd, how) }

    public func makeBuffers(group: UInt16, count: Int, bufferBytes: Int) throws -> BufferRing {
        try BufferRing(ring: self, group: group, count: count, bufferBytes: bufferBytes)
    }

    /// The raw ring, for BufferRing registration.
    public var raw: UnsafeMutablePointer<io_uring> { ring }
}
