// Weir as an xDS data plane: a real management server (Python grpcio with Envoy's protos from
// xds-protos) on 127.0.0.1 feeds LDS, RDS, CDS and EDS; Weir serves traffic from them, follows
// updates, and NACKs what it cannot apply while the last good config keeps serving.
import Foundation
import Synchronization
import Testing
import WeirCore
import WeirDemo

final class LineLog: @unchecked Sendable {
    let lines = Mutex<[String]>([])
}

/// The management server (xds_server.py) in its own process: `push` sets a type's resources;
/// `requests` are the DiscoveryRequests Weir sent, one line each.
final class XDSControlPlane {
    let port: UInt16
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private let lines = LineLog()

    /// `port`: listen there (a restarted control plane), else on a free port.
    init(port wanted: UInt16 = 0, unixPath: String? = nil) throws {
        let python = repositoryRoot.appendingPathComponent(".build/venv-test/bin/python3").path
        guard FileManager.default.fileExists(atPath: python) else {
            throw LoopbackError(message: "no \(python): run scripts/setup-debian.sh --tests (it installs grpcio and xds-protos)")
        }
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [repositoryRoot.appendingPathComponent("Tests/IntegrationTests/Support/xds_server.py").path, unixPath.map { "unix:\($0)" } ?? "\(wanted)"]
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let handle = output.fileHandleForReading
        let box = lines
        spawnThread {
            var pending = Data()
            while true {
                let d = handle.availableData
                if d.isEmpty { return }
                pending.append(d)
                while let nl = pending.firstIndex(of: 10) {
                    let line = String(decoding: pending[pending.startIndex..<nl], as: UTF8.self)
                    pending.removeSubrange(pending.startIndex...nl)
                    box.lines.withLock { $0.append(line) }
                }
            }
        }
        let deadline = Date().addingTimeInterval(20)
        var found: UInt16? = nil
        while found == nil && Date() < deadline {
            found = lines.lines.withLock { $0.first { $0.hasPrefix("port ") } }.flatMap { UInt16($0.dropFirst(5)) }
            if found == nil { usleep(20_000) }
        }
        guard let found else { process.terminate(); throw LoopbackError(message: "the xDS server did not start") }
        port = found
    }

    func push(_ type: String, version: String, _ resources: String) {
        // One command per line: the JSON must not break across lines.
        let flat = resources.replacingOccurrences(of: "\n", with: " ")
        input.fileHandleForWriting.write(Data("{\"type\": \"\(type)\", \"version\": \"\(version)\", \"resources\": \(flat)}\n".utf8))
    }

    var requests: [String] { lines.lines.withLock { $0.filter { $0.hasPrefix("REQ ") } } }

    /// Waits until a request line satisfies `match`.
    @discardableResult
    func waitForRequest(seconds: Double = 15, _ match: (String) -> Bool) -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let l = requests.first(where: match) { return l }
            usleep(20_000)
        }
        return nil
    }

    func stop() {
        try? input.fileHandleForWriting.close()
        if process.isRunning { process.terminate(); process.waitUntilExit() }
    }

    deinit { stop() }
}

func xdsCluster(_ name: String, eds: Bool = true, lb: String = "ROUND_ROBIN") -> String {
    eds ? """
    {"name": "\(name)", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}, "lb_policy": "\(lb)", "connect_timeout": "1s"}
    """ : ""
}

func xdsEndpoints(_ name: String, _ ports: [UInt16]) -> String {
    """
    {"cluster_name": "\(name)", "endpoints": [{"lb_endpoints": [\(ports.map { "{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"127.0.0.1\", \"port_value\": \($0)}}}}" }.joined(separator: ","))]}]}
    """
}

func xdsListener(_ name: String, port: UInt16, routeConfig: String) -> String {
    """
    {"name": "\(name)", "address": {"socket_address": {"address": "127.0.0.1", "port_value": \(port)}},
     "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
       "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
       "stat_prefix": "\(name)", "rds": {"route_config_name": "\(routeConfig)", "config_source": {"ads": {}}},
       "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}
    """
}

func xdsRoutes(_ name: String, cluster: String) -> String {
    """
    {"name": "\(name)", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
      {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "from xds"}}},
      {"match": {"prefix": "/"}, "route": {"cluster": "\(cluster)"}}]}]}
    """
}

@Suite(.serialized) struct XDSTests {
    @Test func trafficFollowsTheControlPlaneAndBadUpdatesAreNACKed() throws {
        let cp = try XDSControlPlane()
        let a = try HTTPUpstream(name: "a"), b = try HTTPUpstream(name: "b")
        let port = try freePort(), adminPort = try freePort()
        let weir = try WeirProcess(yaml: """
            shards: 2
            admin: { address: 127.0.0.1:\(adminPort) }
            node: { id: "router~127.0.0.1~weir-test~local", cluster: test }
            xds: { address: "127.0.0.1:\(cp.port)", initial_fetch_timeout: 5s }
            """)
        defer { weir.stop() }
        #expect(cp.waitForRequest { $0.hasPrefix("REQ CDS") && $0.contains("node=router~127.0.0.1~weir-test~local") } != nil,
                "the first request carries the node")
        cp.push("CDS", version: "c1", "[\(xdsCluster("app"))]")
        #expect(cp.waitForRequest { $0.hasPrefix("REQ EDS") && $0.contains("names=app") } != nil, "EDS asks for the cluster's endpoints")
        cp.push("EDS", version: "e1", "[\(xdsEndpoints("app", [a.port]))]")
        cp.push("LDS", version: "l1", "[\(xdsListener("web", port: port, routeConfig: "routes"))]")
        #expect(cp.waitForRequest { $0.hasPrefix("REQ RDS") && $0.contains("names=routes") } != nil, "RDS asks for the listener's routes")
        #expect(weir.waitForLog("warming listener web"))
        #expect((try? TestClient(loopback(port), timeoutSeconds: 1)) == nil, "warming: no listener until its routes arrive")
        cp.push("RDS", version: "r1", "[\(xdsRoutes("routes", cluster: "app"))]")
        #expect(cp.waitForRequest { $0.hasPrefix("REQ RDS") && $0.contains("version=r1") && $0.contains("error=") && $0.hasSuffix("error=") } != nil,
                "RDS r1 is ACKed")
        #expect(weir.waitForLog("xds: ACK RDS version r1"))
        var r = try HTTPClient(port: port).request("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(r.status == 200 && r.text.hasPrefix("a /x"), "\(r.status) \(r.text)")
        r = try HTTPClient(port: port).request("GET /direct HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(r.text == "from xds")

        // An EDS update moves traffic, with no failed request while it happens.
        let failures = Atomic<Int>(0), served = Atomic<Int>(0), stop = Atomic<Bool>(false)
        let load = Thread {
            let c = try? HTTPClient(port: port)
            while !stop.load(ordering: .relaxed) {
                if let r = try? c?.request("GET /load HTTP/1.1\r\nHost: h\r\n\r\n"), r.status == 200 { served.add(1, ordering: .relaxed) }
                else { failures.add(1, ordering: .relaxed) }
            }
        }
        load.start()
        usleep(200_000)
        cp.push("EDS", version: "e2", "[\(xdsEndpoints("app", [b.port]))]")
        #expect(weir.waitForLog("xds: ACK EDS version e2"))
        usleep(300_000)
        stop.store(true, ordering: .relaxed)
        while !load.isFinished { usleep(10_000) }
        #expect(failures.load(ordering: .relaxed) == 0)
        #expect(served.load(ordering: .relaxed) > 10)
        r = try HTTPClient(port: port).request("GET /y HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(r.text.hasPrefix("b /y"), "traffic follows the new endpoints: \(r.text)")

        // Invalid updates are NACKed with a useful error_detail, and the old config keeps serving.
        cp.push("CDS", version: "c2", "[\(xdsCluster("app", lb: "CLUSTER_PROVIDED"))]")
        let nack = cp.waitForRequest { $0.hasPrefix("REQ CDS") && $0.contains("error=") && !$0.hasSuffix("error=") }
        #expect(nack?.contains("lb_policy") == true, "\(nack ?? "no NACK")")
        #expect(nack?.contains("version=c1") == true, "a NACK carries the last good version")
        cp.push("CDS", version: "c3", "[\(xdsCluster("app").replacingOccurrences(of: "\"connect_timeout\": \"1s\"", with: "\"connect_timeout\": \"1s\", \"per_connection_buffer_limit_bytes\": 1024"))]")
        let unsupported = cp.waitForRequest { $0.hasPrefix("REQ CDS") && $0.contains("perConnectionBufferLimitBytes") }
        #expect(unsupported?.contains("unsupported field") == true, "\(unsupported ?? "no NACK")")
        cp.push("LDS", version: "l-bad", "[\(xdsListener("web", port: port, routeConfig: "routes").replacingOccurrences(of: "\"address\": \"127.0.0.1\"", with: "\"address\": \"not-an-ip\""))]")
        let badAddress = cp.waitForRequest { $0.hasPrefix("REQ LDS") && $0.contains("not-an-ip") }
        #expect(badAddress?.contains("version=l1") == true, "\(badAddress ?? "no NACK")")
        cp.push("RDS", version: "r2", "[\(xdsRoutes("routes", cluster: "nowhere"))]")
        let dangling = cp.waitForRequest { $0.hasPrefix("REQ RDS") && $0.contains("nowhere") }
        #expect(dangling?.contains("version=r1") == true, "\(dangling ?? "no NACK")")
        r = try HTTPClient(port: port).request("GET /z HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(r.text.hasPrefix("b /z"), "still serving the last good config")
        // The stream and its verdicts are visible on the admin API.
        let stats = try parsePrometheus(admin(adminPort, "GET", "/stats/prometheus").1)
        #expect(stats["weir_xds_connected{}"] == 1)
        #expect((stats["weir_xds_updates_total{result=\"rejected\",type=\"CDS\"}"] ?? 0) >= 2)
        #expect((stats["weir_xds_updates_total{result=\"accepted\",type=\"EDS\"}"] ?? 0) >= 2)
        let dump = admin(adminPort, "GET", "/config_dump").1
        #expect(dump.contains("\"versions\":{\"LDS\":\"l1\",\"CDS\":\"c1\",\"EDS\":\"e2\",\"RDS\":\"r1\",\"SDS\":\"\"}"), "\(dump)")

        // A listener the control plane removes goes away.
        cp.push("LDS", version: "l2", "[]")
        #expect(weir.waitForLog("xds: ACK LDS version l2"))
        #expect(weir.waitForLog("generation", count: 4))
        let deadline = Date().addingTimeInterval(5)
        var closed = false
        while Date() < deadline && !closed {
            closed = (try? TestClient(loopback(port), timeoutSeconds: 1)) == nil
            if !closed { usleep(50_000) }
        }
        #expect(closed, "the listener's port is closed")
    }

    @Test func initialFetchTimeoutActivatesWhatIsStillWarming() throws {
        let cp = try XDSControlPlane()
        let a = try HTTPUpstream(name: "a")
        let port = try freePort(), inlinePort = try freePort(), adminPort = try freePort()
        let weir = try WeirProcess(yaml: """
            shards: 2
            admin: { address: 127.0.0.1:\(adminPort) }
            node: { id: weir-warming }
            xds: { address: "127.0.0.1:\(cp.port)", initial_fetch_timeout: 1s }
            """)
        defer { weir.stop() }
        // A listener whose routes never come, and one (inline routes) to a cluster whose endpoints
        // never come.
        let inline = xdsListener("inline", port: inlinePort, routeConfig: "unused").replacingOccurrences(
            of: #""rds": {"route_config_name": "unused", "config_source": {"ads": {}}}"#,
            with: #""route_config": {"name": "inline", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]}"#)
        cp.push("CDS", version: "c1", "[\(xdsCluster("app"))]")
        cp.push("LDS", version: "l1", "[\(xdsListener("web", port: port, routeConfig: "routes")), \(inline)]")
        #expect(weir.waitForLog("xds: ACK LDS version l1"))
        #expect(weir.waitForLog("initial_fetch_timeout passed", seconds: 10))
        #expect(weir.waitForLog("published (2 listener(s), 1 cluster(s) from xds)", seconds: 10), "both listeners and the cluster activated")
        var r = try HTTPClient(port: port).request("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(r.status == 404, "a listener activated without its routes answers 404: \(r.status)")
        r = try HTTPClient(port: inlinePort).request("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(r.status == 503, "a cluster activated without its endpoints answers 503: \(r.status)")
        var dump = admin(adminPort, "GET", "/config_dump").1
        #expect(dump.contains(#"{"type":"CDS","name":"app","version":"c1","#), "\(dump)")
        #expect(dump.contains(#""name":"web","version":"l1","#) && dump.contains(#""state":"activated_by_initial_fetch_timeout""#), "\(dump)")
        // What they waited for arrives: they become complete and serve.
        cp.push("EDS", version: "e1", "[\(xdsEndpoints("app", [a.port]))]")
        cp.push("RDS", version: "r1", "[\(xdsRoutes("routes", cluster: "app"))]")
        #expect(weir.waitForLog("xds: ACK RDS version r1"))
        #expect(weir.waitForLog("xds: ACK EDS version e1"))
        r = try HTTPClient(port: port).request("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(r.status == 200 && r.text.hasPrefix("a /x"), "\(r.status) \(r.text)")
        r = try HTTPClient(port: inlinePort).request("GET /y HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(r.status == 200 && r.text.hasPrefix("a /y"), "\(r.status) \(r.text)")
        dump = admin(adminPort, "GET", "/config_dump").1
        #expect(!dump.contains("activated_by_initial_fetch_timeout"), "\(dump)")
        #expect(dump.contains(#"{"type":"EDS","name":"app","version":"e1","#) && dump.contains(#"{"type":"RDS","name":"routes","version":"r1","#), "\(dump)")
        #expect(dump.contains(#"{"type":"CDS","name":"app","version":"c1","#), "the cluster itself did not change: still c1")
    }

    /// An activation by initial_fetch_timeout that cannot be applied (here: its listener's
    /// address is taken) leaves the resources warming and is tried again until it applies.
    @Test func anActivationThatFailsIsTriedAgain() throws {
        let cp = try XDSControlPlane()
        let squatter = try EchoServer(name: "squatter")
        let port = squatter.address.port
        let weir = try WeirProcess(yaml: """
            shards: 2
            node: { id: weir-activation-retry }
            xds: { address: "127.0.0.1:\(cp.port)", initial_fetch_timeout: 500ms }
            """)
        defer { weir.stop() }
        cp.push("CDS", version: "c1", "[\(xdsCluster("app"))]")
        cp.push("LDS", version: "l1", "[\(xdsListener("web", port: port, routeConfig: "routes"))]")
        #expect(weir.waitForLog("xds: ACK LDS version l1"))
        #expect(weir.waitForLog("trying again in", seconds: 10), "\(weir.log)")
        #expect(!weir.log.contains("published (1 listener(s)"))
        squatter.stop()
        #expect(weir.waitForLog("published (1 listener(s), 1 cluster(s) from xds)", seconds: 15), "\(weir.log)")
        let r = try HTTPClient(port: port).request("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(r.status == 404, "activated without its routes: \(r.status)")
    }

    @Test func aControlPlaneRestartCostsNoTrafficAndTheStreamResumesWithVersions() throws {
        var cp = try XDSControlPlane()
        let cpPort = cp.port
        let a = try HTTPUpstream(name: "a")
        let port = try freePort()
        let weir = try WeirProcess(yaml: """
            shards: 2
            node: { id: weir-restart }
            xds: { address: "127.0.0.1:\(cpPort)" }
            """)
        defer { weir.stop() }
        func serve(_ cp: XDSControlPlane, _ v: String) {
            cp.push("CDS", version: "c\(v)", "[\(xdsCluster("app"))]")
            cp.push("EDS", version: "e\(v)", "[\(xdsEndpoints("app", [a.port]))]")
            cp.push("LDS", version: "l\(v)", "[\(xdsListener("web", port: port, routeConfig: "routes"))]")
            cp.push("RDS", version: "r\(v)", "[\(xdsRoutes("routes", cluster: "app"))]")
        }
        serve(cp, "1")
        #expect(weir.waitForLog("xds: ACK RDS version r1"))
        #expect(try HTTPClient(port: port).request("GET /1 HTTP/1.1\r\nHost: h\r\n\r\n").status == 200)
        // The control plane goes away: traffic goes on from what Weir holds.
        cp.stop()
        #expect(weir.waitForLog("xds: stream to"))
        for i in 0..<5 { #expect(try HTTPClient(port: port).request("GET /down/\(i) HTTP/1.1\r\nHost: h\r\n\r\n").status == 200) }
        // It comes back on the same port: Weir reconnects and says which versions it holds.
        cp = try XDSControlPlane(port: cpPort)
        let resumed = cp.waitForRequest(seconds: 40) { $0.hasPrefix("REQ CDS") && $0.contains("version=c1") }
        #expect(resumed != nil, "the new stream carries the version Weir holds")
        #expect(resumed?.contains("node=weir-restart") == true)
        serve(cp, "1")
        #expect(weir.waitForLog("xds: ACK RDS version r1", count: 2, seconds: 20))
        #expect(try HTTPClient(port: port).request("GET /2 HTTP/1.1\r\nHost: h\r\n\r\n").status == 200)
    }
}
