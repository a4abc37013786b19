// `weir demo`: Weir's main job on a built-in default. Three echo upstreams with weights 3, 2 and 1
// on loopback, a Weir TCP listener in front of them, a burst of connections through it, and a
// table of what happened.
import ArgumentParser
import Synchronization
import WeirConfig
import WeirCore
import WeirDemo
import WeirProxy
#if canImport(Glibc)
import Glibc
#endif

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Balance a burst of TCP connections across three built-in upstreams and print what happened.")
    @Option(help: "Connections in the burst.") var connections = 600
    @Option(help: "Bytes each connection sends (and gets echoed back).") var bytes = 16384
    @Option(help: "Client threads.") var clients = 8
    @Option(help: "Bytes for the bulk-throughput phase (one connection per client thread).") var bulkBytes = 64 << 20
    @Option(help: "Shard threads (default: one per CPU).") var shards: Int?

    func validate() throws {
        guard (1...100_000).contains(connections) else { throw ValidationError("--connections must be 1 to 100000") }
        guard (1...(64 << 20)).contains(bytes) else { throw ValidationError("--bytes must be 1 to 64MiB") }
        guard (1...64).contains(clients) else { throw ValidationError("--clients must be 1 to 64") }
        guard (0...(4 << 30)).contains(bulkBytes) else { throw ValidationError("--bulk-bytes must be 0 to 4GiB") }
    }

    func run() throws {
        Log.bootstrap()
        Log.level = .warning
        signal(SIGPIPE, SIG_IGN)
        let weights = [3, 2, 1]
        let upstreams = try weights.indices.map { try EchoServer(name: "upstream-\($0 + 1)") }
        let yaml = """
        listeners:
          - { name: demo, address: "127.0.0.1:0", protocol: tcp, cluster: echo }
        clusters:
          - name: echo
            balancer: round_robin
            connect_timeout: 1s
            endpoints:
        \(zip(upstreams, weights).map { "      - { address: \"\($0.address)\", weight: \($1) }" }.joined(separator: "\n"))
        """
        let snapshot = try Compiler.compile(YAMLLoader.parse(yaml, file: "<demo>"))
        let server = try Server(snapshot: snapshot, shards: shards)
        try server.start()
        let front = server.boundAddresses[snapshot.listeners[0].address]!
        print("weir demo: \(server.shardCount) shard(s), listener \(front), upstreams \(upstreams.map { "\($0.address)" }.joined(separator: ", "))")
        print("")

        let burst = runBurst(front, total: connections, threads: clients, bytes: bytes)
        let bulk = bulkBytes > 0 ? runBurst(front, total: clients, threads: clients, bytes: bulkBytes / clients) : nil
        let report = server.drain(timeoutNanoseconds: 5_000_000_000)
        upstreams.forEach { $0.stop() }

        let totalWeight = weights.reduce(0, +)
        let totalConnections = upstreams.reduce(0) { $0 + $1.connections }
        let rows = zip(upstreams, weights).map { u, w in
            [u.name, "\(u.address)", "\(w)", "\(u.connections)",
             percent(u.connections, totalConnections), percent(w, totalWeight), megabytes(u.bytesReceived)]
        }
        printTable(["upstream", "address", "weight", "connections", "share", "expected", "MiB received"], rows)
        print("")
        let s = server.stats
        print("burst: \(burst.ok)/\(connections) connections echoed \(bytes) B intact, \(burst.failed) failed, \(String(format2: burst.seconds))s, \(Int(Double(burst.ok) / max(burst.seconds, 1e-9))) conn/s")
        if let bulk {
            let gbit = Double(bulk.bytes * 2 * 8) / max(bulk.seconds, 1e-9) / 1e9
            print("bulk:  \(bulk.ok)/\(clients) connections echoed \(megabytes(bulk.bytes)) MiB in total, \(String(format2: bulk.seconds))s, \(String(format2: gbit)) Gbit/s through weir (both directions)")
        }
        print("weir:  accepted \(s.accepted), upstream connects \(s.upstreamConnected), connect failures \(s.connectFailures), aborted \(s.aborted), drained \(report.drainedCleanly ? "cleanly" : "with \(report.cut) cut")")
        let failed = burst.failed + (bulk?.failed ?? 0)
        if failed > 0 { throw ExitCode(1) }
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
