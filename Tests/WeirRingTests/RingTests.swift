import CURing
import Testing
import WeirCore
@testable import WeirRing
#if canImport(Glibc)
import Glibc
#endif

/// Completions that arrived while a test waited for another one, kept for the next wait.
nonisolated(unsafe) var unclaimed: [(UserData, Int32, UInt32)] = []

/// Runs the ring until a completion with `op` arrives (at most `seconds`), returning it.
func awaitCompletion(_ ring: Ring, op: UInt8, seconds: Double = 5) -> (UserData, Int32, UInt32)? {
    let deadline = monotonicNanoseconds() + Int64(seconds * 1e9)
    while monotonicNanoseconds() < deadline {
        if let i = unclaimed.firstIndex(where: { $0.0.op == op }) { return unclaimed.remove(at: i) }
        _ = ring.submitAndWait(timeoutNanoseconds: 50_000_000)
        _ = ring.forEachCompletion { ud, res, flags in unclaimed.append((UserData(raw: ud), res, flags)) }
    }
    return nil
}

/// Queues a connect (user data op 2) with its linked timeout and submits it; the address and
/// timespec only need to live until the submit, which happens here.
func submitConnect(_ ring: Ring, fd: Int32, to address: SocketAddress, timeoutNanoseconds t: Int64) {
    var storage = sockaddr_storage()
    let len = address.fill(&storage)
    var ts = __kernel_timespec(tv_sec: t / 1_000_000_000, tv_nsec: t % 1_000_000_000)
    withUnsafeMutablePointer(to: &storage) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            ring.connect(fd: fd, address: $0, length: len, timeout: &ts,
                         userData: UserData(op: 2, slot: 0, generation: 0), timeoutUserData: UserData(op: 9, slot: 0, generation: 0))
        }
        _ = ring.submit()
    }
}

@Suite(.serialized) struct RingTests {
    @Test func userDataRoundTrips() {
        let u = UserData(op: 3, sub: 1, slot: 0xABCDE, generation: 0x123456)
        #expect(u.op == 3 && u.sub == 1 && u.slot == 0xABCDE && u.generation == 0x123456)
    }

    /// A connect and its linked timeout must reach the kernel in the same submit: with one free
    /// entry left, the queued work goes first and the pair stays together.
    @Test func aConnectAndItsTimeoutAreNeverSplitAcrossSubmits() throws {
        unclaimed = []
        let ring = try Ring(entries: 8)
        let free = Int(io_uring_sq_space_left(ring.raw))
        for _ in 0..<(free - 1) {
            let s = ring.sqe()
            io_uring_prep_nop(s)
            io_uring_sqe_set_data64(s, UserData(op: 9, slot: 0, generation: 0).raw)
        }
        #expect(io_uring_sq_space_left(ring.raw) == 1)
        let listener = try Sockets.listen(SocketAddress(ipv4: 127, 0, 0, 1, port: 0), backlog: 4, reusePort: false)
        defer { close(listener) }
        let fd = Sockets.tcpSocket(for: .inet)
        defer { close(fd) }
        var storage = sockaddr_storage()
        let len = Sockets.localAddress(listener)!.fill(&storage)
        var ts = __kernel_timespec(tv_sec: 1, tv_nsec: 0)
        withUnsafeMutablePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                ring.connect(fd: fd, address: $0, length: len, timeout: &ts,
                             userData: UserData(op: 2, slot: 0, generation: 0), timeoutUserData: UserData(op: 9, slot: 0, generation: 0))
            }
            #expect(ring.queuedEntries == 2, "the connect and its timeout wait together for the next submit")
            _ = ring.submit()
        }
        let done = awaitCompletion(ring, op: 2)
        #expect(done?.1 == 0)
    }

    @Test func aSlotReferenceQueueDropsWhatIsStaleOnlyWhenFull() {
        let q = SlotRefQueue(capacity: 3)
        var generations: [UInt32] = [1, 1, 1, 1]
        let live: (SlotRef) -> Bool = { generations[Int($0.slot)] == $0.generation }
        #expect(q.append(SlotRef(slot: 0, generation: 1), isLive: live))
        #expect(q.append(SlotRef(slot: 1, generation: 1), isLive: live))
        #expect(q.append(SlotRef(slot: 2, generation: 1), isLive: live))
        generations[1] = 2  // slot 1 was freed and reused: its entry is someone else's now
        #expect(q.append(SlotRef(slot: 3, generation: 1), isLive: live))
        #expect(q.count == 3)
        #expect(q.removeFirst()?.slot == 0)
        #expect(q.removeFirst()?.slot == 2)
        #expect(q.removeFirst()?.slot == 3)
        #expect(q.removeFirst() == nil)
        #expect(q.append(SlotRef(slot: 0, generation: 1), isLive: live))
        #expect(q.append(SlotRef(slot: 2, generation: 1), isLive: live))
        #expect(q.append(SlotRef(slot: 3, generation: 1), isLive: live))
        #expect(!q.append(SlotRef(slot: 1, generation: 2), isLive: live), "three live entries fill it")
    }

    @Test func setupFailuresNameTheLikelyCause() {
        #expect(RingError(errno: EPERM, call: "io_uring_setup").description.contains("kernel.io_uring_disabled"))
        #expect(RingError(errno: ENOSYS, call: "io_uring_setup").description.contains("no io_uring"))
        #expect(RingError(errno: ENOMEM, call: "io_uring_setup").description.contains("ulimit -l"))
        #expect(SocketError(errno: EACCES, what: "bind 0.0.0.0:80").description.contains("CAP_NET_BIND_SERVICE"))
    }

    @Test func probeSucceedsHere() throws {
        #expect(!(try Ring.probe()).isEmpty)
    }

    @Test func acceptConnectSendAndRecvIntoProvidedBuffers() throws {
        unclaimed = []
        let ring = try Ring(entries: 64)
        let buffers = try BufferRing(ring: ring, group: 7, count: 16, bufferBytes: 4096)
        let listener = try Sockets.listen(SocketAddress(ipv4: 127, 0, 0, 1, port: 0), backlog: 16, reusePort: false)
        defer { close(listener) }
        let address = Sockets.localAddress(listener)!
        ring.acceptMultishot(fd: listener, userData: UserData(op: 1, slot: 0, generation: 0))

        let client = Sockets.tcpSocket(for: .inet)
        defer { close(client) }
        submitConnect(ring, fd: client, to: address, timeoutNanoseconds: 2_000_000_000)
        let connected = try #require(awaitCompletion(ring, op: 2))
        #expect(connected.1 == 0)
        let accepted = try #require(awaitCompletion(ring, op: 1))
        #expect(accepted.1 >= 0)
        #expect(hasMore(flags: accepted.2), "multishot accept stays armed")
        let server = accepted.1
        defer { close(server) }

        ring.recvMultishot(fd: server, group: buffers.group, userData: UserData(op: 3, slot: 0, generation: 0))
        let message: [UInt8] = Array("hello through the ring".utf8)
        message.withUnsafeBytes { ring.send(fd: client, buffer: $0.baseAddress!, count: $0.count, userData: UserData(op: 4, slot: 0, generation: 0)) }
        let sent = try #require(awaitCompletion(ring, op: 4))
        #expect(Int(sent.1) == message.count)
        let got = try #require(awaitCompletion(ring, op: 3))
        #expect(Int(got.1) == message.count)
        let bid = try #require(bufferID(flags: got.2))
        buffers.didTake()
        let bytes = Array(UnsafeRawBufferPointer(start: buffers.pointer(bid), count: Int(got.1)))
        #expect(bytes == message)
        buffers.recycle(bid)
        #expect(buffers.commit() == 1)
        #expect(buffers.outstanding == 0)

        // EOF ends the multishot recv: result 0, no F_MORE.
        shutdown(client, Int32(SHUT_WR))
        let eof = try #require(awaitCompletion(ring, op: 3))
        #expect(eof.1 == 0)
        #expect(!hasMore(flags: eof.2))
    }

    @Test func aRecvWithAnEmptyBufferRingEndsWithENOBUFS() throws {
        unclaimed = []
        let ring = try Ring(entries: 64)
        let buffers = try BufferRing(ring: ring, group: 3, count: 16, bufferBytes: 1024)
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        ring.recvMultishot(fd: fds[0], group: buffers.group, userData: UserData(op: 3, slot: 0, generation: 0))
        // Fill all 16 buffers with 16 separate writes, then one more that finds none.
        var taken = 0
        var sawENOBUFS = false
        for i in 0..<17 {
            _ = writeBytes(fds[1], [UInt8](repeating: UInt8(i), count: 1024))
            guard let c = awaitCompletion(ring, op: 3, seconds: 2) else { break }
            if c.1 > 0 { taken += 1 } else if c.1 == -ENOBUFS { sawENOBUFS = true; #expect(!hasMore(flags: c.2)); break }
        }
        #expect(taken == 16)
        #expect(sawENOBUFS)
    }

    @Test func aMultishotRecvEndsAtItsByteLimit() throws {
        // Weir bounds the buffers one connection may take in a single burst with this limit.
        unclaimed = []
        let ring = try Ring(entries: 64)
        let buffers = try BufferRing(ring: ring, group: 4, count: 64, bufferBytes: 1024)
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        _ = writeBytes(fds[1], [UInt8](repeating: 7, count: 16 * 1024))
        ring.recvMultishot(fd: fds[0], group: buffers.group, limitBytes: 4096, userData: UserData(op: 3, slot: 0, generation: 0))
        var received = 0
        var ended = false
        while !ended, let c = awaitCompletion(ring, op: 3, seconds: 2) {
            if c.1 > 0 { received += Int(c.1) }
            ended = !hasMore(flags: c.2)
        }
        #expect(ended)
        #expect(received == 4096)
    }

    @Test func theRecvLimitProbeMatchesTheKernelVersion() {
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let parts = release.split(separator: ".").prefix(2).map { Int($0.prefix { $0.isNumber }) ?? 0 }
        let atLeast616 = parts.count == 2 && (parts[0], parts[1]) >= (6, 16)
        #expect(Ring.probeRecvLimit() == atLeast616, "kernel \(release)")
    }

    @Test func aTimeoutCompletesWithETIMEAfterItsDuration() throws {
        unclaimed = []
        let ring = try Ring(entries: 8)
        var ts = __kernel_timespec(tv_sec: 0, tv_nsec: 100_000_000)
        let start = monotonicNanoseconds()
        ring.timeout(&ts, userData: UserData(op: 5, slot: 0, generation: 0))
        let c = try #require(awaitCompletion(ring, op: 5))
        #expect(c.1 == -ETIME)
        #expect(monotonicNanoseconds() - start >= 95_000_000)
    }

    @Test func aWakerCompletesAPendingReadFromAnotherThread() throws {
        unclaimed = []
        let ring = try Ring(entries: 8)
        let waker = try Waker()
        var value: UInt64 = 0
        ring.read(fd: waker.fd, into: &value, count: 8, userData: UserData(op: 6, slot: 0, generation: 0))
        _ = ring.submit()
        var t = pthread_t()
        let box = Unmanaged.passRetained(waker).toOpaque()
        pthread_create(&t, nil, { arg in
            usleep(20_000)
            Unmanaged<Waker>.fromOpaque(arg!).takeRetainedValue().wake()
            return nil
        }, box)
        let c = try #require(awaitCompletion(ring, op: 6))
        pthread_join(t, nil)
        #expect(c.1 == 8)
    }

    @Test func aConnectThatHangsIsCancelledByItsLinkedTimeout() throws {
        // A listener with backlog 0 and one unaccepted connection drops further SYNs, so the next
        // connect hangs: a black hole on loopback.
        let hole = try Sockets.listen(SocketAddress(ipv4: 127, 0, 0, 1, port: 0), backlog: 0, reusePort: false)
        defer { close(hole) }
        let address = Sockets.localAddress(hole)!
        let first = Sockets.tcpSocket(for: .inet)
        defer { close(first) }
        _ = address.withSockAddr { connect(first, $0, $1) }

        unclaimed = []
        let ring = try Ring(entries: 8)
        let fd = Sockets.tcpSocket(for: .inet)
        defer { close(fd) }
        let start = monotonicNanoseconds()
        submitConnect(ring, fd: fd, to: address, timeoutNanoseconds: 200_000_000)
        let c = try #require(awaitCompletion(ring, op: 2))
        #expect(c.1 == -ECANCELED)
        let waited = monotonicNanoseconds() - start
        #expect(waited >= 190_000_000 && waited < 2_000_000_000)
    }

    @Test func listeningTwiceWithoutReusePortIsAClearError() throws {
        let a = try Sockets.listen(SocketAddress(ipv4: 127, 0, 0, 1, port: 0), backlog: 4, reusePort: true)
        defer { close(a) }
        let address = Sockets.localAddress(a)!
        #expect(throws: SocketError.self) { try Sockets.checkFree(address) }
        do { try Sockets.checkFree(address) } catch { #expect("\(error)".contains("address in use")) }
    }
}

func writeBytes(_ fd: Int32, _ bytes: [UInt8]) -> Int {
    bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}
