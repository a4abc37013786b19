// The simulated backend: a kernel in memory, with virtual sockets, a virtual clock and faults
// drawn from a seed, so a whole shard runs its real session code through orderings no test on
// a real kernel reaches, and a failing seed replays exactly. The simulation harness (WeirProxy's
// Simulation) plays the clients and upstreams through `SimKernel`'s world-side calls; the shard
// reaches it through `SimIO`, the IOBackend. Single-threaded: a shard and its world run on the
// caller's thread, one step at a time.
import CURing
import WeirCore
#if canImport(Glibc)
import Glibc
#endif

/// How often the simulated kernel misbehaves (each a probability per chance to).
public struct SimFaults: Sendable {
    /// A send takes fewer bytes than offered.
    public var shortSend = 0.3
    /// A ready operation waits another turn (reorders completions across sockets).
    public var delay = 0.3
    /// A connect to a listening address fails (refused) or never completes (the timeout ends it).
    public var connectRefused = 0.05
    public var connectHangs = 0.03
    /// Some of the pool's free buffers go out of reach for up to `poolHeldSteps` steps (as if
    /// still on their way back to the kernel), so receives starve, stay starved while
    /// connections come and go, and the shard's starved list is exercised; they come back
    /// through a commit, as recycled buffers do.
    public var poolHeldBack = 0.05
    public var poolHeldSteps = 40
    public init() {}
}

/// Bytes that steer a simulation instead of a seed alone (a fuzzer's input): each draw of
/// chance takes the next byte into the generator's state, in the order the simulation draws, so
/// a change to one byte changes the choices from that draw on; past the end, the seed goes on.
public final class SimTape {
    let bytes: [UInt8]
    var at = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
}

/// SplitMix64: the simulation's one source of chance, so a seed replays exactly.
public struct SimRandom: @unchecked Sendable {
    public var state: UInt64
    public let tape: SimTape?
    public init(seed: UInt64, tape: SimTape? = nil) { state = seed; self.tape = tape }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        if let t = tape, t.at < t.bytes.count {
            state = (state ^ UInt64(t.bytes[t.at])) &* 0xD6E8_FEB8_6659_FD93
            t.at += 1
        }
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    public mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }
    public mutating func chance(_ p: Double) -> Bool { Double(next() % 1_000_000) < p * 1_000_000 }
    /// `n` bytes: straight from the tape while it lasts (a fuzzer writes them), then random.
    public mutating func bytes(_ n: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(n)
        while out.count < n {
            if let t = tape, t.at < t.bytes.count { out.append(t.bytes[t.at]); t.at += 1 } else { out.append(UInt8(truncatingIfNeeded: next())) }
        }
        return out
    }
}

public final class SimKernel {
    /// The kernel the next `SimIO` (created by a shard) serves.
    nonisolated(unsafe) public static var current: SimKernel?

    public var random: SimRandom
    public var faults: SimFaults
    /// Virtual time, nanoseconds; moves only when nothing is ready (or the world moves it).
    public private(set) var now: Int64 = 1_000_000_000

    final class Socket {
        enum Kind { case unconnected, listener, stream, pipeRead, pipeWrite }
        var kind: Kind
        var address: SocketAddress?
        /// Streams: the other end's fd (-1 once it is gone), bytes waiting to be read, and what
        /// ends them: the peer's FIN (after the bytes) or a reset.
        var peer: Int32 = -1
        var inbox: [UInt8] = []
        var finReceived = false
        var reset = false
        var writeShut = false
        var peerAddress: SocketAddress?
        var localAddress: SocketAddress?
        /// Accepted streams: where a simulated NAT redirect says the client was going.
        var originalDestination: SocketAddress?
        /// Upstream sockets: the source address they were bound to.
        var boundSource: SocketAddress?
        /// Listeners: connections waiting for accept.
        var backlog: [Int32] = []
        /// Pipes: what the read end holds at most (its inbox holds the bytes).
        var capacity = 0
        /// Owned by the world (a simulated client or upstream) rather than the shard.
        var world: Bool
        init(kind: Kind, world: Bool) { self.kind = kind; self.world = world }
    }

    enum Op {
        case accept(fd: Int32, ud: UInt64)
        case recvMultishot(fd: Int32, remaining: UInt32, ud: UInt64)
        case recv(fd: Int32, buffer: UnsafeMutableRawPointer, count: Int, ud: UInt64)
        case send(fd: Int32, iov: [(UnsafeRawPointer, Int)], ud: UInt64)
        case connect(fd: Int32, address: SocketAddress, ud: UInt64, timeoutUD: UInt64, deadline: Int64, hangs: Bool)
        case timeout(deadline: Int64, ud: UInt64)
        case read(fd: Int32, ud: UInt64)
        case poll(fd: Int32, events: UInt32, ud: UInt64)

        var ud: UInt64 {
            switch self {
            case .accept(_, let ud), .recvMultishot(_, _, let ud), .recv(_, _, _, let ud), .send(_, _, let ud),
                 .connect(_, _, let ud, _, _, _), .timeout(_, let ud), .read(_, let ud), .poll(_, _, let ud): ud
            }
        }
        var fd: Int32 {
            switch self {
            case .accept(let fd, _), .recvMultishot(let fd, _, _), .recv(let fd, _, _, _), .send(let fd, _, _),
                 .connect(let fd, _, _, _, _, _), .read(let fd, _), .poll(let fd, _, _): fd
            case .timeout: -1
            }
        }
        /// Takes bytes from its socket: at most one such operation may wait on a socket (the
        /// kernel would allow two; for Weir a second one is always a bug: bytes would go to two
        /// owners, in no defined order).
        var reads: Bool {
            switch self {
            case .recvMultishot, .recv: true
            case .poll(_, let events, _): events & UInt32(POLLIN) != 0
            default: false
            }
        }
    }

    var sockets: [Int32: Socket] = [:]
    var nextFD: Int32 = 1 << 20
    var listeners: [SocketAddress: Int32] = [:]
    var queued: [Op] = []
    var pending: [Op] = []
    var completions: [(UInt64, Int32, UInt32)] = []
    var cancels: [(target: UInt64, fd: Int32, all: Bool, ud: UInt64)] = []
    var pool: SimBuffers?
    var held: [UInt16] = []
    var heldSteps = 0
    /// Shard-side sockets opened and not closed: the harness checks none is left.
    public private(set) var shardSockets = 0

    public init(seed: UInt64, faults: SimFaults = SimFaults(), tape: SimTape? = nil) {
        random = SimRandom(seed: seed, tape: tape)
        self.faults = faults
    }

    func chance(_ p: Double) -> Bool { random.chance(p) }

    func socket(_ fd: Int32) -> Socket? { sockets[fd] }

    func newFD(_ s: Socket) -> Int32 {
        let fd = nextFD
        nextFD += 1
        sockets[fd] = s
        if !s.world { shardSockets += 1 }
        return fd
    }

    // MARK: The world's side (clients and upstreams the harness plays)

    /// A listening address the shard accepts on (its listener's socket) or the world serves.
    public func listen(_ address: SocketAddress, world: Bool) -> Int32 {
        let s = Socket(kind: .listener, world: world)
        s.address = address
        let fd = newFD(s)
        listeners[address] = fd
        return fd
    }

    /// A world client connects to `address`: the connection waits in that listener's backlog.
    /// `originalDestination`: the connection looks redirected there (SO_ORIGINAL_DST).
    public func connect(to address: SocketAddress, from client: SocketAddress, originalDestination: SocketAddress? = nil) -> Int32? {
        guard let lfd = listeners[address], let l = sockets[lfd] else { return nil }
        let (a, b) = pair(worldEnd: true, otherWorld: l.world, local: client, remote: address)
        sockets[b]?.originalDestination = originalDestination
        l.backlog.append(b)
        return a
    }

    /// Connections waiting on a world listener, taken.
    public func accept(_ listener: Int32) -> Int32? {
        guard let l = sockets[listener], !l.backlog.isEmpty else { return nil }
        return l.backlog.removeFirst()
    }

    /// Two connected stream ends; the first is the world's when `worldEnd`.
    func pair(worldEnd: Bool, otherWorld: Bool, local: SocketAddress, remote: SocketAddress) -> (Int32, Int32) {
        let a = Socket(kind: .stream, world: worldEnd), b = Socket(kind: .stream, world: otherWorld)
        a.peerAddress = remote
        b.peerAddress = local
        a.localAddress = local
        b.localAddress = remote
        let fa = newFD(a), fb = newFD(b)
        a.peer = fb
        b.peer = fa
        return (fa, fb)
    }

    /// Bytes a world socket can read now (taken), whether the peer finished, whether it reset.
    public func read(_ fd: Int32, max: Int) -> (bytes: [UInt8], ended: Bool, reset: Bool) {
        guard let s = sockets[fd] else { return ([], true, true) }
        let n = min(max, s.inbox.count)
        let bytes = Array(s.inbox.prefix(n))
        s.inbox.removeFirst(n)
        return (bytes, s.inbox.isEmpty && s.finReceived, s.reset)
    }

    /// Writes from a world socket to its peer; false when the peer is gone or reset.
    @discardableResult public func write(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        guard let s = sockets[fd], !s.reset, !s.writeShut, let p = sockets[s.peer] else { return false }
        p.inbox += bytes
        return true
    }

    public func shutdownWrite(_ fd: Int32) {
        guard let s = sockets[fd], !s.writeShut else { return }
        s.writeShut = true
        if let p = sockets[s.peer] { p.finReceived = true }
    }

    /// Resets a connection from the world's end (RST: both ends fail).
    public func reset(_ fd: Int32) {
        guard let s = sockets[fd] else { return }
        if let p = sockets[s.peer] { p.reset = true; p.peer = -1 }
        closeSocket(fd)
    }

    public func closeWorld(_ fd: Int32) {
        guard let s = sockets[fd] else { return }
        if let p = sockets[s.peer] { p.finReceived = true; p.peer = -1 }
        closeSocket(fd)
    }

    func closeSocket(_ fd: Int32) {
        guard let s = sockets.removeValue(forKey: fd) else { return }
        if !s.world { shardSockets -= 1 }
        if s.kind == .listener, let a = s.address, listeners[a] == fd { listeners[a] = nil }
        // Connections never accepted go with their listener.
        for b in s.backlog { closeWorldOrShard(b) }
    }

    func closeWorldOrShard(_ fd: Int32) {
        guard let s = sockets[fd] else { return }
        if let p = sockets[s.peer] { p.reset = true; p.peer = -1 }
        closeSocket(fd)
    }

    /// Whether an operation on `fd` that `matches` is queued or pending.
    func waiting(on fd: Int32, _ matches: (Op) -> Bool = { _ in true }) -> Bool {
        pending.contains { $0.fd == fd && matches($0) } || queued.contains { $0.fd == fd && matches($0) }
    }

    /// Whether an operation that takes bytes from `fd` is queued or pending.
    func readArmed(on fd: Int32) -> Bool { waiting(on: fd) { $0.reads } }

    /// Queues an operation from the shard, refusing a second reader of one socket.
    func queue(_ op: Op) {
        switch op {
        case .timeout, .read: break  // timers; the wake-up eventfd (a real one)
        default:
            // EBADF from a real kernel: for Weir always a bug (a stale slot's descriptor, or -1).
            precondition(sockets[op.fd].map { !$0.world } ?? false, "an operation on fd \(op.fd), which the shard does not hold")
        }
        precondition(!op.reads || !readArmed(on: op.fd), "a second receive armed on fd \(op.fd) while one waits")
        // Two sends on one socket at once would interleave their bytes in whatever order they run.
        if case .send = op {
            precondition(!waiting(on: op.fd) { if case .send = $0 { true } else { false } }, "a second send queued on fd \(op.fd) while one is in flight")
        }
        queued.append(op)
    }

    /// A pipe of the splice path, holding up to a random few KiB so it fills and drains often.
    func makePipe() -> (Int32, Int32) {
        let r = Socket(kind: .pipeRead, world: false), w = Socket(kind: .pipeWrite, world: false)
        r.capacity = 1 + random.below(16 << 10)
        let fr = newFD(r), fw = newFD(w)
        w.peer = fr
        r.peer = fw
        return (fr, fw)
    }

    /// splice(2) between a stream socket and a pipe, non-blocking, in pieces of any size.
    func splice(from src: Int32, to dst: Int32, count: Int) -> Int {
        guard let s = sockets[src], let d = sockets[dst] else { return -Int(EBADF) }
        switch (s.kind, d.kind) {
        case (.stream, .pipeWrite):
            precondition(!readArmed(on: src), "fd \(src) spliced while a receive waits on it")
            if s.reset { return -Int(ECONNRESET) }
            guard let r = sockets[d.peer] else { return -Int(EPIPE) }
            if s.inbox.isEmpty { return s.finReceived || s.peer < 0 ? 0 : -Int(EAGAIN) }
            let room = r.capacity - r.inbox.count
            guard room > 0, count > 0 else { return -Int(EAGAIN) }
            let n = 1 + random.below(min(count, s.inbox.count, room))
            r.inbox += s.inbox.prefix(n)
            s.inbox.removeFirst(n)
            return n
        case (.pipeRead, .stream):
            if d.reset { return -Int(ECONNRESET) }
            guard !d.writeShut, let p = sockets[d.peer] else { return -Int(EPIPE) }
            guard !s.inbox.isEmpty, count > 0 else { return -Int(EAGAIN) }
            let most = min(count, s.inbox.count)
            let n = chance(faults.shortSend) ? 1 + random.below(most) : most
            p.inbox += s.inbox.prefix(n)
            s.inbox.removeFirst(n)
            return n
        default:
            preconditionFailure("splice from a \(s.kind) socket to a \(d.kind) one")
        }
    }

    /// Moves virtual time on (the world waits).
    public func advance(by nanoseconds: Int64) { now += max(0, nanoseconds) }

    // MARK: The shard's side (through SimIO)

    func submit() {
        // Cancels act on what was pending before them, in order.
        pending += queued
        queued.removeAll(keepingCapacity: true)
        for c in cancels {
            var found = 0
            pending.removeAll { op in
                let hit = c.all ? (op.fd == c.fd && c.fd >= 0) : op.ud == c.target
                if hit {
                    found += 1
                    completions.append((op.ud, -ECANCELED, 0))
                    if case .connect(_, _, _, let tud, _, _) = op { completions.append((tud, -ECANCELED, 0)) }
                }
                return hit
            }
            completions.append((c.ud, found > 0 ? Int32(found) : -ENOENT, 0))
        }
        cancels.removeAll()
    }

    /// Runs what is ready (each ready operation may wait a turn, by chance); when nothing
    /// completed, moves time to the next deadline (at most `wait`) and fires what is due.
    func step(wait: Int64) {
        submit()
        if let pool {
            if held.isEmpty && chance(faults.poolHeldBack) {
                held = pool.holdBack(random.below(pool.count + 1))
                heldSteps = 1 + random.below(faults.poolHeldSteps)
            } else if !held.isEmpty {
                heldSteps -= 1
                if heldSteps <= 0 { pool.giveBack(held); held = [] }
            }
        }
        var order = Array(pending.indices)
        for i in order.indices.reversed() { order.swapAt(i, Int(random.next() % UInt64(i + 1))) }
        var keep = [Bool](repeating: true, count: pending.count)
        var replace: [Int: Op] = [:]
        for i in order {
            let op = pending[i]
            if case .timeout = op { continue }
            if case .connect = op { } else if chance(faults.delay) { continue }
            switch run(op) {
            case .waiting: break
            case .done: keep[i] = false
            case .continues(let next): replace[i] = next
            }
        }
        var next: [Op] = []
        for i in pending.indices where keep[i] { next.append(replace[i] ?? pending[i]) }
        pending = next
        if completions.isEmpty {
            let deadlines = pending.compactMap { op -> Int64? in
                switch op {
                case .timeout(let d, _): d
                case .connect(_, _, _, _, let d, _): d
                default: nil
                }
            }
            let target = min(now + max(0, wait), deadlines.min() ?? .max)
            if target > now { now = target }
        }
        fireTimers()
    }

    func fireTimers() {
        pending.removeAll { op in
            switch op {
            case .timeout(let d, let ud) where d <= now:
                completions.append((ud, -ETIME, 0)); return true
            case .connect(_, _, let ud, let tud, let d, _) where d <= now:
                completions.append((ud, -ECANCELED, 0)); completions.append((tud, -ETIME, 0)); return true
            default: return false
            }
        }
    }

    enum Outcome { case waiting, done, continues(Op) }

    func run(_ op: Op) -> Outcome {
        switch op {
        case .accept(let fd, let ud):
            guard let l = sockets[fd] else { completions.append((ud, -EBADF, 0)); return .done }
            guard !l.backlog.isEmpty else { return .waiting }
            completions.append((ud, l.backlog.removeFirst(), weir_cqe_f_more()))
            return .waiting
        case .recvMultishot(let fd, let remaining, let ud):
            guard let s = sockets[fd] else { completions.append((ud, -EBADF, 0)); return .done }
            if s.reset { completions.append((ud, -ECONNRESET, 0)); return .done }
            if s.inbox.isEmpty {
                if s.finReceived || s.peer < 0 { completions.append((ud, 0, 0)); return .done }
                return .waiting
            }
            guard let pool, let bid = pool.take() else { completions.append((ud, -ENOBUFS, 0)); return .done }
            // Bytes arrive in pieces of any size.
            let most = min(pool.bufferBytes, s.inbox.count, Int(remaining))
            let n = 1 + Int(random.next() % UInt64(most))
            s.inbox.withUnsafeBytes { pool.pointer(bid).copyMemory(from: $0.baseAddress!, byteCount: n) }
            s.inbox.removeFirst(n)
            let left = remaining - UInt32(n)
            let flags = weir_cqe_f_buffer() | UInt32(bid) << weir_cqe_buffer_shift()
            if left == 0 { completions.append((ud, Int32(n), flags)); return .done }
            completions.append((ud, Int32(n), flags | weir_cqe_f_more()))
            return .continues(.recvMultishot(fd: fd, remaining: left, ud: ud))
        case .recv(let fd, let buffer, let count, let ud):
            guard let s = sockets[fd] else { completions.append((ud, -EBADF, 0)); return .done }
            if s.reset { completions.append((ud, -ECONNRESET, 0)); return .done }
            if s.inbox.isEmpty {
                if s.finReceived || s.peer < 0 { completions.append((ud, 0, 0)); return .done }
                return .waiting
            }
            let n = min(count, s.inbox.count)
            s.inbox.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: n) }
            s.inbox.removeFirst(n)
            completions.append((ud, Int32(n), 0))
            return .done
        case .send(let fd, let iov, let ud):
            guard let s = sockets[fd] else { completions.append((ud, -EBADF, 0)); return .done }
            if s.reset { completions.append((ud, -ECONNRESET, 0)); return .done }
            guard !s.writeShut, let p = sockets[s.peer] else { completions.append((ud, -EPIPE, 0)); return .done }
            let total = iov.reduce(0) { $0 + $1.1 }
            guard total > 0 else { completions.append((ud, 0, 0)); return .done }
            let n = chance(faults.shortSend) ? 1 + Int(random.next() % UInt64(total)) : total
            var left = n
            for (base, len) in iov where left > 0 {
                let m = min(len, left)
                p.inbox += UnsafeRawBufferPointer(start: base, count: m)
                left -= m
            }
            completions.append((ud, Int32(n), 0))
            return .done
        case .connect(let fd, let address, let ud, let tud, _, let hangs):
            guard let s = sockets[fd] else { completions.append((ud, -EBADF, 0)); return .done }
            if hangs { return .waiting }
            guard let lfd = listeners[address], let l = sockets[lfd] else {
                completions.append((ud, -ECONNREFUSED, 0)); completions.append((tud, -ECANCELED, 0)); return .done
            }
            // This socket becomes the shard's end; the world's end waits in the backlog.
            let w = Socket(kind: .stream, world: l.world)
            w.peerAddress = SocketAddress(ipv4: 10, 9, 9, 9, port: UInt16(truncatingIfNeeded: fd))
            let wfd = newFD(w)
            s.kind = .stream
            s.peer = wfd
            s.peerAddress = address
            s.localAddress = s.boundSource ?? SocketAddress(ipv4: 10, 9, 9, 9, port: UInt16(truncatingIfNeeded: fd))
            w.peerAddress = s.localAddress
            w.localAddress = address
            w.peer = fd
            l.backlog.append(wfd)
            completions.append((ud, 0, 0)); completions.append((tud, -ECANCELED, 0))
            return .done
        case .timeout:
            return .waiting
        case .read:
            // The shard's wake-up eventfd: the simulation sends no cross-thread wake-ups.
            return .waiting
        case .poll(let fd, let events, let ud):
            guard let s = sockets[fd] else { completions.append((ud, -EBADF, 0)); return .done }
            var ready: UInt32 = 0
            switch s.kind {
            case .stream:
                if s.reset { ready |= UInt32(POLLERR) | UInt32(POLLHUP) }
                if !s.inbox.isEmpty || s.finReceived || s.peer < 0 { ready |= UInt32(POLLIN) }
                // Sends never block in the simulation.
                ready |= UInt32(POLLOUT)
            case .pipeRead: if !s.inbox.isEmpty { ready |= UInt32(POLLIN) }
            case .pipeWrite: if let r = sockets[s.peer], r.inbox.count < r.capacity { ready |= UInt32(POLLOUT) }
            default: break
            }
            let hit = ready & (events | UInt32(POLLERR) | UInt32(POLLHUP))
            guard hit != 0 else { return .waiting }
            completions.append((ud, Int32(hit), 0))
            return .done
        }
    }
}

/// The buffer pool of a simulated shard (like the epoll backend's: taken by the kernel model,
/// recycled by the shard, back at commit).
public final class SimBuffers: ReceiveBuffers {
    public let group: UInt16
    public let count: Int
    public let bufferBytes: Int
    let storage: UnsafeMutableRawPointer
    var free: [UInt16]
    var recycled: [UInt16] = []
    public private(set) var outstanding = 0

    init(group: UInt16, count: Int, bufferBytes: Int) {
        self.group = group; self.count = count; self.bufferBytes = bufferBytes
        storage = .allocate(byteCount: count * bufferBytes, alignment: 64)
        free = (0..<count).reversed().map { UInt16($0) }
    }
    deinit { storage.deallocate() }

    public func pointer(_ bid: UInt16) -> UnsafeMutableRawPointer { storage + Int(bid) * bufferBytes }
    public func didTake() { outstanding += 1 }
    public func recycle(_ bid: UInt16) {
        precondition(!free.contains(bid) && !recycled.contains(bid), "buffer \(bid) recycled twice")
        recycled.append(bid)
        outstanding -= 1
    }
    @discardableResult public func commit() -> Int32 {
        let n = recycled.count
        free += recycled
        recycled.removeAll()
        return Int32(n)
    }
    func take() -> UInt16? { free.popLast() }

    /// Takes up to `n` free buffers out of reach; `giveBack` queues them for the next commit.
    func holdBack(_ n: Int) -> [UInt16] {
        let k = min(n, free.count)
        let held = Array(free.suffix(k))
        free.removeLast(k)
        return held
    }
    func giveBack(_ held: [UInt16]) { recycled += held }
}

public final class SimIO: IOBackend {
    public static var kind: IOBackendKind { .simulated }
    public let setupDescription = "simulated"
    public let kernel: SimKernel

    public init(entries: UInt32) throws {
        guard let k = SimKernel.current else { throw RingError(errno: ENODEV, call: "SimIO without a SimKernel") }
        kernel = k
    }

    public func makeBuffers(group: UInt16, count: Int, bufferBytes: Int) throws -> SimBuffers {
        let p = SimBuffers(group: group, count: count, bufferBytes: bufferBytes)
        kernel.pool = p
        return p
    }

    public func reserve(_ count: UInt32) {}
    @discardableResult public func submitAndWait(timeoutNanoseconds: Int64) -> Int32 {
        kernel.step(wait: timeoutNanoseconds)
        return Int32(kernel.completions.count)
    }
    @discardableResult public func submit() -> Int32 { kernel.submit(); return 0 }
    @discardableResult public func forEachCompletion(_ body: (UInt64, Int32, UInt32) -> Void) -> Int {
        var total = 0
        while !kernel.completions.isEmpty {
            let batch = kernel.completions
            kernel.completions.removeAll()
            for (ud, res, flags) in batch { body(ud, res, flags) }
            total += batch.count
        }
        return total
    }

    public func acceptMultishot(fd: Int32, userData: UserData) { kernel.queue(.accept(fd: fd, ud: userData.raw)) }
    public func recvMultishot(fd: Int32, group: UInt16, limitBytes: UInt32, userData: UserData) {
        kernel.queue(.recvMultishot(fd: fd, remaining: limitBytes == 0 ? .max : limitBytes, ud: userData.raw))
    }
    public func recv(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, userData: UserData) {
        kernel.queue(.recv(fd: fd, buffer: buffer, count: count, ud: userData.raw))
    }
    public func send(fd: Int32, buffer: UnsafeRawPointer, count: Int, userData: UserData) {
        kernel.queue(.send(fd: fd, iov: [(buffer, count)], ud: userData.raw))
    }
    public func sendmsg(fd: Int32, message: UnsafePointer<msghdr>, userData: UserData) {
        var iov: [(UnsafeRawPointer, Int)] = []
        for i in 0..<Int(message.pointee.msg_iovlen) {
            let v = message.pointee.msg_iov[i]
            iov.append((UnsafeRawPointer(v.iov_base!), v.iov_len))
        }
        kernel.queue(.send(fd: fd, iov: iov, ud: userData.raw))
    }
    public func connect(fd: Int32, address: UnsafePointer<sockaddr>, length: socklen_t,
                        timeout: UnsafeMutablePointer<__kernel_timespec>, userData: UserData, timeoutUserData: UserData) {
        let ns = Int64(timeout.pointee.tv_sec) * 1_000_000_000 + Int64(timeout.pointee.tv_nsec)
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { $0.baseAddress!.copyMemory(from: address, byteCount: min(Int(length), $0.count)) }
        let a = SocketAddress(storage: &storage) ?? SocketAddress(ipv4: 0, 0, 0, 0, port: 0)
        if kernel.chance(kernel.faults.connectRefused) {
            // A refused connect: as if nobody listened.
            kernel.queue(.connect(fd: fd, address: SocketAddress(ipv4: 0, 0, 0, 0, port: 0), ud: userData.raw,
                                          timeoutUD: timeoutUserData.raw, deadline: kernel.now + ns, hangs: false))
            return
        }
        kernel.queue(.connect(fd: fd, address: a, ud: userData.raw, timeoutUD: timeoutUserData.raw,
                                      deadline: kernel.now + ns, hangs: kernel.chance(kernel.faults.connectHangs)))
    }
    public func poll(fd: Int32, events: UInt32, userData: UserData) {
        kernel.queue(.poll(fd: fd, events: events, ud: userData.raw))
    }
    public func timeout(_ timeout: UnsafeMutablePointer<__kernel_timespec>, userData: UserData) {
        let ns = Int64(timeout.pointee.tv_sec) * 1_000_000_000 + Int64(timeout.pointee.tv_nsec)
        kernel.queue(.timeout(deadline: kernel.now + ns, ud: userData.raw))
    }
    public func read(fd: Int32, into buffer: UnsafeMutableRawPointer, count: UInt32, userData: UserData) {
        kernel.queue(.read(fd: fd, ud: userData.raw))
    }
    public func append(fd: Int32, from buffer: UnsafeRawPointer, count: UInt32, userData: UserData) {
        kernel.completions.append((userData.raw, Int32(count), 0))
    }
    public func cancel(_ target: UserData, on fd: Int32, userData: UserData) {
        kernel.cancels.append((target.raw, fd, false, userData.raw))
    }
    public func cancelAll(fd: Int32, userData: UserData) { kernel.cancels.append((0, fd, true, userData.raw)) }

    public func close(fd: Int32) {
        // A real kernel would close whatever now has that number (another connection's socket).
        guard let s = kernel.sockets[fd] else { preconditionFailure("close of fd \(fd), which the shard does not hold") }
        precondition(!s.world, "the shard closed a socket it does not own")
        precondition(!kernel.waiting(on: fd),
                     "fd \(fd) closed with an operation pending on it")
        if let p = kernel.sockets[s.peer] { p.finReceived = true; p.peer = -1 }
        kernel.closeSocket(fd)
    }

    public func tcpSocket(family: SocketAddress.Family) -> Int32 { kernel.newFD(SimKernel.Socket(kind: .unconnected, world: false)) }
    public func shutdown(fd: Int32, how: Int32) {
        guard let s = kernel.sockets[fd] else { return }
        if how == Int32(SHUT_WR) || how == Int32(SHUT_RDWR) {
            if !s.writeShut { s.writeShut = true; kernel.sockets[s.peer]?.finReceived = true }
        }
        if how == Int32(SHUT_RD) || how == Int32(SHUT_RDWR) {
            // Pending receives end (EOF), as on a real socket.
            s.finReceived = true
            s.inbox.removeAll()
        }
    }
    public func peerName(fd: Int32, into storage: UnsafeMutablePointer<sockaddr_storage>) -> Int32 {
        guard let a = kernel.sockets[fd]?.peerAddress else { return -1 }
        storage.pointee = sockaddr_storage()
        _ = a.fill(&storage.pointee)
        return 0
    }
    public func localName(fd: Int32, into storage: UnsafeMutablePointer<sockaddr_storage>) -> Int32 {
        guard let a = kernel.sockets[fd]?.localAddress else { return -1 }
        storage.pointee = sockaddr_storage()
        _ = a.fill(&storage.pointee)
        return 0
    }
    public func originalDestination(fd: Int32, into storage: UnsafeMutablePointer<sockaddr_storage>) -> Int32 {
        guard let a = kernel.sockets[fd]?.originalDestination else { return -1 }
        storage.pointee = sockaddr_storage()
        _ = a.fill(&storage.pointee)
        return 0
    }
    public func bindSource(fd: Int32, address: UnsafePointer<sockaddr>, length: socklen_t) -> Int32 {
        guard let s = kernel.sockets[fd] else { preconditionFailure("bind of fd \(fd), which the shard does not hold") }
        precondition(s.kind == .unconnected && s.boundSource == nil, "bind of a socket that is connected or bound")
        s.boundSource = SocketAddress(storage: UnsafeRawPointer(address).assumingMemoryBound(to: sockaddr_storage.self))
        return 0
    }
    public func clock(coarse: Bool) -> Int64 { kernel.now }
    public func setNonBlocking(fd: Int32) {}
    public func makePipe(bytes: Int) -> (read: Int32, write: Int32)? { kernel.makePipe() }
    public func splice(from: Int32, to: Int32, count: Int) -> Int { kernel.splice(from: from, to: to, count: count) }
    public func closePipe(fd: Int32) {
        guard let s = kernel.sockets[fd] else { preconditionFailure("close of pipe fd \(fd), which the shard does not hold") }
        precondition(s.kind == .pipeRead || s.kind == .pipeWrite, "closePipe on a socket")
        precondition(!kernel.waiting(on: fd),
                     "pipe \(fd) closed with an operation pending on it")
        kernel.sockets[s.peer]?.peer = -1
        kernel.closeSocket(fd)
    }
}
