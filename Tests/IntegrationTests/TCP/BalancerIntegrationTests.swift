// Balancers through the real binary: hashing keeps a client on one endpoint, least request
// avoids the endpoint holding connections.
import Foundation
import Testing
import WeirCore
import WeirDemo

@Suite(.serialized) struct BalancerIntegrationTests {
    @Test(arguments: ["ring_hash", "maglev"])
    func theSameSourceIPLandsOnTheSameEndpoint(balancer: String) throws {
        let ups = try ["a", "b", "c", "d"].map { try EchoServer(name: $0, greeting: $0) }
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: ups.map { ($0.address, 1) })
            .replacingOccurrences(of: "balancer: round_robin", with: "balancer: \(balancer)"))
        defer { weir.stop(); ups.forEach { $0.stop() } }
        let port = try weir.port("front")
        var chosen: [String: String] = [:]
        // Twenty clients, each its own loopback address, three connections each, across shards.
        for host in 1...20 {
            let source = SocketAddress(ipv4: 127, 0, 0, UInt8(host), port: 0)
            var seen = Set<String>()
            for _ in 0..<3 {
                let c = try TestClient(loopback(port), timeoutSeconds: 5, from: source)
                seen.insert(String(decoding: c.read(count: 1), as: UTF8.self))
            }
            #expect(seen.count == 1, "127.0.0.\(host) went to \(seen)")
            chosen["127.0.0.\(host)"] = seen.first
        }
        // And different clients do spread.
        #expect(Set(chosen.values).count >= 3, "\(chosen)")
    }

    @Test func aTCPListenerSplitsConnectionsAcrossClustersByWeight() throws {
        let blue = try EchoServer(name: "blue", greeting: "B"), green = try EchoServer(name: "green", greeting: "G")
        let port = try freePort()
        let weir = try WeirProcess(yaml: """
            shards: 2
            listeners:
              - name: db
                address: 127.0.0.1:\(port)
                weighted_clusters: [{ cluster: blue, weight: 3 }, { cluster: green, weight: 1 }]
            clusters:
              - { name: blue, endpoints: [{ address: \(blue.address) }] }
              - { name: green, endpoints: [{ address: \(green.address) }] }
            """)
        defer { weir.stop(); blue.stop(); green.stop() }
        var seen: [String: Int] = [:]
        for _ in 0..<400 {
            let c = try TestClient(loopback(port), timeoutSeconds: 5)
            seen[String(decoding: c.read(count: 1), as: UTF8.self), default: 0] += 1
        }
        // 3:1 of 400 is 300:100; a binomial spread stays well within +-45.
        #expect(abs((seen["B"] ?? 0) - 300) < 45 && (seen["B"] ?? 0) + (seen["G"] ?? 0) == 400, "\(seen)")
    }

    @Test func leastRequestSendsNewConnectionsAwayFromTheEndpointHoldingMany() throws {
        // "hold" keeps every connection open; "quick" says hello and closes.
        let hold = try EchoServer(name: "hold", greeting: "H")
        let quick = try EchoServer(name: "quick", greeting: "Q", mode: .greetHalfCloseThenRead)
        let weir = try WeirProcess(yaml: tcpConfig(port: 0, endpoints: [(hold.address, 1), (quick.address, 1)],
                                                   cluster: "    balancer_options: { choice_count: 4 }")
            .replacingOccurrences(of: "balancer: round_robin", with: "balancer: least_request"), arguments: ["--shards", "1"])
        defer { weir.stop(); hold.stop(); quick.stop() }
        let port = try weir.port("front")
        var held: [TestClient] = []
        var toHold = 0
        for _ in 0..<30 {
            let c = try TestClient(loopback(port), timeoutSeconds: 5)
            if c.read(count: 1) == Array("H".utf8) {
                toHold += 1
                held.append(c)
            } else {
                // Finish the quick one so its connection ends and stops counting.
                _ = c.readToEnd()
                c.halfClose()
            }
        }
        // Round robin would give 15 each; with 4 choices out of 2 endpoints, "hold" wins only
        // when every draw is "hold" (1 in 16) once it has more active connections.
        #expect(toHold <= 9, "hold got \(toHold) of 30")
        #expect(held.count == toHold)

    }

    @Test func leastRequestKeepsCountingOpenConnectionsAcrossAReload() throws {
        // Ten connections held on h while it is the only endpoint; then a reload adds q. The new
        // balancer must know h already carries ten, so new connections fill q first: about 15
        // of the next 20 to q. A balancer that forgot would split them 10/10.
        let h = try EchoServer(name: "h", greeting: "H"), q = try EchoServer(name: "q", greeting: "Q")
        func config(_ ups: [EchoServer]) -> String {
            tcpConfig(port: 0, endpoints: ups.map { ($0.address, 1) }, cluster: "    balancer_options: { choice_count: 4 }")
                .replacingOccurrences(of: "balancer: round_robin", with: "balancer: least_request")
        }
        let weir = try WeirProcess(yaml: config([h]), arguments: ["--shards", "1"])
        defer { weir.stop(); h.stop(); q.stop() }
        let port = try weir.port("front")
        var held: [TestClient] = []
        for _ in 0..<10 {
            let c = try TestClient(loopback(port), timeoutSeconds: 5)
            #expect(c.read(count: 1) == Array("H".utf8))
            held.append(c)
        }
        try weir.rewrite(config([h, q]))
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("generation 2 applied by all"))
        var toH = 0
        for _ in 0..<20 {
            let c = try TestClient(loopback(port), timeoutSeconds: 5)
            if c.read(count: 1) == Array("H".utf8) { toH += 1 }
            held.append(c)
        }
        #expect(toH <= 7, "h got \(toH) of 20 after the reload")
    }
}
