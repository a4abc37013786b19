// The admin API through the real binary: readiness, Prometheus stats checked by a real parser
// against the traffic sent, cluster and config views, reload and drain over HTTP.
import Foundation
import Synchronization
import Testing
import WeirCore
import WeirDemo

/// One admin request to 127.0.0.1:`port`; (status, body).
func admin(_ port: UInt16, _ method: String, _ path: String) -> (Int, String) { admin(loopback(port), method, path) }

/// One admin request; (status, body).
func admin(_ address: SocketAddress, _ method: String, _ path: String) -> (Int, String) {
    guard let c = try? TestClient(address, timeoutSeconds: 5) else { return (0, "") }
    _ = c.write(Array("\(method) \(path) HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n".utf8))
    let text = String(decoding: c.readToEnd().bytes, as: UTF8.self)
    let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
    return (status, text.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n"))
}

/// Parses Prometheus text with prometheus_client and returns "name{labels}" -> value.
func parsePrometheus(_ text: String) throws -> [String: Double] {
    let python = repositoryRoot.appendingPathComponent(".build/venv-test/bin/python3").path
    guard FileManager.default.fileExists(atPath: python) else {
        throw LoopbackError(message: "no \(python): run scripts/setup-debian.sh --tests (it installs prometheus_client)")
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: python)
    p.arguments = ["-c", """
    import sys
    from prometheus_client.parser import text_string_to_metric_families
    for fam in text_string_to_metric_families(sys.stdin.read()):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            print(f"{s.name}{{{labels}}} {s.value}")
    """]
    let input = Pipe(), output = Pipe(), errors = Pipe()
    p.standardInput = input; p.standardOutput = output; p.standardError = errors
    try p.run()
    input.fileHandleForWriting.write(Data(text.utf8))
    try input.fileHandleForWriting.close()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else {
        throw LoopbackError(message: "prometheus_client refused the text: \(String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))")
    }
    var out: [String: Double] = [:]
    for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
        let parts = line.split(separator: " ")
        if parts.count == 2 { out[String(parts[0])] = Double(parts[1]) }
    }
    return out
}

@Suite(.serialized) struct AdminTests {
    func config(port: UInt16, adminPort: UInt16, _ ups: [EchoServer]) -> String {
        tcpConfig(port: port, endpoints: ups.map { ($0.address, 1) }, top: "admin: { address: 127.0.0.1:\(adminPort) }")
    }

    /// Both on port 0 (the admin API on 127.0.0.3, beside the listener on 127.0.0.1): the test
    /// reads what Weir bound from its log.
    func config(_ ups: [EchoServer]) -> String {
        tcpConfig(port: 0, endpoints: ups.map { ($0.address, 1) }, top: "admin: { address: 127.0.0.3:0 }")
    }

    /// Endpoints that come and go (EDS, reloads) leave the registry and the scrape once nothing
    /// counts against them; they used to stay for the life of the process.
    @Test func namesGoneFromTheConfigLeaveTheScrape() throws {
        let a = try EchoServer(name: "a", greeting: "a")
        func yaml(_ other: UInt16) -> String {
            tcpConfig(port: 0, endpoints: [(a.address, 1), (loopback(other), 1)], top: "admin: { address: 127.0.0.3:0 }")
        }
        let weir = try WeirProcess(yaml: yaml(21001))
        defer { weir.stop(); a.stop() }
        for g in 2...6 {
            try weir.rewrite(yaml(UInt16(21000 + g)))
            weir.signal(SIGHUP)
            #expect(weir.waitForLog("generation \(g) applied by all"))
        }
        let text = try runProcess("/usr/bin/curl", ["-s", "-m", "5", "http://127.0.0.3:\(try weir.adminPort())/stats/prometheus"]).1
        let series = text.split(separator: "\n").filter { $0.hasPrefix("weir_upstream_connections_total{") }
        #expect(series.count == 2, "the two endpoints of the running config: \(series)")
        #expect(series.contains { $0.contains("127.0.0.1:21006") } && !series.contains { $0.contains("127.0.0.1:21005") })
    }

    @Test func statsParseWithARealParserAndMatchTheTrafficSent() throws {
        let a = try EchoServer(name: "a", greeting: "a"), b = try EchoServer(name: "b", greeting: "b")
        let weir = try WeirProcess(yaml: config([a, b]), arguments: ["--shards", "2"])
        defer { weir.stop(); a.stop(); b.stop() }
        let port = try weir.port("front"), adminAddress = try weir.adminAddress()
        for _ in 0..<10 { #expect(echoOnce(loopback(port), Array("hello".utf8), greeting: 1)) }
        // The client sees its EOF a moment before weir frees the connection and adds its bytes:
        // scrape until the last one is counted (bounded).
        var m: [String: Double] = [:]
        let settled = secondsUntil(limit: 3) {
            let (status, text) = admin(adminAddress, "GET", "/stats/prometheus")
            m = (status == 200 ? try? parsePrometheus(text) : nil) ?? [:]
            return m["weir_downstream_connections_active{listener=\"front\"}"] == 0
        }
        #expect(settled != nil, "connections still active: \(m["weir_downstream_connections_active{listener=\"front\"}"] ?? -1)")
        #expect(m["weir_downstream_connections_total{listener=\"front\"}"] == 10)
        let toA = m["weir_upstream_connections_total{cluster=\"back\",endpoint=\"\(a.address)\"}"] ?? -1
        let toB = m["weir_upstream_connections_total{cluster=\"back\",endpoint=\"\(b.address)\"}"] ?? -1
        #expect(toA + toB == 10 && toA == Double(a.connections) && toB == Double(b.connections))
        let sent = (m["weir_upstream_bytes_sent_total{cluster=\"back\",endpoint=\"\(a.address)\"}"] ?? 0)
            + (m["weir_upstream_bytes_sent_total{cluster=\"back\",endpoint=\"\(b.address)\"}"] ?? 0)
        #expect(sent == 50, "5 bytes sent on each of 10 connections")
        #expect(m["weir_endpoint_available{cluster=\"back\",endpoint=\"\(a.address)\"}"] == 1)
        #expect(m["weir_config_generation{}"] == 1)
    }

    @Test func bytesOfAnOpenConnectionShowBeforeItEnds() throws {
        let a = try EchoServer(name: "a")
        let weir = try WeirProcess(yaml: config([a]))
        defer { weir.stop(); a.stop() }
        let port = try weir.port("front"), adminAddress = try weir.adminAddress()
        let c = try TestClient(loopback(port), timeoutSeconds: 5)
        #expect(c.write(Array(repeating: 7, count: 100_000)))
        #expect(c.read(count: 100_000).count == 100_000)
        let key = "weir_upstream_bytes_sent_total{cluster=\"back\",endpoint=\"\(a.address)\"}"
        var seen = 0.0
        let shown = secondsUntil(limit: 3) {
            seen = (try? parsePrometheus(admin(adminAddress, "GET", "/stats/prometheus").1))?[key] ?? 0
            return seen == 100_000
        }
        #expect(shown != nil, "\(key) = \(seen) while the connection is open")
        #expect(c.write(Array("x".utf8)))
    }

    @Test func readinessClustersConfigDumpAndHealthcheckFail() throws {
        let a = try EchoServer(name: "a")
        let weir = try WeirProcess(yaml: config([a]))
        defer { weir.stop(); a.stop() }
        let port = try weir.port("front"), adminAddress = try weir.adminAddress()
        #expect(admin(adminAddress, "GET", "/ready") == (200, "LIVE\n"))
        let (_, clusters) = admin(adminAddress, "GET", "/clusters?format=json")
        let parsed = try JSONSerialization.jsonObject(with: Data(clusters.utf8)) as? [String: Any]
        let list = parsed?["clusters"] as? [[String: Any]]
        #expect(list?.first?["name"] as? String == "back")
        #expect(admin(adminAddress, "GET", "/clusters").1.contains("\(a.address) weight=1 healthy"))
        let dump = try JSONSerialization.jsonObject(with: Data(admin(adminAddress, "GET", "/config_dump").1.utf8)) as? [String: Any]
        #expect(dump?["generation"] as? Int == 1)
        #expect(admin(adminAddress, "POST", "/healthcheck/fail").0 == 200)
        #expect(admin(adminAddress, "GET", "/ready") == (503, "FAILED\n"))
        #expect(admin(adminAddress, "POST", "/healthcheck/ok").0 == 200)
        #expect(admin(adminAddress, "GET", "/ready").0 == 200)
        #expect(admin(adminAddress, "GET", "/reload").0 == 405)
        #expect(admin(adminAddress, "GET", "/nope").0 == 404)
        #expect(admin(adminAddress, "HEAD", "/ready") == (200, ""), "HEAD: the head only")
    }

    @Test func reloadOverTheAdminAPIAppliesOrRefusesWithThePosition() throws {
        let a = try EchoServer(name: "a", greeting: "a"), b = try EchoServer(name: "b", greeting: "b")
        let port = try freePort(), adminPort = try freePort()
        let weir = try WeirProcess(yaml: config(port: port, adminPort: adminPort, [a]))
        defer { weir.stop(); a.stop(); b.stop() }
        try weir.rewrite(config(port: port, adminPort: adminPort, [b]))
        let (status, output) = try runWeir(["reload", "--config", weir.configPath])
        #expect(status == 0)
        #expect(output.contains("OK, generation 2"))
        #expect(greetingThrough(loopback(port), length: 1) == "b")
        try weir.rewrite(config(port: port, adminPort: adminPort, [b]).replacingOccurrences(of: "weight: 1", with: "weight: zero"))
        let (bad, why) = try runWeir(["reload", "--config", weir.configPath])
        #expect(bad == 1)
        #expect(why.contains("weir.yaml:") && why.contains("'weight' must be a whole number") && why.contains("still serving generation 2"))
        let m = try parsePrometheus(admin(adminPort, "GET", "/stats/prometheus").1)
        #expect(m["weir_reloads_total{result=\"success\"}"] == 1)
        #expect(m["weir_reloads_total{result=\"failure\"}"] == 1)
    }

    @Test func drainListenersOverTheAdminAPIStopsGracefully() throws {
        let a = try EchoServer(name: "a", greeting: "a")
        let weir = try WeirProcess(yaml: config([a]))
        defer { weir.stop(); a.stop() }
        let port = try weir.port("front"), adminAddress = try weir.adminAddress()
        let open = try TestClient(loopback(port), timeoutSeconds: 5)
        #expect(open.read(count: 1) == Array("a".utf8))
        #expect(admin(adminAddress, "POST", "/drain_listeners").0 == 200)
        #expect(weir.waitForLog("draining"))
        #expect(open.write(Array("x".utf8)) && open.read(count: 1) == Array("x".utf8))
        open.halfClose()
        _ = open.readToEnd()
        #expect(weir.waitForExit(seconds: 5) == 0)
        #expect(weir.log.contains("every connection ended on its own"))
    }

    @Test func aNonLoopbackAdminAddressNeedsAllowRemote() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("admin-\(UUID().uuidString).yaml").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try tcpConfig(port: 1000, endpoints: [(loopback(1001), 1)], top: "admin: { address: 0.0.0.0:9901 }").write(toFile: path, atomically: true, encoding: .utf8)
        let (status, output) = try runWeir(["check", "--config", path])
        #expect(status == 1)
        #expect(output.contains("set admin.allow_remote: true"))
    }
}

@Suite(.serialized) struct ReloadUnderLoadTests {
    @Test func twentyReloadsDuringSteadyTrafficLoseNothing() throws {
        let a = try EchoServer(name: "a"), b = try EchoServer(name: "b")
        let port = try freePort(), extra = try freePort()
        let one = tcpConfig(port: port, endpoints: [(a.address, 1)])
        let two = tcpConfig(port: port, endpoints: [(a.address, 1), (b.address, 2)],
                            extraListener: "  - { name: extra, address: \"127.0.0.1:\(extra)\", cluster: back }")
        let weir = try WeirProcess(yaml: one)
        defer { weir.stop(); a.stop(); b.stop() }
        let ok = Atomic<Int>(0), failed = Atomic<Int>(0), running = Atomic<Bool>(true), done = Atomic<Int>(0)
        for t in 0..<4 {
            spawnThread {
                let payload = pseudoRandomBytes(20_000, seed: UInt64(t + 1))
                while running.load(ordering: .acquiring) {
                    if echoOnce(loopback(port), payload) { ok.add(1, ordering: .relaxed) } else { failed.add(1, ordering: .relaxed) }
                }
                done.add(1, ordering: .releasing)
            }
        }
        for i in 0..<20 {
            try weir.rewrite(i % 2 == 0 ? two : one)
            weir.signal(SIGHUP)
            #expect(weir.waitForLog("generation \(i + 2) applied by all"), "reload \(i + 1)")
        }
        running.store(false, ordering: .releasing)
        while done.load(ordering: .acquiring) < 4 { usleep(5_000) }
        #expect(failed.load(ordering: .relaxed) == 0)
        #expect(ok.load(ordering: .relaxed) > 100)
        #expect(b.connections > 0, "the reloads that added b sent it traffic")
    }
}
