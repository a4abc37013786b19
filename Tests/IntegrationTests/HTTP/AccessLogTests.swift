// The HTTP access log through the real binary: one valid JSON line per request, whatever the
// request holds, across reloads, and across log rotation.
import Foundation
import Testing
import WeirCore
import WeirDemo

/// An upstream and Weir in front of it, logging to `path` in a fresh directory that goes when
/// this does (a test keeps it to its end through its `defer`).
final class LoggedWeir {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-log-\(UUID().uuidString)")
    let upstream: HTTPUpstream
    let weir: WeirProcess
    var path: String { directory.appendingPathComponent("access.log").path }

    init() throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        upstream = try HTTPUpstream(name: "a")
        weir = try WeirProcess(yaml: AccessLogTests.config(log: directory.appendingPathComponent("access.log").path, upstream: upstream))
    }
    deinit { try? FileManager.default.removeItem(at: directory) }
}

@Suite(.serialized) struct AccessLogTests {
    static func config(log: String, upstream: HTTPUpstream, routes: String = "      - cluster: app\n") -> String {
        httpConfig(port: 0, upstreams: [upstream], routes: routes, listenerExtra: "    http: { access_log: \(log) }")
    }

    /// The lines in `path` once there are at least `count` of them (the shards write the log
    /// through their rings, a loop turn after the response), within `seconds`.
    func lines(_ path: String, atLeast count: Int, seconds: Double = 5) -> [String] {
        let deadline = Date().addingTimeInterval(seconds)
        var found: [String] = []
        repeat {
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            found = text.split(separator: "\n").map(String.init)
            if found.count >= count { break }
            usleep(20_000)
        } while Date() < deadline
        return found
    }

    func json(_ line: String) -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
    }

    /// Quotes and backslashes in a long path take two bytes each once escaped: the kept path is
    /// cut between escapes, never inside one, and the line is still JSON.
    @Test func everyRequestIsOneValidJSONLine() throws {
        let logged = try LoggedWeir()
        let (a, path, weir) = (logged.upstream, logged.path, logged.weir)
        defer { logged.weir.stop() }
        let c = try HTTPClient(port: try weir.port("web"), timeoutSeconds: 5)
        let targets = ["/plain", "/q?\(String(repeating: "\\", count: 300))", "/\(String(repeating: "\"", count: 299))x",
                       "/\(String(repeating: "a\\\"", count: 200))", "/tail\\"]
        for t in targets {
            #expect(try c.request("GET \(t) HTTP/1.1\r\nHost: h\r\n\r\n").status == 200)
        }
        let found = lines(path, atLeast: targets.count)
        #expect(found.count == targets.count, "\(found)")
        for (line, target) in zip(found, targets) {
            guard let object = json(line) else { Issue.record("not JSON: \(line)"); continue }
            let logged = object["path"] as? String ?? ""
            #expect(!logged.isEmpty && target.hasPrefix(logged), "\(logged) is a prefix of \(target)")
            #expect(object["status"] as? Int == 200 && object["method"] as? String == "GET" && object["cluster"] as? String == "app")
        }
        #expect(json(found[0])?["path"] as? String == "/plain")
    }

    /// A request in flight when a reload publishes a new snapshot is still logged.
    @Test func aRequestThatSpansAReloadIsLogged() throws {
        let logged = try LoggedWeir()
        let (a, path, weir) = (logged.upstream, logged.path, logged.weir)
        defer { logged.weir.stop() }
        let c = try HTTPClient(port: try weir.port("web"), timeoutSeconds: 10)
        c.send("GET /slow?ms=1500 HTTP/1.1\r\nHost: h\r\n\r\n")
        // The request has reached the upstream before the reload (it counts requests on arrival).
        let deadline = Date().addingTimeInterval(5)
        while try a.counts().requests < 1 && Date() < deadline { usleep(20_000) }
        try weir.rewrite(AccessLogTests.config(log: path, upstream: a, routes: "      - { match: { path_prefix: /other }, cluster: app }\n      - cluster: app\n"))
        weir.signal(SIGHUP)
        #expect(weir.waitForLog("generation 2 applied by all"))
        let r = try c.readResponse()
        #expect(r.status == 200 && r.text.hasPrefix("slow from a"))
        let found = lines(path, atLeast: 1)
        #expect(found.count == 1 && json(found[0])?["path"] as? String == "/slow?ms=1500", "\(found)")
    }

    /// logrotate renames the file (and may remove it): Weir opens the path again.
    @Test func aRotatedLogIsOpenedAgain() throws {
        let logged = try LoggedWeir()
        let (a, path, weir) = (logged.upstream, logged.path, logged.weir)
        defer { logged.weir.stop() }
        let port = try weir.port("web")
        #expect(try HTTPClient(port: port).request("GET /before HTTP/1.1\r\nHost: h\r\n\r\n").status == 200)
        #expect(lines(path, atLeast: 1).count == 1)
        try FileManager.default.moveItem(atPath: path, toPath: path + ".1")
        // The shards look for a rotated file once per tick (250 ms): requests keep coming until
        // one lands in the new file.
        var fresh: [String] = []
        let deadline = Date().addingTimeInterval(5)
        var sent = 0
        while fresh.isEmpty && Date() < deadline {
            #expect(try HTTPClient(port: port).request("GET /after HTTP/1.1\r\nHost: h\r\n\r\n").status == 200)
            sent += 1
            fresh = lines(path, atLeast: 1, seconds: 0.3)
        }
        #expect(!fresh.isEmpty && json(fresh[0])?["path"] as? String == "/after", "\(fresh)")
        let rotated = lines(path + ".1", atLeast: 1)
        #expect(rotated.first.flatMap { json($0)?["path"] as? String } == "/before")
        var total = 0
        let settled = Date().addingTimeInterval(5)
        repeat {
            total = lines(path + ".1", atLeast: 0, seconds: 0).count + lines(path, atLeast: 0, seconds: 0).count
            if total >= sent + 1 { break }
            usleep(20_000)
        } while Date() < settled
        #expect(total == sent + 1, "no line lost across the rotation")
    }
}
