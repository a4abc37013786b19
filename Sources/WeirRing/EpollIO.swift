// The epoll backend: io_uring's completions produced from readiness with non-blocking system
// calls, for where io_uring is denied (container seccomp profiles, kernel.io_uring_disabled).
// Operations queue until submit, as on a ring; at submit each one tries its system call, and what
// would block waits for the descriptor's next edge. Every descriptor is registered once,
// edge-triggered for input, output and peer close; what its last edge said is cached (readable,
// writable) and cleared by the EAGAIN that ends a burst, so no epoll_ctl runs per operation.
import CURing
import CWeirSys
import WeirCore
#if canImport(Glibc)
import Glibc
#endif

/// Receive buffers in user space: a free stack the backend takes from, refilled at `commit`.
public final class BufferStack: ReceiveBuffers {
    public let group: UInt16
    public let count: Int
    public let bufferBytes: Int
    let storage: UnsafeMutableRawPointer
    let free: UnsafeMutablePointer<UInt16>
    var freeCount: Int
    let recycled: UnsafeMutablePointer<UInt16>
    var recycledCount = 0
    var outstandingCount = 0
    public var outstanding: Int { outstandingCount }

    init(group: UInt16, count: Int, bufferBytes: Int) throws {
        precondition(count > 0 && count <= 65536)
        self.group = group; self.count = count; self.bufferBytes = bufferBytes
        var data: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&data, Int(sysconf(Int32(_SC_PAGESIZE))), count * bufferBytes) == 0, let data else {
            throw RingError(errno: ENOMEM, call: "posix_memalign(\(count) buffers of \(bufferBytes) bytes)")
        }
        storage = data
        free = .allocate(capacity: count)
        recycled = .allocate(capacity: count)
        for i in 0..<count { free[i] = UInt16(count - 1 - i) }
        freeCount = count
    }

    deinit { Glibc.free(storage); free.deallocate(); recycled.deallocate() }

    public func pointer(_ bid: UInt16) -> UnsafeMutableRawPointer { storage + Int(bid) * bufferBytes }
    public func didTake() { outstandingCount += 1 }
    public func recycle(_ bid: UInt16) {
        recycled[recycledCount] = bid
        recycledCount += 1
        outstandingCount -= 1
    }
    @discardableResult public func commit() -> Int32 {
        let n = recycledCount
        for i in 0..<n { free[freeCount + i] = recycled[i] }
        freeCount += n
        recycledCount = 0
        return Int32(n)
    }

    /// A buffer for a receive about to run, or nil when the pool is empty.
    func take() -> UInt16? {
        guard freeCount > 0 else { return nil }
        freeCount -= 1
        return free[freeCount]
    }

    /// A buffer taken for a receive that filled none of it.
    func untake(_ bid: UInt16) {
        free[freeCount] = bid
        freeCount += 1
    }
}

public final class EpollIO: IOBackend {
    public static var kind: IOBackendKind { .epoll }
    public let setupDescription = "epoll, edge-triggered"

    /// An operation queued until the next submit.
    enum Operation {
        case accept(fd: Int32, ud: UInt64)
        case recvMultishot(fd: Int32, limit: UInt32, ud: UInt64)
        case recv(fd: Int32, buffer: UnsafeMutableRawPointer, count: Int, ud: UInt64)
        case read(fd: Int32, buffer: UnsafeMutableRawPointer, count: Int, ud: UInt64)
        case send(fd: Int32, buffer: UnsafeRawPointer, count: Int, ud: UInt64)
        case sendmsg(fd: Int32, message: UnsafePointer<msghdr>, ud: UInt64)
        case connect(fd: Int32, address: UnsafePointer<sockaddr>, length: socklen_t, nanoseconds: Int64, ud: UInt64, timeoutUD: UInt64)
        case poll(fd: Int32, events: UInt32, ud: UInt64)
        case timeout(nanoseconds: Int64, ud: UInt64)
        case append(fd: Int32, buffer: UnsafeRawPointer, count: Int, ud: UInt64)
        case cancel(target: UInt64, fd: Int32, ud: UInt64)
        case cancelAll(fd: Int32, ud: UInt64)
    }

    /// What waits for a descriptor to become readable (one at a time, as on the ring).
    enum Input {
        case none
        case accept
        /// A multishot receive into the buffer pool, with the bytes it may still take.
        case multishot(remaining: UInt32)
        case recv(UnsafeMutableRawPointer, Int)
        case read(UnsafeMutableRawPointer, Int)
    }

    /// What waits for it to become writable.
    enum Output {
        case none
        case send(UnsafeRawPointer, Int)
        case sendmsg(UnsafePointer<msghdr>)
        /// A connect in progress, and the id of the timer that cancels it.
        case connect(timer: UInt64, timeoutUD: UInt64)
    }

    struct Descriptor {
        var registered = false
        var readable = false
        var writable = false
        /// The peer closed or the socket failed: read until EOF or the error, never stop short.
        var closed = false
        var input = Input.none
        var inputUD: UInt64 = 0
        var output = Output.none
        var outputUD: UInt64 = 0
        var pollIn: UInt64 = 0
        var pollOut: UInt64 = 0
        var hasPollIn = false
        var hasPollOut = false
        /// In `runnable`: stopped at its fair share with input still readable.
        var runnable = false
    }

    struct Timer {
        var deadline: Int64
        var id: UInt64
        var ud: UInt64
        /// The connect a link timeout cancels, or -1 for a plain timeout.
        var fd: Int32
    }

    struct Completion { var ud: UInt64; var res: Int32; var flags: UInt32 }

    let epfd: Int32
    var descriptors: UnsafeMutablePointer<Descriptor>
    var capacity: Int
    var queued: [Operation] = []
    var completions: [Completion] = []
    var delivering: [Completion] = []
    var runnable: [Int32] = []
    var stillRunnable: [Int32] = []
    /// A binary min-heap on deadline.
    var timers: [Timer] = []
    var nextTimerID: UInt64 = 1
    var pool: BufferStack?
    var waitFailed = false
    let eventFDs: UnsafeMutablePointer<Int32>
    let eventMasks: UnsafeMutablePointer<UInt32>
    static let eventCapacity: Int32 = 256
    /// Receives one descriptor may run per loop turn before the others get theirs.
    static let fairShare = 16

    public init(entries: UInt32) throws {
        epfd = weir_epoll_create()
        guard epfd >= 0 else { throw RingError(errno: errno, call: "epoll_create1") }
        capacity = 1024
        descriptors = .allocate(capacity: capacity)
        descriptors.initialize(repeating: Descriptor(), count: capacity)
        eventFDs = .allocate(capacity: Int(EpollIO.eventCapacity))
        eventMasks = .allocate(capacity: Int(EpollIO.eventCapacity))
        queued.reserveCapacity(Int(entries))
        completions.reserveCapacity(Int(entries))
        delivering.reserveCapacity(Int(entries))
        timers.reserveCapacity(256)
    }

    deinit {
        Glibc.close(epfd)
        descriptors.deinitialize(count: capacity)
        descriptors.deallocate()
        eventFDs.deallocate()
        eventMasks.deallocate()
    }

    public func makeBuffers(group: UInt16, count: Int, bufferBytes: Int) throws -> BufferStack {
        let p = try BufferStack(group: group, count: count, bufferBytes: bufferBytes)
        pool = p
        return p
    }

    // MARK: Queueing (nothing runs before submit)

    public func reserve(_ count: UInt32) {}
    public func acceptMultishot(fd: Int32, userData: UserData) { queued.append(.accept(fd: fd, ud: userData.raw)) }
    public func recvMultishot(fd: Int32, group: UInt16, limitBytes: UInt32, userData: UserData) {
        queued.append(.recvMultishot(fd: fd, limit: limitBytes, ud: userData.raw))
    }
    public func recv(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, userData: UserData) {
        queued.append(.recv(fd: fd, buffer: buffer, count: count, ud: userData.raw))
    }
    public func send(fd: Int32, buffer: UnsafeRawPointer, count: Int, userData: UserData) {
        queued.append(.send(fd: fd, buffer: buffer, count: count, ud: userData.raw))
    }
    public func sendmsg(fd: Int32, message: UnsafePointer<msghdr>, userData: UserData) {
        queued.append(.sendmsg(fd: fd, message: message, ud: userData.raw))
    }
    public func connect(fd: Int32, address: UnsafePointer<sockaddr>, length: socklen_t,
                        timeout: UnsafeMutablePointer<__kernel_timespec>, userData: UserData, timeoutUserData: UserData) {
        let ns = Int64(timeout.pointee.tv_sec) * 1_000_000_000 + Int64(timeout.pointee.tv_nsec)
        queued.append(.connect(fd: fd, address: address, length: length, nanoseconds: ns, ud: userData.raw, timeoutUD: timeoutUserData.raw))
    }
    public func poll(fd: Int32, events: UInt32, userData: UserData) { queued.append(.poll(fd: fd, events: events, ud: userData.raw)) }
    public func timeout(_ timeout: UnsafeMutablePointer<__kernel_timespec>, userData: UserData) {
        let ns = Int64(timeout.pointee.tv_sec) * 1_000_000_000 + Int64(timeout.pointee.tv_nsec)
        queued.append(.timeout(nanoseconds: ns, ud: userData.raw))
    }
    public func read(fd: Int32, into buffer: UnsafeMutableRawPointer, count: UInt32, userData: UserData) {
        queued.append(.read(fd: fd, buffer: buffer, count: Int(count), ud: userData.raw))
    }
    public func append(fd: Int32, from buffer: UnsafeRawPointer, count: UInt32, userData: UserData) {
        queued.append(.append(fd: fd, buffer: buffer, count: Int(count), ud: userData.raw))
    }
    public func cancel(_ target: UserData, on fd: Int32, userData: UserData) { queued.append(.cancel(target: target.raw, fd: fd, ud: userData.raw)) }
    public func cancelAll(fd: Int32, userData: UserData) { queued.append(.cancelAll(fd: fd, ud: userData.raw)) }

    public func close(fd: Int32) {
        // Operations still pending end with -ECANCELED, as a shut-down socket's do on the ring;
        // then its state is forgotten, so the number reused for another socket starts fresh.
        if fd >= 0 && Int(fd) < capacity {
            _ = cancelOperations(on: fd)
            descriptors[Int(fd)] = Descriptor()
        }
        _ = Glibc.close(fd)
    }

    // MARK: Submit, wait, deliver

    @discardableResult public func submit() -> Int32 {
        let n = Int32(queued.count)
        startQueued()
        return n
    }

    @discardableResult public func submitAndWait(timeoutNanoseconds: Int64) -> Int32 {
        startQueued()
        runRunnable()
        var wait = completions.isEmpty && runnable.isEmpty ? max(0, timeoutNanoseconds) : 0
        if let first = timers.first { wait = min(wait, max(0, first.deadline - monotonicNanoseconds())) }
        let n = weir_epoll_wait(epfd, eventFDs, eventMasks, EpollIO.eventCapacity, wait)
        if n > 0 {
            for i in 0..<Int(n) { ready(eventFDs[i], eventMasks[i]) }
        } else if n < 0 && !waitFailed {
            // Not expected (epoll_wait is allowed wherever epoll_create1 was): say it once.
            waitFailed = true
            Log.error("epoll_wait failed: \(String(cString: strerror(-n))); this shard's I/O cannot make progress")
        }
        fireTimers()
        return Int32(completions.count)
    }

    @discardableResult public func forEachCompletion(_ body: (UInt64, Int32, UInt32) -> Void) -> Int {
        var total = 0
        while !completions.isEmpty {
            swap(&completions, &delivering)
            for c in delivering { body(c.ud, c.res, c.flags) }
            total += delivering.count
            delivering.removeAll(keepingCapacity: true)
        }
        return total
    }

    @inline(__always) func complete(_ ud: UInt64, _ res: Int32, _ flags: UInt32 = 0) {
        completions.append(Completion(ud: ud, res: res, flags: flags))
    }

    // MARK: Starting operations

    func startQueued() {
        var i = 0
        // Operations queued while these start (none today) wait for the next submit.
        let n = queued.count
        while i < n { start(queued[i]); i += 1 }
        if n == queued.count { queued.removeAll(keepingCapacity: true) } else { queued.removeFirst(n) }
    }

    func start(_ op: Operation) {
        switch op {
        // accept4 and read(2) have no MSG_DONTWAIT: their descriptors go non-blocking.
        case .accept(let fd, let ud): startInput(fd, .accept, ud, nonblocking: true)
        case .recvMultishot(let fd, let limit, let ud): startInput(fd, .multishot(remaining: limit == 0 ? .max : limit), ud)
        case .recv(let fd, let buffer, let count, let ud): startInput(fd, .recv(buffer, count), ud)
        case .read(let fd, let buffer, let count, let ud): startInput(fd, .read(buffer, count), ud, nonblocking: true)
        case .send(let fd, let buffer, let count, let ud): startOutput(fd, .send(buffer, count), ud)
        case .sendmsg(let fd, let message, let ud): startOutput(fd, .sendmsg(message), ud)
        case .connect(let fd, let address, let length, let ns, let ud, let timeoutUD):
            guard let d = watch(fd, nonblocking: true) else { complete(ud, -errno); return complete(timeoutUD, -ECANCELED) }
            if Glibc.connect(fd, address, length) == 0 { complete(ud, 0); return complete(timeoutUD, -ECANCELED) }
            let e = errno
            guard e == EINPROGRESS else { complete(ud, -e); return complete(timeoutUD, -ECANCELED) }
            let id = addTimer(after: ns, ud: timeoutUD, fd: fd)
            d.pointee.output = .connect(timer: id, timeoutUD: timeoutUD)
            d.pointee.outputUD = ud
            // The edge that says the handshake ended is still to come.
            d.pointee.writable = false
        case .poll(let fd, let events, let ud):
            guard let d = watch(fd, nonblocking: false) else { return complete(ud, -errno) }
            // Readiness now, from the kernel rather than the cache: the caller polls after its own
            // system call (splice) found nothing to do, which the cache does not see.
            let now = weir_poll_now(fd, Int16(truncatingIfNeeded: events))
            if now != 0 { return complete(ud, Int32(now)) }
            if events & UInt32(POLLIN) != 0 { d.pointee.pollIn = ud; d.pointee.hasPollIn = true; d.pointee.readable = false }
            if events & UInt32(POLLOUT) != 0 { d.pointee.pollOut = ud; d.pointee.hasPollOut = true; d.pointee.writable = false }
        case .timeout(let ns, let ud):
            _ = addTimer(after: ns, ud: ud, fd: -1)
        case .append(let fd, let buffer, let count, let ud):
            // Files are always ready; the write runs now.
            let n = Glibc.write(fd, buffer, count)
            complete(ud, n >= 0 ? Int32(n) : -errno)
        case .cancel(let target, let fd, let ud):
            complete(ud, cancel(target, on: fd) ? 0 : -ENOENT)
        case .cancelAll(let fd, let ud):
            let n = fd >= 0 && Int(fd) < capacity ? cancelOperations(on: fd) : 0
            complete(ud, n > 0 ? Int32(n) : -ENOENT)
        }
    }

    func startInput(_ fd: Int32, _ input: Input, _ ud: UInt64, nonblocking: Bool = false) {
        guard let d = watch(fd, nonblocking: nonblocking) else { return complete(ud, -errno) }
        d.pointee.input = input
        d.pointee.inputUD = ud
        runInput(fd, d)
    }

    func startOutput(_ fd: Int32, _ output: Output, _ ud: UInt64) {
        guard let d = watch(fd, nonblocking: false) else { return complete(ud, -errno) }
        d.pointee.output = output
        d.pointee.outputUD = ud
        runOutput(fd, d)
    }

    /// The descriptor's state, registering it with epoll on its first operation.
    func watch(_ fd: Int32, nonblocking: Bool) -> UnsafeMutablePointer<Descriptor>? {
        guard fd >= 0 else { errno = EBADF; return nil }
        if Int(fd) >= capacity { grow(to: Int(fd) + 1) }
        let d = descriptors + Int(fd)
        if !d.pointee.registered {
            if nonblocking { _ = weir_set_nonblock(fd) }
            guard weir_epoll_add(epfd, fd) == 0 else { return nil }
            d.pointee.registered = true
            // Unknown until tried: the first system call finds out.
            d.pointee.readable = true
            d.pointee.writable = true
        }
        return d
    }

    func grow(to needed: Int) {
        var n = capacity
        while n < needed { n *= 2 }
        let bigger = UnsafeMutablePointer<Descriptor>.allocate(capacity: n)
        bigger.moveInitialize(from: descriptors, count: capacity)
        (bigger + capacity).initialize(repeating: Descriptor(), count: n - capacity)
        descriptors.deallocate()
        descriptors = bigger
        capacity = n
    }

    // MARK: Readiness

    func ready(_ fd: Int32, _ events: UInt32) {
        guard fd >= 0 && Int(fd) < capacity else { return }
        let d = descriptors + Int(fd)
        guard d.pointee.registered else { return }
        if events & weir_epoll_closed() != 0 { d.pointee.closed = true }
        if events & (weir_epoll_in() | weir_epoll_closed()) != 0 {
            d.pointee.readable = true
            if d.pointee.hasPollIn {
                d.pointee.hasPollIn = false
                complete(d.pointee.pollIn, Int32(POLLIN) | (events & weir_epoll_err() != 0 ? Int32(POLLHUP) : 0))
            }
            runInput(fd, d)
        }
        if events & (weir_epoll_out() | weir_epoll_err()) != 0 {
            d.pointee.writable = true
            if case .connect(_, let timeoutUD) = d.pointee.output {
                let e = weir_socket_error(fd)
                if e != 0 || events & weir_epoll_out() != 0 {
                    // Its timer stays in the heap and is dropped when due (its id no longer matches).
                    d.pointee.output = .none
                    complete(d.pointee.outputUD, e == 0 ? 0 : -e)
                    complete(timeoutUD, -ECANCELED)
                }
            }
            if d.pointee.hasPollOut {
                d.pointee.hasPollOut = false
                complete(d.pointee.pollOut, Int32(POLLOUT) | (events & weir_epoll_err() != 0 ? Int32(POLLHUP) : 0))
            }
            runOutput(fd, d)
        }
    }

    func runRunnable() {
        guard !runnable.isEmpty else { return }
        swap(&runnable, &stillRunnable)
        for fd in stillRunnable {
            let d = descriptors + Int(fd)
            // Closed since (its state was reset), or listed twice after its number was reused.
            guard d.pointee.runnable else { continue }
            d.pointee.runnable = false
            if d.pointee.registered && d.pointee.readable { runInput(fd, d) }
        }
        stillRunnable.removeAll(keepingCapacity: true)
    }

    func runInput(_ fd: Int32, _ d: UnsafeMutablePointer<Descriptor>) {
        guard d.pointee.readable else { return }
        let ud = d.pointee.inputUD
        switch d.pointee.input {
        case .none:
            return
        case .accept:
            for _ in 0..<EpollIO.fairShare {
                let s = weir_accept_nonblock(fd)
                if s >= 0 { complete(ud, s, weir_cqe_f_more()); continue }
                let e = errno
                if e == EAGAIN || e == EWOULDBLOCK { d.pointee.readable = false; return }
                if e == EINTR || e == ECONNABORTED { continue }
                d.pointee.input = .none
                return complete(ud, -e)
            }
            markRunnable(fd, d)
        case .multishot(var remaining):
            guard let pool else { d.pointee.input = .none; return complete(ud, -ENOBUFS) }
            for _ in 0..<EpollIO.fairShare {
                guard let bid = pool.take() else { d.pointee.input = .none; return complete(ud, -ENOBUFS) }
                let want = min(pool.bufferBytes, Int(remaining))
                let n = Glibc.recv(fd, pool.pointer(bid), want, Int32(MSG_DONTWAIT))
                if n > 0 {
                    remaining -= UInt32(n)
                    let flags = weir_cqe_f_buffer() | UInt32(bid) << weir_cqe_buffer_shift()
                    if remaining == 0 {
                        d.pointee.input = .none
                        return complete(ud, Int32(n), flags)
                    }
                    d.pointee.input = .multishot(remaining: remaining)
                    complete(ud, Int32(n), flags | weir_cqe_f_more())
                    // A short read took all there was; the next arrival brings a new edge (but a
                    // close already seen brings none, so then read on to the EOF).
                    if n < want && !d.pointee.closed { d.pointee.readable = false; return }
                    continue
                }
                pool.untake(bid)
                if n == 0 { d.pointee.input = .none; return complete(ud, 0) }
                let e = errno
                if e == EAGAIN || e == EWOULDBLOCK { d.pointee.readable = false; return }
                if e == EINTR { continue }
                d.pointee.input = .none
                return complete(ud, -e)
            }
            markRunnable(fd, d)
        case .recv(let buffer, let count):
            let n = Glibc.recv(fd, buffer, count, Int32(MSG_DONTWAIT))
            finishOneShot(fd, d, ud, n)
        case .read(let buffer, let count):
            let n = Glibc.read(fd, buffer, count)
            finishOneShot(fd, d, ud, n)
        }
    }

    func finishOneShot(_ fd: Int32, _ d: UnsafeMutablePointer<Descriptor>, _ ud: UInt64, _ n: Int) {
        if n >= 0 { d.pointee.input = .none; return complete(ud, Int32(n)) }
        let e = errno
        if e == EAGAIN || e == EWOULDBLOCK { d.pointee.readable = false; return }
        if e == EINTR { return markRunnable(fd, d) }
        d.pointee.input = .none
        complete(ud, -e)
    }

    func markRunnable(_ fd: Int32, _ d: UnsafeMutablePointer<Descriptor>) {
        guard !d.pointee.runnable else { return }
        d.pointee.runnable = true
        runnable.append(fd)
    }

    func runOutput(_ fd: Int32, _ d: UnsafeMutablePointer<Descriptor>) {
        guard d.pointee.writable else { return }
        let n: Int
        var want = 0
        switch d.pointee.output {
        case .none, .connect:
            return
        case .send(let buffer, let count):
            want = count
            n = Glibc.send(fd, buffer, count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
        case .sendmsg(let message):
            for i in 0..<Int(message.pointee.msg_iovlen) { want += message.pointee.msg_iov[i].iov_len }
            n = Glibc.sendmsg(fd, message, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
        }
        let ud = d.pointee.outputUD
        if n >= 0 {
            d.pointee.output = .none
            // A short send filled the socket buffer: the next edge says when there is room.
            if n < want { d.pointee.writable = false }
            return complete(ud, Int32(n))
        }
        let e = errno
        if e == EAGAIN || e == EWOULDBLOCK { d.pointee.writable = false; return }
        if e == EINTR { return runOutput(fd, d) }
        d.pointee.output = .none
        complete(ud, -e)
    }

    // MARK: Cancellation

    /// Ends the pending operation submitted as `target` on `fd` (-1: a timer) with -ECANCELED.
    func cancel(_ target: UInt64, on fd: Int32) -> Bool {
        if fd >= 0 && Int(fd) < capacity {
            let d = descriptors + Int(fd)
            guard d.pointee.registered else { return false }
            if !isNone(d.pointee.input) && d.pointee.inputUD == target { endInput(d); return true }
            if !isNone(d.pointee.output) && d.pointee.outputUD == target { endOutput(d); return true }
            if d.pointee.hasPollIn && d.pointee.pollIn == target { d.pointee.hasPollIn = false; complete(target, -ECANCELED); return true }
            if d.pointee.hasPollOut && d.pointee.pollOut == target { d.pointee.hasPollOut = false; complete(target, -ECANCELED); return true }
            return false
        }
        // Timers are few (retry backoffs and the tick); a cancelled one is found by its user data.
        if let i = timers.firstIndex(where: { $0.ud == target && $0.fd < 0 }) {
            removeTimer(at: i)
            complete(target, -ECANCELED)
            return true
        }
        return false
    }

    /// Ends every operation pending on `fd` with -ECANCELED; returns how many.
    func cancelOperations(on fd: Int32) -> Int {
        let d = descriptors + Int(fd)
        var n = 0
        if !isNone(d.pointee.input) { endInput(d); n += 1 }
        if !isNone(d.pointee.output) { endOutput(d); n += 1 }
        if d.pointee.hasPollIn { d.pointee.hasPollIn = false; complete(d.pointee.pollIn, -ECANCELED); n += 1 }
        if d.pointee.hasPollOut { d.pointee.hasPollOut = false; complete(d.pointee.pollOut, -ECANCELED); n += 1 }
        return n
    }

    func isNone(_ i: Input) -> Bool { if case .none = i { true } else { false } }
    func isNone(_ o: Output) -> Bool { if case .none = o { true } else { false } }

    func endInput(_ d: UnsafeMutablePointer<Descriptor>) {
        d.pointee.input = .none
        complete(d.pointee.inputUD, -ECANCELED)
    }

    func endOutput(_ d: UnsafeMutablePointer<Descriptor>) {
        if case .connect(_, let timeoutUD) = d.pointee.output { complete(timeoutUD, -ECANCELED) }
        d.pointee.output = .none
        complete(d.pointee.outputUD, -ECANCELED)
    }

    // MARK: Timers

    func addTimer(after nanoseconds: Int64, ud: UInt64, fd: Int32) -> UInt64 {
        let id = nextTimerID
        nextTimerID &+= 1
        timers.append(Timer(deadline: monotonicNanoseconds() + max(0, nanoseconds), id: id, ud: ud, fd: fd))
        siftUp(timers.count - 1)
        return id
    }

    func removeTimer(at i: Int) {
        let last = timers.count - 1
        if i != last { timers.swapAt(i, last) }
        timers.removeLast()
        if i < timers.count { siftDown(i); siftUp(i) }
    }

    func fireTimers() {
        guard !timers.isEmpty else { return }
        let now = monotonicNanoseconds()
        while let t = timers.first, t.deadline <= now {
            removeTimer(at: 0)
            if t.fd >= 0 {
                // A connect's link timeout: the connect ends with -ECANCELED, the timer with
                // -ETIME. A connect that ended first completed its timer then (-ECANCELED).
                let d = descriptors + Int(t.fd)
                guard case .connect(let id, _) = d.pointee.output, id == t.id else { continue }
                d.pointee.output = .none
                complete(d.pointee.outputUD, -ECANCELED)
            }
            complete(t.ud, -ETIME)
        }
    }

    func siftUp(_ index: Int) {
        var i = index
        while i > 0 {
            let parent = (i - 1) / 2
            guard timers[i].deadline < timers[parent].deadline else { return }
            timers.swapAt(i, parent)
            i = parent
        }
    }

    func siftDown(_ index: Int) {
        var i = index
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < timers.count && timers[l].deadline < timers[m].deadline { m = l }
            if r < timers.count && timers[r].deadline < timers[m].deadline { m = r }
            if m == i { return }
            timers.swapAt(i, m)
            i = m
        }
    }
}
