// Health checking through the real binary: active HTTP and TCP probes, panic, passive ejection
// with max_ejection_percent, and probes that do not multiply with shards.
import Foundation
import Testing
import WeirCore
import WeirDemo

@Suite(.serialized) struct HealthTests {
    /// Upstreams a (127.0.0.1) and b (127.0.0.2) with HTTP health servers on one shared port.
    struct Pair {
        let a: EchoServer, b: EchoServer, ha: HealthServer, hb: HealthServer
        init() throws {
            a = try EchoServer(name: "a", host: "127.0.0.1", greeting: "a")
            b = try EchoServer(name: "b", host: "127.0.0.2", greeting: "b")
            ha = try HealthServer(host: "127.0.0.1")
            hb = try HealthServer(host: "127.0.0.2", port: ha.address.port)
        }
        func stop() { a.stop(); b.stop(); ha.stop(); hb.stop() }
        func config(port: UInt16, interval: String = "200ms", timeout: String = "100ms", extra: String = "") -> String {
            tcpConfig(port: port, endpoints: [(a.address, 1), (b.address, 1)], cluster: """
                health_check: { type: http, path: /healthz, interval: \(interval), timeout: \(timeout), jitter: 0%, unhealthy_threshold: 2, healthy_threshold: 2, port: \(ha.address.port) }
            \(extra)
            """)
        }
    }

    func greetings(_ port: UInt16, _ n: Int) -> [String] { (0..<n).map { _ in greetingThrough(loopback(port), length: 1) ?? "?" } }

    @Test func aFailingHTTPHealthCheckRemovesTheEndpointAndItsRecoveryBringsItBack() throws {
        let p = try Pair()
        let port = try freePort()
        let weir = try WeirProcess(yaml: p.config(port: port))
        defer { weir.stop(); p.stop() }
        #expect(Set(greetings(port, 6)) == ["a", "b"])
        p.ha.status.store(503, ordering: .relaxed)
        // Bound from the issue: interval x unhealthy_threshold + timeout = 0.5 s, plus a turn.
        let gone = secondsUntil(limit: 5) { greetings(port, 4).allSatisfy { $0 == "b" } }
        // 150 ms of slack covers the loop turn, this test's 20 ms polling and its connections.
        #expect(gone != nil && gone! < 0.5 + 0.15, "a still chosen after \(gone ?? -1)s")
        #expect(weir.waitForLog("endpoint \(p.a.address) healthy -> unhealthy (2 consecutive failed probes, last: status 503)"))
        p.ha.status.store(200, ordering: .relaxed)
        let back = secondsUntil(limit: 5) { greetings(port, 4).contains("a") }
        // Bound from the issue: interval x healthy_threshold = 0.4 s, plus the same slack.
        #expect(back != nil && back! < 0.4 + 0.15, "a back after \(back ?? -1)s")
    }

    @Test func whenMostEndpointsAreDownThePanicThresholdBalancesAcrossAll() throws {
        let p = try Pair()
        let port = try freePort()
        let weir = try WeirProcess(yaml: p.config(port: port))
        defer { weir.stop(); p.stop() }
        p.ha.status.store(500, ordering: .relaxed)
        p.hb.status.store(500, ordering: .relaxed)
        #expect(weir.waitForLog("is in panic"))
        #expect(Set(greetings(port, 8)) == ["a", "b"])
        weir.stop()
        #expect(weir.log.contains("panics 1"))
    }

    @Test func reloadsThatChangeTheChecksWhileProbesRunKeepChecking() throws {
        let p = try Pair()
        let port = try freePort()
        let weir = try WeirProcess(yaml: p.config(port: port, interval: "50ms", timeout: "40ms"))
        defer { weir.stop(); p.stop() }
        for i in 0..<10 {
            try weir.rewrite(p.config(port: port, interval: i % 2 == 0 ? "60ms" : "50ms", timeout: "40ms"))
            weir.signal(SIGHUP)
            #expect(weir.waitForLog("generation \(i + 2) applied by all"))
        }
        let before = p.ha.probes.load(ordering: .relaxed)
        p.ha.status.store(503, ordering: .relaxed)
        #expect(weir.waitForLog("endpoint \(p.a.address) healthy -> unhealthy", seconds: 3))
        #expect(p.ha.probes.load(ordering: .relaxed) > before)
    }

    @Test func probesPerIntervalDoNotGrowWithShards() throws {
        var counts: [Int] = []
        for shards in [1, 4] {
            let p = try Pair()
            let port = try freePort()
            let weir = try WeirProcess(yaml: p.config(port: port, interval: "100ms", timeout: "50ms"), arguments: ["--shards", "\(shards)"])
            usleep(300_000)
            let before = p.ha.probes.load(ordering: .relaxed)
            usleep(1_000_000)
            counts.append(p.ha.probes.load(ordering: .relaxed) - before)
            weir.stop(); p.stop()
        }
        // About ten per second either way: one checker per process, not one per shard.
        #expect(counts.allSatisfy { (7...13).contains($0) }, "\(counts)")
        #expect(abs(counts[0] - counts[1]) <= 3, "\(counts)")
    }

    /// A reload that replaces the probe set while probes are in flight retires their receive
    /// buffers (the kernel may still write into them) and frees them once the last completion of
    /// that set arrives; they used to be kept until exit, one set per such reload.
    @Test func aReplacedProbeSetFreesItsBuffersOnceItsCompletionsCame() throws {
        // Never answers while the connection is open: every probe waits in its recv.
        let silent = try EchoServer(name: "silent", mode: .replyAfterEOF)
        func yaml(_ interval: String) -> String {
            tcpConfig(port: 0, endpoints: [(silent.address, 1)], cluster: """
                    health_check: { type: tcp, send: "ping", expect: "pong", interval: \(interval), timeout: 1900ms }
                """)
        }
        // The first probe starts within half an interval and then waits (up to its timeout).
        let weir = try WeirProcess(yaml: yaml("2s"), arguments: ["--log-level", "debug"])
        defer { weir.stop(); silent.stop() }
        let deadline = Date().addingTimeInterval(5)
        while silent.connections < 1 && Date() < deadline { usleep(10_000) }
        #expect(silent.connections >= 1, "a probe is connected and waiting")
        try weir.rewrite(yaml("3s"))
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("generation 2 applied by all"))
        #expect(weir.waitForLog("receive buffers of a replaced probe set are freed", seconds: 5), "\(weir.log)")
    }

    @Test func aTCPHealthCheckNoticesADeadUpstream() throws {
        let a = try EchoServer(name: "a", greeting: "a"), b = try EchoServer(name: "b", greeting: "b")
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(a.address, 1), (b.address, 1)], cluster: """
                health_check: { type: tcp, interval: 200ms, timeout: 100ms, jitter: 0%, unhealthy_threshold: 2 }
            """))
        defer { weir.stop(); a.stop(); b.stop() }
        let port = try weir.port("front")
        b.stop()
        #expect(weir.waitForLog("endpoint \(b.address) healthy -> unhealthy", seconds: 3))
        // Structured metadata rides on the same line, for log pipelines.
        #expect(weir.log.contains("cluster=back endpoint=\(b.address) event=health from=healthy to=unhealthy"))
    }

    @Test func anUpstreamThatDiesUnderSteadyLoadCostsNoNewConnection() throws {
        let a = try EchoServer(name: "a", greeting: "a"), b = try EchoServer(name: "b", greeting: "b")
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(a.address, 1), (b.address, 1)], cluster: """
                health_check: { type: tcp, interval: 200ms, timeout: 100ms, unhealthy_threshold: 2 }
                outlier_detection: { consecutive_failures: 2 }
            """))
        defer { weir.stop(); a.stop() }
        let port = try weir.port("front")
        var failed = 0, toA = 0
        for i in 0..<300 {
            if i == 100 { b.stop() }  // b stops accepting; connections it already serves finish
            switch greetingThrough(loopback(port), length: 1) {
            case "a": toA += 1
            case "b": break
            default: failed += 1
            }
        }
        #expect(failed == 0)
        #expect(toA >= 200, "after b died everything went to a (\(toA))")
        weir.stop()
        // Passive ejection took b out after a couple of refused connects per shard, instead of
        // every second connection paying a refused connect until the active check caught up.
        let failures = Int(weir.log.components(separatedBy: "connect failures ").last?.prefix { $0.isNumber } ?? "") ?? -1
        // Without it, about half of the 200 connections after b died would fail (till the active
        // check's two 200 ms intervals); the bound leaves room for a busy machine (a report
        // reaches the health checker's thread and comes back as a snapshot: 34 seen under load).
        #expect((1...50).contains(failures), "connect failures \(failures)")
        #expect(weir.log.contains("-> ejected"))
    }

    @Test func anEjectedEndpointReturnsWhenItsEjectionTimeIsOver() throws {
        let a = try EchoServer(name: "a", greeting: "a")
        let bPort = try freePort()
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(a.address, 1), (loopback(bPort), 1)], cluster: """
                outlier_detection: { consecutive_failures: 1, base_ejection_time: 400ms, max_ejection_percent: 50 }
            """), arguments: ["--shards", "1"])
        defer { weir.stop(); a.stop() }
        let port = try weir.port("front")
        // b refuses: the first connection that tries it ejects it.
        for _ in 0..<4 { #expect(greetingThrough(loopback(port), length: 1) == "a") }
        #expect(weir.waitForLog("endpoint \(loopback(bPort)) healthy -> ejected"))
        let b = try EchoServer(name: "b", port: bPort, greeting: "b")
        defer { b.stop() }
        let ejectedAt = Date()
        #expect(weir.waitForLog("endpoint \(loopback(bPort)) ejected -> healthy (ejection time over)", seconds: 3))
        #expect(Date().timeIntervalSince(ejectedAt) < 1.0)
        #expect(greetings(port, 4).contains("b"))
    }

    @Test func passiveEjectionStopsAtMaxEjectionPercent() throws {
        let live = try EchoServer(name: "live", greeting: "L")
        let dead = try (0..<3).map { _ in loopback(try freePort()) }
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: dead.map { ($0, 1) } + [(live.address, 1)], cluster: """
                connect_attempts: 4
                outlier_detection: { consecutive_failures: 1, base_ejection_time: 30s, max_ejection_percent: 50 }
            """), arguments: ["--shards", "1"])
        defer { weir.stop(); live.stop() }
        let port = try weir.port("front")
        for _ in 0..<12 { #expect(greetingThrough(loopback(port), length: 1) == "L") }
        #expect(weir.waitForLog("-> ejected", count: 2))
        #expect(weir.waitForLog("max_ejection_percent (50%) is reached"))
        #expect(weir.log.components(separatedBy: "-> ejected").count - 1 == 2)
    }
}
