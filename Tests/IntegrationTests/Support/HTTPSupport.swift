// HTTP fixtures for the integration tests: a real upstream server (Python's http.server, see
// http_upstream.py) and a small client that reads responses off a keep-alive connection.
import Foundation
import Testing
import WeirCore
import WeirDemo

/// A Python server from Support/ in its own process: started with `arguments`, it prints
/// "port N" once listening and serves until its stdin closes, so it never outlives the object.
final class SupportServer {
    let port: UInt16
    private let process = Process()
    private let input = Pipe()

    init(script: String, _ arguments: [String], environment: [String: String] = [:], what: String) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [repositoryRoot.appendingPathComponent("Tests/IntegrationTests/Support/\(script)").path] + arguments
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        try process.run()
        // "port N\n", within 10 s.
        var line = Data()
        let deadline = Date().addingTimeInterval(10)
        while !line.contains(10) && Date() < deadline {
            let d = output.fileHandleForReading.availableData
            if d.isEmpty { usleep(10_000) }
            line.append(d)
        }
        guard let p = UInt16(String(decoding: line, as: UTF8.self).split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") else {
            process.terminate()
            throw LoopbackError(message: "\(what) did not start")
        }
        port = p
    }

    deinit {
        try? input.fileHandleForWriting.close()
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}

/// An HTTP/1.1 upstream in its own process (http_upstream.py).
final class HTTPUpstream {
    let name: String
    let tls: Bool
    private let server: SupportServer
    var port: UInt16 { server.port }

    /// `tls`: certificate, key and (optionally) a CA whose client certificates it requires.
    /// `idleTimeoutMs`: the server closes a keep-alive connection idle that long.
    init(name: String, tls: [String] = [], idleTimeoutMs: Int? = nil) throws {
        self.name = name
        self.tls = !tls.isEmpty
        server = try SupportServer(script: "http_upstream.py", [name] + tls,
                                   environment: idleTimeoutMs.map { ["IDLE_TIMEOUT_MS": "\($0)"] } ?? [:],
                                   what: "the HTTP upstream \(name)")
    }

    var address: SocketAddress { loopback(port) }

    /// (connections accepted, requests served) as the upstream counted them.
    func counts() throws -> (connections: Int, requests: Int) {
        let text: String
        if tls {
            text = try runProcess("/usr/bin/curl", ["-sk", "-m", "5", "https://127.0.0.1:\(port)/stats"]).1
        } else {
            text = try HTTPClient(port: port).request("GET /stats HTTP/1.1\r\nHost: x\r\n\r\n").text
        }
        var conns = 0, reqs = 0
        for part in text.split(separator: " ") {
            let kv = part.split(separator: "=")
            if kv.count == 2, let v = Int(kv[1]) { if kv[0] == "connections" { conns = v } else { reqs = v } }
        }
        return (conns - 1, reqs - 1)  // minus this /stats request and its connection
    }
}

struct HTTPResponse {
    var status: Int
    var head: String
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
    func header(_ name: String) -> String? {
        for line in head.split(separator: "\r\n").dropFirst() {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2 && parts[0].lowercased() == name.lowercased() { return parts[1].trimmingCharacters(in: .whitespaces) }
        }
        return nil
    }
}

/// One client connection that sends raw bytes and reads whole responses (Content-Length, chunked,
/// or until close), so keep-alive and pipelining can be checked byte for byte.
final class HTTPClient {
    let client: TestClient
    private var pending: [UInt8] = []

    init(port: UInt16, timeoutSeconds: Int = 10) throws { client = try TestClient(loopback(port), timeoutSeconds: timeoutSeconds) }
    init(address: SocketAddress, timeoutSeconds: Int = 10) throws { client = try TestClient(address, timeoutSeconds: timeoutSeconds) }

    func send(_ text: String) { _ = client.write(Array(text.utf8)) }
    func send(_ bytes: [UInt8]) { _ = client.write(bytes) }

    /// Sends `text` and reads one response.
    func request(_ text: String, body: [UInt8] = [], headRequest: Bool = false) throws -> HTTPResponse {
        send(Array(text.utf8) + body)
        return try readResponse(headRequest: headRequest)
    }

    private func fill() -> Bool {
        let more = client.read(count: 1)
        guard !more.isEmpty else { return false }
        pending += more
        // Take what else is already there without blocking long.
        return true
    }

    private func readLine() throws -> String {
        while true {
            if let i = indexOfCRLF() {
                let line = String(decoding: pending[..<i], as: UTF8.self)
                pending.removeFirst(i + 2)
                return line
            }
            guard fill() else { throw LoopbackError(message: "connection closed in a line") }
        }
    }

    private func indexOfCRLF() -> Int? {
        guard pending.count >= 2 else { return nil }
        for i in 0..<(pending.count - 1) where pending[i] == 13 && pending[i + 1] == 10 { return i }
        return nil
    }

    private func readBytes(_ n: Int) throws -> [UInt8] {
        while pending.count < n {
            let more = client.read(count: n - pending.count)
            guard !more.isEmpty else { throw LoopbackError(message: "connection closed in a body") }
            pending += more
        }
        let out = Array(pending[..<n])
        pending.removeFirst(n)
        return out
    }

    /// Reads one final response (interim 1xx responses are skipped, except 101).
    func readResponse(headRequest: Bool = false) throws -> HTTPResponse {
        while true {
            var lines = [try readLine()]
            while let last = lines.last, !last.isEmpty { lines.append(try readLine()) }
            let head = lines.dropLast().joined(separator: "\r\n")
            let status = Int(lines[0].split(separator: " ").dropFirst().first ?? "") ?? 0
            var r = HTTPResponse(status: status, head: head, body: [])
            if status < 200 && status != 101 { continue }
            if headRequest || status == 101 || status == 204 || status == 304 { return r }
            if r.header("Transfer-Encoding")?.lowercased() == "chunked" {
                while true {
                    let size = Int(try readLine().split(separator: ";")[0], radix: 16) ?? 0
                    if size == 0 {
                        while try !readLine().isEmpty {}
                        return r
                    }
                    r.body += try readBytes(size)
                    _ = try readLine()
                }
            }
            if let n = r.header("Content-Length").flatMap({ Int($0) }) {
                r.body = try readBytes(n)
                return r
            }
            while fill() {}
            r.body = pending
            pending = []
            return r
        }
    }

    /// True when the server closed the connection (read returns EOF within the timeout).
    func closedByPeer() -> Bool { pending.isEmpty && client.read(count: 1).isEmpty }
}

/// An http listener config on `port` in front of `upstreams` (cluster "app"), with `routes` YAML
/// (indented for a listener) replacing the default catch-all route.
func httpConfig(port: UInt16, upstreams: [HTTPUpstream], routes: String? = nil, listenerExtra: String = "",
                clusterExtra: String = "", top: String = "", extraClusters: String = "") -> String {
    let r = routes ?? "      - cluster: app\n"
    return """
    shards: 2
    \(top)
    listeners:
      - name: web
        address: 127.0.0.1:\(port)
        protocol: http
    \(listenerExtra)
        routes:
    \(r)
    clusters:
      - name: app
        connect_timeout: 1s
    \(clusterExtra)
        endpoints:
    \(upstreams.map { "      - { address: \"127.0.0.1:\($0.port)\" }" }.joined(separator: "\n"))
    \(extraClusters)
    """
}
