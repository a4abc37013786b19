// The admin API on its own loopback listener, with Envoy's paths so existing habits and tools
// work: /ready, /server_info, /stats/prometheus, /clusters, /config_dump, and POSTs to fail or
// pass the health check, drain, and reload. Control plane only: blocking sockets on its own
// threads, never on a shard.
import Synchronization
import WeirConfig
import WeirCore
import WeirHTTP
import WeirProxy
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

public final class AdminServer: @unchecked Sendable {
    /// Why a reload was refused, as lines an operator can act on.
    public struct ReloadRefused: Error {
        public let message: String
        public init(_ message: String) { self.message = message }
    }

    public struct Hooks {
        /// Reloads the config file; returns the new generation, or the errors (file:line).
        public var reload: () -> Result<UInt64, ReloadRefused>
        /// Starts a graceful stop (the same path as SIGTERM).
        public var drain: () -> Void
        public var version: String
        public init(reload: @escaping () -> Result<UInt64, ReloadRefused>, drain: @escaping () -> Void, version: String) {
            self.reload = reload; self.drain = drain; self.version = version
        }
    }

    let server: Server
    let hooks: Hooks
    let fd: Int32
    public let address: SocketAddress
    /// POST /healthcheck/fail sets it: /ready answers 503 so a balancer in front stops sending.
    let failing = Atomic<Bool>(false)
    let busy = Atomic<Int>(0)
    static let maxConcurrent = 16

    public init(server: Server, settings: AdminSettings, hooks: Hooks) throws {
        self.server = server
        self.hooks = hooks
        fd = try Sockets.listen(settings.address, backlog: 64, reusePort: false)
        address = Sockets.localAddress(fd) ?? settings.address
    }

    public func start() throws {
        try startDetachedThread { [self] in acceptLoop() }
    }

    private func acceptLoop() {
        while true {
            let c = accept(fd, nil, nil)
            if c < 0 { if errno == EINTR || errno == ECONNABORTED { continue }; return }
            // Bounded: an admin API is for people and scrapers, not a second data plane.
            if busy.add(1, ordering: .relaxed).newValue > AdminServer.maxConcurrent {
                busy.subtract(1, ordering: .relaxed)
                _ = respond(c, 503, "text/plain", "too many admin requests\n")
                close(c)
                continue
            }
            do {
                try startDetachedThread { [self] in
                    serve(c)
                    close(c)
                    busy.subtract(1, ordering: .relaxed)
                }
            } catch {
                busy.subtract(1, ordering: .relaxed)
                close(c)
            }
        }
    }

    /// One request per connection (answers carry Connection: close).
    func serve(_ c: Int32) {
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 16384)
        var used = 0
        let headers = HeaderTable(capacity: 64)
        var limits = HTTPLimits()
        limits.maxHeaderBytes = buffer.count
        while used < buffer.count {
            let n = buffer.withUnsafeMutableBytes { recv(c, $0.baseAddress! + used, $0.count - used, 0) }
            if n <= 0 { return }
            used += n
            let outcome = buffer.withUnsafeBytes { HTTPParser.parseRequest(UnsafeRawBufferPointer(rebasing: $0[0..<used]), limits: limits, headers: headers) }
            switch outcome {
            case .incomplete: continue
            case .failed(let e): _ = respond(c, e.status, "text/plain", "\(e.reason)\n"); return
            case .complete(let head):
                let target = String(decoding: buffer[Int(head.target.start)..<Int(head.target.end)], as: UTF8.self)
                let method = String(decoding: buffer[Int(head.methodRange.start)..<Int(head.methodRange.end)], as: UTF8.self)
                let (status, type, body) = handle(method: method, target: target)
                _ = respond(c, status, type, body, headOnly: method == "HEAD")
                return
            }
        }
        _ = respond(c, 431, "text/plain", "request head too large\n")
    }

    /// Writes one answer; a HEAD request gets the same head (Content-Length included), no body.
    func respond(_ c: Int32, _ status: Int, _ type: String, _ body: String, headOnly: Bool = false) -> Bool {
        let reason = [200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
                      500: "Internal Server Error", 503: "Service Unavailable"][status] ?? "Status"
        let bytes = Array(body.utf8)
        let head = "HTTP/1.1 \(status) \(reason)\r\nContent-Type: \(type)\r\nContent-Length: \(bytes.count)\r\nConnection: close\r\n\r\n"
        return sendAll(c, Array(head.utf8) + (headOnly ? [] : bytes))
    }

    func sendAll(_ c: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = send(c, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
                if n <= 0 { return false }
                off += n
            }
            return true
        }
    }

    /// Routes one request: (status, content type, body).
    func handle(method: String, target: String) -> (Int, String, String) {
        let parts = target.split(separator: "?", maxSplits: 1)
        let path = String(parts.first ?? "")
        let query = parts.count > 1 ? String(parts[1]) : ""
        let json = query.split(separator: "&").contains("format=json")
        let posts: Set<String> = ["/healthcheck/fail", "/healthcheck/ok", "/drain_listeners", "/reload", "/quitquitquit"]
        let gets: Set<String> = ["/ready", "/server_info", "/stats/prometheus", "/stats", "/clusters", "/config_dump", "/"]
        if posts.contains(path) && method != "POST" { return (405, "text/plain", "\(path) needs POST\n") }
        if gets.contains(path) && method != "GET" && method != "HEAD" { return (405, "text/plain", "\(path) needs GET\n") }
        switch path {
        case "/", "/help":
            return (200, "text/plain", """
            GET  /ready               200 LIVE while serving, 503 while draining or after /healthcheck/fail
            GET  /server_info         version, state, uptime, config generation (JSON)
            GET  /stats/prometheus    counters and gauges, Prometheus text format 0.0.4
            GET  /clusters            endpoints, weights, health, active connections (?format=json)
            GET  /config_dump         the running snapshot (JSON)
            POST /healthcheck/fail    make /ready answer 503
            POST /healthcheck/ok      undo it
            POST /drain_listeners     stop accepting, let connections finish, exit 0 (as SIGTERM)
            POST /reload              reload the config file (as SIGHUP)
            GET  /stats               Envoy's names pilot-agent's readiness check reads (server.state, ...)
            POST /quitquitquit        drain and exit (as Envoy's, which pilot-agent sends at shutdown)

            """)
        case "/ready":
            if server.draining.load(ordering: .acquiring) { return (503, "text/plain", "DRAINING\n") }
            if failing.load(ordering: .acquiring) { return (503, "text/plain", "FAILED\n") }
            return (200, "text/plain", "LIVE\n")
        case "/server_info":
            return (200, "application/json", AdminRender.serverInfo(server, version: hooks.version, failing: failing.load(ordering: .relaxed)))
        case "/stats/prometheus":
            return (200, "text/plain; version=0.0.4", AdminRender.prometheus(server))
        case "/stats":
            // Envoy's text form, for tools written against Envoy's admin (Istio's pilot-agent
            // asks for server.state, 0 being LIVE, and listener_manager.workers_started).
            var lines = ["server.state": server.draining.load(ordering: .acquiring) ? 1 : 0, "listener_manager.workers_started": 1]
            if let extra = server.extraEnvoyStats { lines.merge(extra()) { $1 } }
            return (200, "text/plain", lines.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)\n" }.joined())
        case "/quitquitquit":
            Log.info("admin: quitquitquit: draining")
            hooks.drain()
            return (200, "text/plain", "OK\n")
        case "/clusters":
            return json ? (200, "application/json", AdminRender.clustersJSON(server)) : (200, "text/plain", AdminRender.clustersText(server))
        case "/config_dump":
            return (200, "application/json", AdminRender.configDump(server))
        case "/healthcheck/fail":
            failing.store(true, ordering: .releasing)
            Log.info("admin: health check set to fail; /ready answers 503")
            return (200, "text/plain", "OK\n")
        case "/healthcheck/ok":
            failing.store(false, ordering: .releasing)
            Log.info("admin: health check set to pass")
            return (200, "text/plain", "OK\n")
        case "/drain_listeners":
            Log.info("admin: drain requested")
            hooks.drain()
            return (200, "text/plain", "OK, draining\n")
        case "/reload":
            switch hooks.reload() {
            case .success(let g): return (200, "text/plain", "OK, generation \(g)\n")
            case .failure(let why): return (400, "text/plain", why.message + "\n")
            }
        default:
            return (404, "text/plain", "no such admin path: \(path); GET / lists them\n")
        }
    }
}
