// A slow reader must not hold the shard's buffer pool, and a pool that runs dry must recover
// without losing or reordering a byte.
import Foundation
import Synchronization
import Testing
import WeirCore
import WeirDemo

@Suite(.serialized) struct BackpressureTests {
    /// Upstreams that send `bytes` as soon as a client connects, then close.
    final class Firehose: @unchecked Sendable {
        let server: EchoServer
        init(bytes: Int) throws {
            // The greeting is the payload: sent in full before the server reads anything.
            server = try EchoServer(name: "firehose", greeting: String(repeating: "x", count: bytes), mode: .greetHalfCloseThenRead)
        }
    }

    @Test(arguments: ["copy", "splice"])
    func slowReadersDoNotStarveOtherConnections(dataPath: String) throws {
        let hose = try Firehose(bytes: 8 << 20)
        let echo = try EchoServer(name: "echo")
        let port = try freePort(), port2 = try freePort()
        // One shard, 64 buffers of 16 KiB; each slow connection may hold about 8.
        let yaml = """
        shards: 1
        limits: { buffer_bytes: 16KiB, buffers_per_shard: 64, max_queued_buffers: 8, data_path: \(dataPath) }
        listeners:
          - { name: hose, address: "127.0.0.1:\(port)", cluster: hose }
          - { name: echo, address: "127.0.0.1:\(port2)", cluster: echo }
        clusters:
          - { name: hose, endpoints: [{ address: "\(hose.server.address)" }] }
          - { name: echo, endpoints: [{ address: "\(echo.address)" }] }
        """
        let weir = try WeirProcess(yaml: yaml)
        defer { weir.stop(); hose.server.stop(); echo.stop() }
        // Six clients that read nothing yet (6 x 8 = 48 of 64 buffers): their upstream keeps sending.
        let slow = try (0..<6).map { _ in try TestClient(loopback(port), timeoutSeconds: 10) }
        usleep(300_000)
        // Meanwhile other connections on the same shard still move data.
        for seed in 1...5 {
            let intact = echoOnce(loopback(port2), pseudoRandomBytes(200_000, seed: UInt64(seed)))
            #expect(intact, "echo \(seed) while six readers stall")
        }
        // And the slow ones get every byte once they read.
        for c in slow {
            let (bytes, eof) = c.readToEnd()
            #expect(bytes.count == 8 << 20)
            #expect(eof)
        }
    }

    @Test func aPoolThatRunsDryRecoversWithoutLosingBytes() throws {
        let echo = try EchoServer(name: "echo")
        let port = try freePort()
        // 16 buffers for 6 concurrent 1 MiB echoes: the ring runs dry again and again.
        let yaml = """
        shards: 1
        limits: { buffer_bytes: 4KiB, buffers_per_shard: 16, max_queued_buffers: 8 }
        listeners:
          - { name: echo, address: "127.0.0.1:\(port)", cluster: echo }
        clusters:
          - { name: echo, endpoints: [{ address: "\(echo.address)" }] }
        """
        let weir = try WeirProcess(yaml: yaml)
        defer { weir.stop(); echo.stop() }
        let ok = Atomic<Int>(0), done = Atomic<Int>(0)
        for seed in 1...6 {
            spawnThread {
                if echoOnce(loopback(port), pseudoRandomBytes(1 << 20, seed: UInt64(seed)), timeoutSeconds: 20) { ok.add(1, ordering: .relaxed) }
                done.add(1, ordering: .releasing)
            }
        }
        let deadline = Date().addingTimeInterval(60)
        while done.load(ordering: .acquiring) < 6 && Date() < deadline { usleep(20_000) }
        #expect(ok.load(ordering: .relaxed) == 6)
        weir.stop()
        // The test is only worth something if the ring really ran dry.
        let dry = weir.log.components(separatedBy: "buffer ring dry ").last?.prefix { $0.isNumber } ?? ""
        #expect((Int(dry) ?? 0) > 0, "buffer ring dry \(dry)")
    }
}
