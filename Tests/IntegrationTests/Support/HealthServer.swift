// A tiny HTTP responder for health probes: answers every request with the current status and
// counts the probes it saw.
import Foundation
import Synchronization
import WeirCore
import WeirDemo

final class HealthServer: @unchecked Sendable {
    let address: SocketAddress
    private let fd: Int32
    let status = Atomic<Int>(200)
    let probes = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)

    init(host: String, port: UInt16 = 0) throws {
        (fd, address) = try listenBlocking(try SocketAddress.parse("\(host):\(port)"), what: "health server")
        spawnThread { [self] in
            while !stopped.load(ordering: .acquiring) {
                let c = accept(fd, nil, nil)
                if c < 0 { if errno == EINTR { continue }; return }
                spawnThread { [self] in answer(c) }
            }
        }
    }

    private func answer(_ c: Int32) {
        defer { close(c) }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var got: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 2048)
        while !got.suffix(4).elementsEqual(Array("\r\n\r\n".utf8)) {
            let n = buffer.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return }
            got.append(contentsOf: buffer[0..<n])
        }
        probes.add(1, ordering: .relaxed)
        let code = status.load(ordering: .relaxed)
        writeAll(c, Array("HTTP/1.1 \(code) X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8))
    }

    func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        shutdown(fd, Int32(SHUT_RDWR)); close(fd)
    }
    deinit { stop() }
}

/// Seconds until `condition` holds, polling every 20 ms, or nil after `limit` seconds.
func secondsUntil(limit: Double, _ condition: () -> Bool) -> Double? {
    let start = Date()
    while Date().timeIntervalSince(start) < limit {
        if condition() { return Date().timeIntervalSince(start) }
        usleep(20_000)
    }
    return nil
}
