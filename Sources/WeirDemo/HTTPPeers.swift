// A small blocking HTTP/1.1 upstream and keep-alive client for `weir demo`: each upstream answers
// every request with its own name, and counts requests and connections. Not used on Weir's data
// path.
import Synchronization
import WeirCore
#if canImport(Glibc)
import Glibc
#endif

public final class HTTPDemoServer: @unchecked Sendable {
    public let name: String
    public let address: SocketAddress
    private let fd: Int32
    private let requestCount = Atomic<Int>(0)
    private let connectionCount = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)

    public var requests: Int { requestCount.load(ordering: .relaxed) }
    public var connections: Int { connectionCount.load(ordering: .relaxed) }

    public init(name: String) throws {
        self.name = name
        (fd, address) = try listenBlocking(try SocketAddress.parse("127.0.0.1:0"), what: "HTTP upstream \(name)")
        spawnThread { [self] in
            while !stopped.load(ordering: .acquiring) {
                let c = accept(fd, nil, nil)
                if c < 0 { if errno == EINTR { continue }; return }
                connectionCount.add(1, ordering: .relaxed)
                var one: Int32 = 1
                setsockopt(c, Int32(IPPROTO_TCP), TCP_NODELAY, &one, 4)
                spawnThread { [self] in serve(c) }
            }
        }
    }

    /// Answers each request head (requests carry no body here) until the client closes.
    private func serve(_ c: Int32) {
        let body = Array("hello from \(name)\n".utf8)
        let response = Array("HTTP/1.1 200 OK\r\nContent-Length: \(body.count)\r\nContent-Type: text/plain\r\n\r\n".utf8) + body
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            pending += buffer[0..<n]
            var answered = false
            while let end = headEnd(pending) {
                pending.removeFirst(end)
                requestCount.add(1, ordering: .relaxed)
                if !writeAll(c, response) { answered = true; break }
            }
            if answered { break }
        }
        close(c)
    }

    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    deinit { stop() }
}

/// Where a head ends (after its blank line) in `bytes`, or nil.
func headEnd(_ bytes: [UInt8]) -> Int? {
    guard bytes.count >= 4 else { return nil }
    for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 { return i + 4 }
    return nil
}

/// One keep-alive client connection sending GETs and reading Content-Length responses.
public final class HTTPDemoClient {
    let client: TestClient
    private var pending: [UInt8] = []

    public init(_ address: SocketAddress) throws { client = try TestClient(address, timeoutSeconds: 10) }

    /// Sends a GET and returns (status, body), or nil when the connection failed.
    public func get(_ path: String) -> (Int, String)? {
        guard client.write(Array("GET \(path) HTTP/1.1\r\nHost: demo\r\n\r\n".utf8)) else { return nil }
        var head: [UInt8]
        while true {
            if let end = headEnd(pending) { head = Array(pending[0..<end]); pending.removeFirst(end); break }
            let more = client.read(count: 1)
            if more.isEmpty { return nil }
            pending += more
        }
        let text = String(decoding: head, as: UTF8.self)
        let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
        var length = 0
        for line in text.split(separator: "\r\n") where line.lowercased().hasPrefix("content-length:") {
            length = Int(String(line.split(separator: ":")[1].filter { $0 != " " && $0 != "\t" })) ?? 0
        }
        while pending.count < length {
            let more = client.read(count: length - pending.count)
            if more.isEmpty { return nil }
            pending += more
        }
        let body = String(decoding: pending[0..<length], as: UTF8.self)
        pending.removeFirst(length)
        return (status, body)
    }
}
