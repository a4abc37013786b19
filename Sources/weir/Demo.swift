// `weir demo`: Weir's main job on a built-in default. Three echo upstreams with weights 3, 2 and 1
// on loopback behind a Weir TCP listener, three HTTP upstreams with the same weights behind a Weir
// HTTP listener, bursts of traffic through both, and tables of what happened.
import ArgumentParser
import Synchronization
import WeirConfig
import WeirCore
import WeirDemo
import WeirProxy
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Balance bursts of TCP connections and HTTP requests across built-in upstreams and print what happened.")
    @Option(help: "Connections in the burst.") var connections = 600
    @Option(help: "Bytes each connection sends (and gets echoed back).") var bytes = 16384
    @Option(help: "Client threads.") var clients = 8
    @Option(help: "Bytes for the bulk-throughput phase (one connection per client thread).") var bulkBytes = 64 << 20
    @Option(help: "HTTP requests in the keep-alive burst (0 skips the HTTP part).") var requests = 30000
    @Option(help: "Shard threads (default: one per CPU).") var shards: Int?
    @Option(help: "I/O backend: auto, io_uring or epoll.") var io = "auto"

    func validate() throws {
        guard (1...100_000).contains(connections) else { throw ValidationError("--connections must be 1 to 100000") }
        guard (1...(64 << 20)).contains(bytes) else { throw ValidationError("--bytes must be 1 to 64MiB") }
        guard (1...64).contains(clients) else { throw ValidationError("--clients must be 1 to 64") }
        guard (0...(4 << 30)).contains(bulkBytes) else { throw ValidationError("--bulk-bytes must be 0 to 4GiB") }
        guard (0...10_000_000).contains(requests) else { throw ValidationError("--requests must be 0 to 10000000") }
        guard Limits.IOSetting(rawValue: io) != nil else { throw ValidationError("--io must be auto, io_uring or epoll, not '\(io)'") }
    }

    func run() throws {
        Log.bootstrap()
        Log.level = .warning
        signal(SIGPIPE, SIG_IGN)
        let weights = [3, 2, 1]
        let upstreams = try weights.indices.map { try EchoServer(name: "upstream-\($0 + 1)") }
        let webs = try weights.indices.map { try HTTPDemoServer(name: "web-\($0 + 1)") }
        let yaml = """
        listeners:
          - { name: demo, address: "127.0.0.1:0", protocol: tcp, cluster: echo }
          - { name: web, address: "127.0.0.2:0", protocol: http, cluster: web }
        clusters:
          - name: echo
            balancer: round_robin
            connect_timeout: 1s
            endpoints:
        \(zip(upstreams, weights).map { "      - { address: \"\($0.address)\", weight: \($1) }" }.joined(separator: "\n"))
          - name: web
            balancer: round_robin
            connect_timeout: 1s
            endpoints:
        \(zip(webs, weights).map { "      - { address: \"\($0.address)\", weight: \($1) }" }.joined(separator: "\n"))
        """
        let snapshot = try Compiler.compile(YAMLLoader.parse(yaml, file: "<demo>"))
        let server = try Server(snapshot: snapshot, shards: shards, io: Limits.IOSetting(rawValue: io))
        try server.start()
        let front = server.boundAddresses[snapshot.listeners[0].address]!
        let webFront = server.boundAddresses[snapshot.listeners[1].address]!
        print("weir demo: \(server.shardCount) shard(s) on \(server.io.rawValue), TCP listener \(front), HTTP listener \(webFront)")
        print("")

        let burst = runBurst(front, total: connections, threads: clients, bytes: bytes)
        let bulk = bulkBytes > 0 ? runBurst(front, total: clients, threads: clients, bytes: bulkBytes / clients) : nil
        let http = requests > 0 ? runRequests(webFront, total: requests, threads: clients) : nil
        let report = server.drain(timeoutNanoseconds: 5_000_000_000)
        upstreams.forEach { $0.stop() }
        webs.forEach { $0.stop() }

        let totalWeight = weights.reduce(0, +)
        let totalConnections = upstreams.reduce(0) { $0 + $1.connections }
        let rows = zip(upstreams, weights).map { u, w in
            [u.name, "\(u.address)", "\(w)", "\(u.connections)",
             percent(u.connections, totalConnections), percent(w, totalWeight), megabytes(u.bytesReceived)]
        }
        print("TCP (passthrough, echo upstreams):")
        printTable(["upstream", "address", "weight", "connections", "share", "expected", "MiB received"], rows)
        print("")
        let s = server.stats
        print("burst: \(burst.ok)/\(connections) connections echoed \(bytes) B intact, \(burst.failed) failed, \(String(format2: burst.seconds))s, \(Int(Double(burst.ok) / max(burst.seconds, 1e-9))) conn/s")
        if let bulk {
            let gbit = Double(bulk.bytes * 2 * 8) / max(bulk.seconds, 1e-9) / 1e9
            print("bulk:  \(bulk.ok)/\(clients) connections echoed \(megabytes(bulk.bytes)) MiB in total, \(String(format2: bulk.seconds))s, \(String(format2: gbit)) Gbit/s through weir (both directions)")
        }
        if let http {
            let totalRequests = webs.reduce(0) { $0 + $1.requests }
            print("")
            print("HTTP (keep-alive requests through the reverse proxy; upstream connections are pooled):")
            printTable(["upstream", "address", "weight", "requests", "share", "expected", "connections"], zip(webs, weights).map { u, w in
                [u.name, "\(u.address)", "\(w)", "\(u.requests)", percent(u.requests, totalRequests), percent(w, totalWeight), "\(u.connections)"]
            })
            print("")
            print("http:  \(http.ok)/\(requests) requests answered 200 by a web upstream, \(http.failed) failed, \(String(format2: http.seconds))s, "
                  + "\(Int(Double(http.ok) / max(http.seconds, 1e-9))) req/s over \(clients) connections, latency p50 \(String(format2: http.p50 * 1000)) ms, p99 \(String(format2: http.p99 * 1000)) ms")
        }
        print("")
        print("weir:  accepted \(s.accepted) connections (TCP and HTTP), upstream connects \(s.upstreamConnected), connect failures \(s.connectFailures), aborted \(s.aborted), drained \(report.drainedCleanly ? "cleanly" : "with \(report.cut) cut")")
        let failed = burst.failed + (bulk?.failed ?? 0) + (http?.failed ?? 0)
        if failed > 0 { throw ExitCode(1) }
    }

    struct RequestResult { var ok = 0; var failed = 0; var seconds = 0.0; var p50 = 0.0; var p99 = 0.0 }

    /// `total` GETs over `threads` keep-alive connections; each answer must be a 200 naming one of
    /// the demo's upstreams.
    func runRequests(_ address: SocketAddress, total: Int, threads: Int) -> RequestResult {
        let next = Atomic<Int>(0), ok = Atomic<Int>(0), failed = Atomic<Int>(0), done = Atomic<Int>(0)
        let latencies = Mutex<[Double]>([])
        let start = monotonicNanoseconds()
        for _ in 0..<threads {
            spawnThread {
                var mine: [Double] = []
                var client = try? HTTPDemoClient(address)
                while next.add(1, ordering: .relaxed).oldValue < total {
                    let t0 = monotonicNanoseconds()
                    if let c = client, let (status, body) = c.get("/demo"), status == 200, body.hasPrefix("hello from web-") {
                        ok.add(1, ordering: .relaxed)
                        mine.append(Double(monotonicNanoseconds() - t0) / 1e9)
                    } else {
                        failed.add(1, ordering: .relaxed)
                        client = try? HTTPDemoClient(address)
                    }
                }
                latencies.withLock { $0 += mine }
                done.add(1, ordering: .releasing)
            }
        }
        while done.load(ordering: .acquiring) < threads { usleep(2000) }
        let sorted = latencies.withLock { $0 }.sorted()
        func at(_ q: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))] }
        return RequestResult(ok: ok.load(ordering: .relaxed), failed: failed.load(ordering: .relaxed),
                             seconds: Double(monotonicNanoseconds() - start) / 1e9, p50: at(0.5), p99: at(0.99))
    }

    struct BurstResult { var ok = 0; var failed = 0; var bytes = 0; var seconds = 0.0 }

    /// `total` connections over `threads` threads; each sends `bytes`, half-closes, and checks the
    /// echo comes back byte for byte.
    func runBurst(_ address: SocketAddress, total: Int, threads: Int, bytes: Int) -> BurstResult {
        let next = Atomic<Int>(0), ok = Atomic<Int>(0), failed = Atomic<Int>(0), moved = Atomic<Int>(0), done = Atomic<Int>(0)
        let start = monotonicNanoseconds()
        for t in 0..<threads {
            spawnThread {
                let payload = pseudoRandomBytes(bytes, seed: UInt64(t + 1))
                while next.add(1, ordering: .relaxed).oldValue < total {
                    if echoOnce(address, payload) { ok.add(1, ordering: .relaxed); moved.add(bytes, ordering: .relaxed) }
                    else { failed.add(1, ordering: .relaxed) }
                }
                done.add(1, ordering: .releasing)
            }
        }
        while done.load(ordering: .acquiring) < threads { usleep(2000) }
        return BurstResult(ok: ok.load(ordering: .relaxed), failed: failed.load(ordering: .relaxed),
                           bytes: moved.load(ordering: .relaxed), seconds: Double(monotonicNanoseconds() - start) / 1e9)
    }
}

func percent(_ part: Int, _ whole: Int) -> String {
    whole == 0 ? "-" : String(format2: Double(part) * 100 / Double(whole)) + "%"
}

func megabytes(_ bytes: Int) -> String { String(format2: Double(bytes) / 1048576) }

func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { i in ([header] + rows).map { $0[i].count }.max() ?? 0 }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in i == 0 ? c.padding(widths[i]) : c.leftPadding(widths[i]) }.joined(separator: "  ")
    }
    print(line(header))
    print(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  "))
    rows.forEach { print(line($0)) }
}

extension String {
    func padding(_ w: Int) -> String { self + String(repeating: " ", count: max(0, w - count)) }
    func leftPadding(_ w: Int) -> String { String(repeating: " ", count: max(0, w - count)) + self }
}
