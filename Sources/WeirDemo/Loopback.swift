// Small blocking TCP servers and clients on loopback, for `weir demo` and for tests. Each
// connection gets its own thread: simple and obviously correct, which is what a reference peer
// should be. Not used on Weir's data path.
import Synchronization
import WeirCore
#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` on a new detached thread; a test or demo cannot go on without it.
public func spawnThread(_ body: @escaping () -> Void) {
    do { try startDetachedThread(body) } catch { preconditionFailure("\(error)") }
}

/// A loopback upstream that counts connections and bytes. By default it echoes what it receives
/// until the client half-closes; other modes test half-close in each direction.
public final class EchoServer: @unchecked Sendable {
    public enum Mode: Sendable {
        /// Send the greeting, echo until EOF, then close.
        case echo
        /// Read until EOF, then answer "received N" and close: the client's FIN must arrive while
        /// the way back stays open.
        case replyAfterEOF
        /// Send the greeting, half-close, then read until EOF: the server's FIN must reach the
        /// client while the client can still send.
        case greetHalfCloseThenRead
    }
    public let mode: Mode
    public let address: SocketAddress
    public let name: String
    private let fd: Int32
    private let connectionCount = Atomic<Int>(0)
    private let byteCount = Atomic<Int>(0)
    private let open = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)
    /// When set, the server sends this greeting before echoing (tests use it to see who answered).
    public let greeting: [UInt8]

    public var connections: Int { connectionCount.load(ordering: .relaxed) }
    public var bytesReceived: Int { byteCount.load(ordering: .relaxed) }
    public var openConnections: Int { open.load(ordering: .relaxed) }

    public init(name: String, host: String = "127.0.0.1", port: UInt16 = 0, greeting: String? = nil, mode: Mode = .echo) throws {
        self.name = name
        self.mode = mode
        self.greeting = greeting.map { Array($0.utf8) } ?? []
        (fd, address) = try listenBlocking(try SocketAddress.parse("\(host):\(port)"), what: "echo server \(name)")
        spawnThread { [self] in acceptLoop() }
    }

    private func acceptLoop() {
        while !stopped.load(ordering: .acquiring) {
            let c = accept(fd, nil, nil)
            if c < 0 {
                if errno == EINTR { continue }
                return
            }
            if stopped.load(ordering: .acquiring) { close(c); return }
            connectionCount.add(1, ordering: .relaxed)
            open.add(1, ordering: .relaxed)
            spawnThread { [self] in serve(c) }
        }
    }

    private func serve(_ c: Int32) {
        defer { close(c); open.subtract(1, ordering: .relaxed) }
        if mode != .replyAfterEOF && !greeting.isEmpty && !writeAll(c, greeting) { return }
        if mode == .greetHalfCloseThenRead { shutdown(c, Int32(SHUT_WR)) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var received = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            byteCount.add(n, ordering: .relaxed)
            received += n
            if mode == .echo && !writeAll(c, Array(buffer[0..<n])) { return }
        }
        if mode == .replyAfterEOF { writeAll(c, Array("received \(received)".utf8)) }
        shutdown(c, Int32(SHUT_WR))
    }

    /// Stops accepting; open connections finish on their own.
    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    deinit { stop() }
}

/// A blocking listening socket on `address` (port 0 picks one) and the address it got.
public func listenBlocking(_ address: SocketAddress, what: String) throws -> (Int32, SocketAddress) {
    let s = socket(address.family == .inet ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var one: Int32 = 1
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, 4)
    guard address.withSockAddr({ bind(s, $0, $1) }) == 0, listen(s, 1024) == 0 else {
        let e = errno; close(s)
        throw LoopbackError(message: "\(what) cannot listen on \(address): \(String(cString: strerror(e)))")
    }
    var storage = sockaddr_storage()
    var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
    _ = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) } }
    return (s, withUnsafePointer(to: &storage) { SocketAddress(storage: $0)! })
}

public struct LoopbackError: Error, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

@discardableResult
public func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBytes { raw in
        var off = 0
        while off < raw.count {
            let n = send(fd, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }
}

/// A blocking client connection with a receive timeout, so a test cannot hang forever.
public final class TestClient {
    public let fd: Int32

    public init(_ address: SocketAddress, timeoutSeconds: Int = 10, from source: SocketAddress? = nil) throws {
        // Everything that can fail happens before `fd` is stored: a class whose init throws
        // after full initialization runs deinit, which would close the descriptor a second time
        // (and, in a threaded test, someone else's).
        let s = socket(address.family == .inet ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        if let source, source.withSockAddr({ bind(s, $0, $1) }) != 0 {
            let e = errno; close(s)
            throw LoopbackError(message: "bind \(source): \(String(cString: strerror(e)))")
        }
        guard address.withSockAddr({ connect(s, $0, $1) }) == 0 else {
            let e = errno; close(s)
            throw LoopbackError(message: "connect \(address): \(String(cString: strerror(e)))")
        }
        fd = s
    }

    deinit { close(fd) }

    public func write(_ bytes: [UInt8]) -> Bool { writeAll(fd, bytes) }

    /// Sends FIN: "I have nothing more to say", while still reading.
    public func halfClose() { shutdown(fd, Int32(SHUT_WR)) }

    /// Reads exactly `count` bytes, or fewer if the peer closes or the timeout passes.
    public func read(count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, count - got, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            got += n
        }
        return Array(out[0..<got])
    }

    /// Reads until the peer closes (EOF), an error, or the timeout.
    public func readToEnd(limit: Int = 1 << 30) -> (bytes: [UInt8], eof: Bool) {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while out.count < limit {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n == 0 { return (out, true) }
            if n < 0 { return (out, false) }
            out.append(contentsOf: buffer[0..<n])
        }
        return (out, false)
    }
}

/// Random bytes from a fast generator (xorshift), reproducible per seed.
public func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var s = seed | 1
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { raw in
        var i = 0
        while i < count {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17
            var v = s
            for _ in 0..<8 where i < count { raw[i] = UInt8(truncatingIfNeeded: v); v >>= 8; i += 1 }
        }
    }
    return out
}

/// Sends `payload` while reading the echo (on a second thread, so neither side's socket buffer
/// fills and stalls), half-closes, and checks the echo came back byte for byte. `skip` bytes of
/// greeting are read first.
public func echoOnce(_ address: SocketAddress, _ payload: [UInt8], greeting skip: Int = 0, timeoutSeconds: Int = 10) -> Bool {
    guard let client = try? TestClient(address, timeoutSeconds: timeoutSeconds) else { return false }
    if skip > 0 && client.read(count: skip).count != skip { return false }
    let sent = Atomic<Int>(0)
    let writerDone = Atomic<Bool>(false)
    spawnThread {
        if client.write(payload) { sent.store(1, ordering: .relaxed) }
        client.halfClose()
        writerDone.store(true, ordering: .releasing)
    }
    let (echo, eof) = client.readToEnd(limit: payload.count + 1)
    while !writerDone.load(ordering: .acquiring) { usleep(100) }
    return sent.load(ordering: .relaxed) == 1 && eof && echo == payload
}
