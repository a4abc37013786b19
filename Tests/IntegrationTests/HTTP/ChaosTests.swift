// Hostile traffic through the real binary (Support/chaos.py): an upstream that resets, cuts
// bodies short, answers 1xx, closes after answering and closes idle pooled connections, and
// clients that pipeline, abandon requests and reset, each checking that every answer carries
// its own request's id. Seeded; the outcome must hold whatever the timing.
import Foundation
import Testing
import WeirCore
import WeirDemo

/// chaos.py's upstream in its own process.
final class ChaosUpstream {
    private let server: SupportServer
    var port: UInt16 { server.port }
    init() throws { server = try SupportServer(script: "chaos.py", ["upstream"], what: "the chaos upstream") }
}

/// Bounded: 3 s and 4 clients per seed, so the suite's other tests (which run beside it) keep
/// their share of this 2-core machine; longer runs with more clients are for by hand
/// (`chaos.py client PORT SEED SECONDS CLIENTS`).
@Suite(.serialized) struct ChaosTests {
    /// Seeds 1 and 2 in plaintext; seed 3 with TLS terminated by Weir.
    @Test(arguments: [1, 2, 3])
    func everyAnswerIsItsOwnRequestsUnderChaos(seed: Int) throws {
        let up = try ChaosUpstream()
        let certs = seed == 3 ? try TestCertificates() : nil
        let tls = certs.map { "    tls: { certificates: [{ cert: \($0.path("a.pem")), key: \($0.path("a.key")) }] }\n" } ?? ""
        let weir = try WeirProcess(yaml: """
            shards: 2
            admin: { address: 127.0.0.3:0 }
            listeners:
              - name: web
                address: "127.0.0.1:0"
                protocol: http
                cluster: up
            \(tls)clusters:
              - { name: up, endpoints: [{ address: "127.0.0.1:\(up.port)" }] }
            """)
        defer { weir.stop() }
        let port = try weir.port("web")
        let (status, output) = try runProcess("/usr/bin/python3", [repositoryRoot.appendingPathComponent("Tests/IntegrationTests/Support/chaos.py").path,
                                                                   "client", "\(port)", "\(seed)", "3", "4"] + (certs.map { [$0.path("ca.pem")] } ?? []))
        #expect(status == 0, "seed \(seed): \(output)")
        #expect(output.contains("\"ok:200\""), "requests flowed: \(output)")
        #expect(weir.process.isRunning)
        // Every connection ends: nothing is left half-open on either side.
        let adminAddress = try weir.adminAddress()
        var text = ""
        let settled = secondsUntil(limit: 5) {
            text = admin(adminAddress, "GET", "/stats/prometheus").1
            return text.contains("weir_downstream_connections_active{listener=\"web\"} 0")
                && text.contains("weir_upstream_connections_active{cluster=\"up\",endpoint=\"127.0.0.1:\(up.port)\"} 0")
        }
        #expect(settled != nil, "\(text.split(separator: "\n").filter { $0.contains("_active") })")
    }
}
