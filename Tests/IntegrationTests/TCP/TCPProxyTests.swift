// Black-box tests of TCP passthrough: the real weir binary, real upstream servers and real
// clients on 127.0.0.1, each bounded in time.
import Foundation
import Testing
import WeirCore
import WeirDemo

func tcpConfig(port: UInt16, endpoints: [(SocketAddress, Int)], extraListener: String = "", cluster: String = "",
               listener: String = "", top: String = "") -> String {
    """
    \(top)
    listeners:
      - name: front
        address: 127.0.0.1:\(port)
        protocol: tcp
        cluster: back
    \(listener)
    \(extraListener)
    clusters:
      - name: back
        balancer: round_robin
        connect_timeout: 1s
    \(cluster)
        endpoints:
    \(endpoints.map { "      - { address: \"\($0.0)\", weight: \($0.1) }" }.joined(separator: "\n"))
    """
}

@Suite(.serialized) struct TCPProxyTests {
    @Test(arguments: ["copy", "splice"])
    func oneMebibyteArrivesIntactInBothDirections(dataPath: String) throws {
        let up = try EchoServer(name: "a")
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(up.address, 1)], top: "limits: { data_path: \(dataPath) }"))
        defer { weir.stop(); up.stop() }
        let port = try weir.port("front")
        for seed in 1...3 {
            let intact = echoOnce(loopback(port), pseudoRandomBytes(1 << 20, seed: UInt64(seed)))
            #expect(intact, "1 MiB echo \(seed)")
        }
        #expect(up.bytesReceived == 3 << 20)
    }

    @Test func ipv6ListenersAndEndpointsWork() throws {
        let up = try EchoServer(name: "v6", host: "[::1]", greeting: "6")
        let port = try freePort()
        let weir = try WeirProcess(yaml: tcpConfig(port: port, endpoints: [(up.address, 1)])
            .replacingOccurrences(of: "address: 127.0.0.1:\(port)", with: "address: \"[::1]:\(port)\""))
        defer { weir.stop(); up.stop() }
        let front = try SocketAddress.parse("[::1]:\(port)")
        #expect(greetingThrough(front, length: 1) == "6")
        let intact = echoOnce(front, pseudoRandomBytes(300_000, seed: 6), greeting: 1)
        #expect(intact)
    }

    @Test func roundRobinSpreadsConnectionsExactlyByWeightOnOneShard() throws {
        let a = try EchoServer(name: "a", greeting: "a"), b = try EchoServer(name: "b", greeting: "b")
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(a.address, 3), (b.address, 1)]), arguments: ["--shards", "1"])
        defer { weir.stop(); a.stop(); b.stop() }
        let port = try weir.port("front")
        var seen: [String] = []
        for _ in 0..<40 { seen.append(greetingThrough(loopback(port), length: 1) ?? "?") }
        #expect(seen.filter { $0 == "a" }.count == 30)
        #expect(seen.filter { $0 == "b" }.count == 10)
        // Smooth: never more than three a's in a row.
        #expect(!seen.joined().contains("aaaa"))
    }

    @Test func roundRobinHoldsWeightsAcrossTwoShards() throws {
        let a = try EchoServer(name: "a", greeting: "a"), b = try EchoServer(name: "b", greeting: "b")
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(a.address, 3), (b.address, 1)]), arguments: ["--shards", "2"])
        defer { weir.stop(); a.stop(); b.stop() }
        let port = try weir.port("front")
        var aCount = 0
        for _ in 0..<200 where greetingThrough(loopback(port), length: 1) == "a" { aCount += 1 }
        // Each shard keeps the exact ratio over whole cycles of 4; at most 3 picks of a partial
        // cycle per shard can lean one way.
        #expect(abs(aCount - 150) <= 6, "a got \(aCount) of 200")
    }

    @Test(arguments: ["copy", "splice"])
    func aClientHalfCloseReachesTheUpstreamWhileTheWayBackStaysOpen(dataPath: String) throws {
        let up = try EchoServer(name: "r", mode: .replyAfterEOF)
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(up.address, 1)], top: "limits: { data_path: \(dataPath) }"))
        defer { weir.stop(); up.stop() }
        let port = try weir.port("front")
        let c = try TestClient(loopback(port), timeoutSeconds: 5)
        #expect(c.write(pseudoRandomBytes(100_000, seed: 9)))
        c.halfClose()
        let (reply, eof) = c.readToEnd()
        #expect(String(decoding: reply, as: UTF8.self) == "received 100000")
        #expect(eof)
    }

    @Test(arguments: ["copy", "splice"])
    func anUpstreamHalfCloseReachesTheClientWhichCanStillSend(dataPath: String) throws {
        let up = try EchoServer(name: "h", greeting: "bye", mode: .greetHalfCloseThenRead)
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(up.address, 1)], top: "limits: { data_path: \(dataPath) }"))
        defer { weir.stop(); up.stop() }
        let port = try weir.port("front")
        let c = try TestClient(loopback(port), timeoutSeconds: 5)
        let (greeting, eof) = c.readToEnd()
        #expect(String(decoding: greeting, as: UTF8.self) == "bye")
        #expect(eof, "the upstream's FIN reached the client")
        #expect(c.write(pseudoRandomBytes(50_000, seed: 3)))
        c.halfClose()
        let deadline = Date().addingTimeInterval(5)
        while up.bytesReceived < 50_000 && Date() < deadline { usleep(10_000) }
        #expect(up.bytesReceived == 50_000)
    }

    @Test func aDeadUpstreamIsSkipped() throws {
        let live = try EchoServer(name: "live", greeting: "L")
        let deadPort = try freePort()
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(loopback(deadPort), 1), (live.address, 1)]))
        defer { weir.stop(); live.stop() }
        let port = try weir.port("front")
        for _ in 0..<10 { #expect(greetingThrough(loopback(port), length: 1) == "L") }
        #expect(live.connections == 10)
    }

    @Test func aHangingConnectTimesOutAndMovesOn() throws {
        // A listener with backlog 0 and one unaccepted connection drops further SYNs.
        let hole = try EchoServer(name: "hole")
        hole.stop()
        let holeFD = try blackHole()
        defer { close(holeFD.fd) ; close(holeFD.filler) }
        let live = try EchoServer(name: "live", greeting: "L")
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(holeFD.address, 1), (live.address, 1)])
            .replacingOccurrences(of: "connect_timeout: 1s", with: "connect_timeout: 200ms"), arguments: ["--shards", "1"])
        defer { weir.stop(); live.stop() }
        let port = try weir.port("front")
        let start = Date()
        #expect(greetingThrough(loopback(port), length: 1) == "L")  // goes to the hole first
        #expect(Date().timeIntervalSince(start) >= 0.18)
        #expect(Date().timeIntervalSince(start) < 3)
    }

    @Test(arguments: ["copy", "splice"])
    func anIdleConnectionIsClosedAfterIdleTimeout(dataPath: String) throws {
        let up = try EchoServer(name: "a", greeting: "a")
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(up.address, 1)], listener: "    idle_timeout: 300ms",
                                                   top: "limits: { data_path: \(dataPath) }"))
        defer { weir.stop(); up.stop() }
        let port = try weir.port("front")
        let c = try TestClient(loopback(port), timeoutSeconds: 5)
        #expect(c.read(count: 1) == Array("a".utf8))
        let start = Date()
        let (_, eof) = c.readToEnd()
        #expect(eof)
        let waited = Date().timeIntervalSince(start)
        #expect(waited >= 0.25 && waited < 2.5, "closed after \(waited)s")
    }

    @Test func sighupWithAChangedConfigMovesNewConnectionsAndKeepsOldOnes() throws {
        let a = try EchoServer(name: "a", greeting: "a"), b = try EchoServer(name: "b", greeting: "b")
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(a.address, 1)]))
        defer { weir.stop(); a.stop(); b.stop() }
        let port = try weir.port("front")
        let old = try TestClient(loopback(port), timeoutSeconds: 5)
        #expect(old.read(count: 1) == Array("a".utf8))
        try weir.rewrite(tcpConfig(port: 0, endpoints: [(b.address, 1)]))
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("generation 2 applied by all"))
        for _ in 0..<5 { #expect(greetingThrough(loopback(port), length: 1) == "b") }
        // The connection made before the reload still talks to a.
        #expect(old.write(Array("ping".utf8)))
        #expect(old.read(count: 4) == Array("ping".utf8))
    }

    @Test func watchConfigReloadsWhenTheFileChanges() throws {
        let a = try EchoServer(name: "a", greeting: "a"), b = try EchoServer(name: "b", greeting: "b")
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(a.address, 1)], top: "watch_config: true"))
        defer { weir.stop(); a.stop(); b.stop() }
        let port = try weir.port("front")
        try weir.rewrite(tcpConfig(port: 0, endpoints: [(b.address, 1)], top: "watch_config: true"))
        #expect(weir.waitForLog("generation 2 applied by all", seconds: 5))
        #expect(weir.log.contains("watch_config:"))
        #expect(greetingThrough(loopback(port), length: 1) == "b")
    }

    @Test func aBadConfigIsRefusedAndTheOldOneKeepsServing() throws {
        let a = try EchoServer(name: "a", greeting: "a")
        let good = tcpConfig(port: 0, endpoints: [(a.address, 1)])
        let weir = try WeirProcess(yaml: good)
        defer { weir.stop(); a.stop() }
        let port = try weir.port("front")
        try weir.rewrite(good.replacingOccurrences(of: "weight: 1", with: "weight: -4"))
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("reload refused: 1 error(s); still serving generation 1"))
        #expect(weir.log.contains("weir.yaml:15:"))
        #expect(greetingThrough(loopback(port), length: 1) == "a")

        // A listener on an address someone else holds is refused whole, too.
        let squatter = try EchoServer(name: "squatter")
        defer { squatter.stop() }
        try weir.rewrite(tcpConfig(port: 0, endpoints: [(a.address, 1)],
                                   extraListener: "  - { name: taken, address: \"\(squatter.address)\", cluster: back }"))
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("address in use"))
        #expect(weir.waitForLog("still serving generation 1"))
        #expect(greetingThrough(loopback(port), length: 1) == "a")
    }

    @Test func aReloadOpensAnAddedListenerAndClosesARemovedOne() throws {
        let a = try EchoServer(name: "a", greeting: "a")
        let port = try freePort(), port2 = try freePort()
        let base = tcpConfig(port: port, endpoints: [(a.address, 1)])
        let weir = try WeirProcess(yaml: base)
        defer { weir.stop(); a.stop() }
        try weir.rewrite(tcpConfig(port: port, endpoints: [(a.address, 1)],
                                   extraListener: "  - { name: second, address: \"127.0.0.1:\(port2)\", cluster: back }"))
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("generation 2 applied by all"))
        #expect(greetingThrough(loopback(port2), length: 1) == "a")
        try weir.rewrite(base)
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("generation 3 applied by all"))
        #expect((try? TestClient(loopback(port2), timeoutSeconds: 1)) == nil, "the removed listener no longer accepts")
        #expect(greetingThrough(loopback(port), length: 1) == "a")
    }

    @Test func sigtermStopsAcceptingAndLetsOpenConnectionsFinish() throws {
        let a = try EchoServer(name: "a", greeting: "a")
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(a.address, 1)]))
        defer { weir.stop(); a.stop() }
        let port = try weir.port("front")
        let open = try TestClient(loopback(port), timeoutSeconds: 5)
        #expect(open.read(count: 1) == Array("a".utf8))
        weir.signal(SIGTERM)
        #expect(weir.waitForLog("draining"))
        usleep(100_000)
        #expect((try? TestClient(loopback(port), timeoutSeconds: 1)) == nil, "no new connections while draining")
        #expect(open.write(Array("still here".utf8)))
        #expect(open.read(count: 10) == Array("still here".utf8))
        open.halfClose()
        #expect(open.readToEnd().eof)
        #expect(weir.waitForExit(seconds: 5) == 0)
        #expect(weir.log.contains("every connection ended on its own"))
    }

    @Test func drainTimeoutCutsWhatIsStillOpen() throws {
        let a = try EchoServer(name: "a", greeting: "a")
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(a.address, 1)], top: "drain_timeout: 500ms"))
        defer { weir.stop(); a.stop() }
        let port = try weir.port("front")
        let open = try TestClient(loopback(port), timeoutSeconds: 5)
        #expect(open.read(count: 1) == Array("a".utf8))
        weir.signal(SIGTERM)
        #expect(weir.waitForExit(seconds: 5) == 0)
        #expect(weir.log.contains("cut 1 connection(s)"))
        #expect(open.readToEnd().eof)
    }

    @Test func startingOnAnAddressInUseFailsClearly() throws {
        let squatter = try EchoServer(name: "squatter")
        defer { squatter.stop() }
        let a = try EchoServer(name: "a")
        defer { a.stop() }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-inuse-\(UUID().uuidString).yaml").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try tcpConfig(port: squatter.address.port, endpoints: [(a.address, 1)]).write(toFile: dir, atomically: true, encoding: .utf8)
        let (status, output) = try runWeir(["run", "--config", dir])
        #expect(status == 1)
        #expect(output.contains("address in use"))
    }
}

/// A listener whose accept queue is full: connects to it hang.
func blackHole() throws -> (fd: Int32, filler: Int32, address: SocketAddress) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    let any = loopback(0)
    _ = any.withSockAddr { bind(fd, $0, $1) }
    listen(fd, 0)
    var storage = sockaddr_storage()
    var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
    _ = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    let address = withUnsafePointer(to: &storage) { SocketAddress(storage: $0)! }
    let filler = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    _ = address.withSockAddr { connect(filler, $0, $1) }
    return (fd, filler, address)
}
