// The weir command: run, check, demo, version.
import ArgumentParser
import Foundation
import Synchronization
import WeirAdmin
import WeirConfig
import WeirCore
import WeirDemo
import WeirHealth
import WeirProxy
#if XDS
import WeirXDS
#endif
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

let weirVersion = "0.1.0"

@main
struct Weir: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "weir",
        abstract: "A Layer 4 load balancer on io_uring.",
        discussion: "See man weir(8) and weir.yaml(5).",
        version: weirVersion,
        subcommands: [Run.self, Check.self, Reload.self, Demo.self, Simulate.self, Version.self])

    /// `weir -c envoy.json --drain-time-s 45 ...`, as pilot-agent starts Envoy, runs the bootstrap;
    /// everything else is weir's own command line.
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        if let first = args.first, first.hasPrefix("-"), let run = EnvoyCommandLine.translate(args) {
            self.main(run)
            return
        }
        self.main(nil)
    }
}

/// Envoy's command line as pilot-agent writes it, turned into `weir run`: -c (the bootstrap),
/// --log-level, --concurrency and --drain-time-s mean what they mean to Envoy; --service-node and
/// --service-cluster fill in a bootstrap without a node; the rest (hot restart, flush intervals,
/// parent shutdown) change nothing Weir does and are ignored with a warning each.
enum EnvoyCommandLine {
    nonisolated(unsafe) static var flags = (drainSeconds: Int?.none, serviceCluster: String?.none, serviceNode: String?.none)
    static let ignoredWithValue: Set<String> = ["--parent-shutdown-time-s", "--local-address-ip-version", "--file-flush-interval-msec",
                                                "--component-log-level", "--log-format", "--log-path", "--drain-strategy", "--restart-epoch",
                                                "--base-id", "--service-zone", "--mode", "--disable-extensions", "--stats-tag",
                                                "--socket-path", "--socket-mode", "--bootstrap-version", "--admin-address-path", "--base-id-path",
                                                "--file-flush-min-size-kb", "--max-obj-name-len", "--max-stats"]
    static let ignoredAlone: Set<String> = ["--disable-hot-restart", "--allow-unknown-static-fields", "--reject-unknown-dynamic-fields",
                                            "--ignore-unknown-dynamic-fields", "--skip-hot-restart-on-no-parent", "--use-dynamic-base-id",
                                            "--log-format-escaped", "--enable-fine-grain-logging", "--cpuset-threads", "--enable-core-dump",
                                            "--skip-hot-restart-parent-stats", "--hot-restart-version"]

    /// `weir run` arguments, or nil when this is not Envoy's command line (no -c).
    static func translate(_ args: [String]) -> [String]? {
        var out: [String] = ["run"], config: String? = nil, warnings: [String] = []
        var i = 0
        func value() -> String? { i += 1; return i < args.count ? args[i] : nil }
        while i < args.count {
            var a = args[i], inline: String? = nil
            if a.hasPrefix("--"), let eq = a.firstIndex(of: "=") { inline = String(a[a.index(after: eq)...]); a = String(a[..<eq]) }
            func v() -> String? { inline ?? value() }
            switch a {
            case "-c", "--config-path": config = v()
            case "-l", "--log-level":
                let level = v() ?? "info"
                let map = ["trace": "trace", "debug": "debug", "info": "info", "warning": "warning", "warn": "warning", "error": "error",
                           "critical": "critical", "off": "critical"]
                out += ["--log-level", map[level] ?? "info"]
            case "--concurrency": if let n = v().flatMap({ Int($0) }) { out += ["--shards", String(min(max(n, 1), 1024))] }
            case "--drain-time-s": flags.drainSeconds = v().flatMap { Int($0) }
            case "--service-cluster": flags.serviceCluster = v()
            case "--service-node": flags.serviceNode = v()
            case "--config-yaml":
                fputs("weir: --config-yaml is not supported; give the bootstrap as a file with -c\n", stderr)
                return ["run", "--config", "/dev/null/--config-yaml"]
            default:
                if ignoredWithValue.contains(a) { _ = v(); warnings.append("ignoring Envoy flag \(a) (it changes nothing Weir does)") }
                else if ignoredAlone.contains(a) { warnings.append("ignoring Envoy flag \(a) (it changes nothing Weir does)") }
                else { warnings.append("ignoring unknown Envoy flag \(a)") }
            }
            i += 1
        }
        // Not Envoy's command line (weir --help, say): say nothing about it.
        guard let config else { return nil }
        for w in warnings { fputs("weir: \(w)\n", stderr) }
        return out + ["--config", config]
    }
}

/// The configuration document of a file: weir's YAML, or an Envoy bootstrap (JSON).
func loadDocument(_ path: String) throws -> ConfigDocument {
    #if XDS
    if let data = FileManager.default.contents(atPath: path), Bootstrap.recognizes(data) {
        let f = EnvoyCommandLine.flags
        let (doc, warnings) = try Bootstrap.document(data, path: path, flags: Bootstrap.Flags(drainSeconds: f.drainSeconds, serviceCluster: f.serviceCluster, serviceNode: f.serviceNode))
        for w in warnings { fputs("weir: \(w)\n", stderr) }
        return doc
    }
    #endif
    return try YAMLLoader.load(path: path)
}

struct ConfigOption: ParsableArguments {
    @Option(name: .shortAndLong, help: "The YAML config file.")
    var config: String
}

/// Loads and compiles a config file, or prints every error and exits 1.
func loadSnapshot(_ path: String) throws -> Snapshot {
    do {
        let doc = try loadDocument(path)
        XDSState.staticDocument.withLock { $0 = doc }
        return try Compiler.compile(doc)
    } catch let e as ConfigErrors {
        for err in e.errors { fputs("\(err)\n", stderr) }
        fputs("\(path): \(e.errors.count) error(s); nothing was applied\n", stderr)
        throw ExitCode(1)
    }
}

struct Simulate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a shard against a simulated network, seed after seed, checking its invariants (see docs/simulation.md).")
    @Option(help: "The first seed.") var seed: UInt64 = 1
    @Option(help: "How many seeds, one after another (seed, seed+1, ...).") var count = 1
    @Option(help: "Steps per seed (each: the simulated world acts, then the shard runs one loop turn).") var steps = 5000
    @Option(help: "Replay an input of the connection fuzzer (Fuzz/ConnectionFuzz): its first byte is the seed, the rest steers; use --steps 200 as the fuzzer does.")
    var tape: String?

    func validate() throws {
        guard (1...1_000_000_000).contains(count) else { throw ValidationError("--count must be 1 to 1000000000") }
        guard (1...10_000_000).contains(steps) else { throw ValidationError("--steps must be 1 to 10000000") }
    }

    func run() throws {
        Log.bootstrap()
        Log.level = .critical
        if let tape {
            guard let data = FileManager.default.contents(atPath: tape) else { throw ValidationError("--tape: cannot read \(tape)") }
            let bytes = [UInt8](data)
            let report = Simulation.run(seed: UInt64(bytes.first ?? 0), steps: steps, tape: Array(bytes.dropFirst()))
            print(report)
            if report.failure != nil { throw ExitCode(1) }
            return
        }
        var failed = 0
        for s in seed..<(seed &+ UInt64(count)) {
            // Printed first: a trap ends the process, and the seed must survive it.
            print("seed \(s) ...", terminator: "")
            fflush(stdout)
            let report = Simulation.run(seed: s, steps: steps)
            print("\r\(report)")
            if report.failure != nil { failed += 1 }
        }
        if failed > 0 {
            print("\(failed) of \(count) seeds failed; replay one with: weir simulate --seed N --steps \(steps)")
            throw ExitCode(1)
        }
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Validate a config file and summarize it; exit 1 with every error otherwise.")
    @OptionGroup var options: ConfigOption

    func run() throws {
        let s = try loadSnapshot(options.config)
        print("\(options.config): OK")
        print("shards: \(s.shards.map(String.init) ?? "auto (\(Server.cpuCount) here)"), drain_timeout: \(formatDuration(nanoseconds: s.drainTimeoutNanoseconds)), log_level: \(s.logLevel)")
        print("limits: \(s.limits.maxConnectionsPerShard) connections/shard, \(s.limits.buffersPerShard) buffers x \(s.limits.bufferBytes) B/shard")
        print("listeners:")
        for l in s.listeners {
            print("  \(l.name)  \(l.address)  \(l.proto.rawValue) -> \(l.targetSummary(in: s))  idle_timeout \(formatDuration(nanoseconds: l.idleTimeoutNanoseconds))")
            if let tls = l.tls {
                print("    tls \(tls.minVersion)+\(tls.alpn.isEmpty ? "" : ", alpn \(tls.alpn.joined(separator: ","))")\(tls.clientCA.map { ", client certificates from \($0)" } ?? ""), tickets rotate every \(formatDuration(nanoseconds: Int64(tls.ticketKeyRotationSeconds) * 1_000_000_000))")
                for c in tls.summaries { print("      certificate \(c)") }
            }
            if let http = l.http {
                print("    header timeout \(formatDuration(nanoseconds: http.requestHeaderTimeoutNanoseconds)), max header \(http.limits.maxHeaderBytes) B, max body \(http.limits.maxBodyBytes) B\(http.accessLog.map { ", access log \($0)" } ?? "")")
                for (i, r) in http.routes.routes.enumerated() { print("    route \(i + 1): \(r.summary) -> \(http.actions[i].summary(in: s))") }
            }
        }
        print("clusters:")
        for c in s.clusters {
            print("  \(c.name)  \(balancerSummary(c))  connect_timeout \(formatDuration(nanoseconds: c.connectTimeoutNanoseconds))  connect_attempts \(c.connectAttempts)")
            if let t = c.tls { print("    tls to endpoints\(t.serverName.map { ", sni \($0)" } ?? "")\(t.verify ? ", verified" : ", NOT verified")") }
            for e in c.endpoints { print("    \(e.address)  weight \(e.weight)") }
        }
    }
}

/// The balancer and the knobs that matter for it, for `weir check`.
func balancerSummary(_ c: Cluster) -> String {
    var parts: [String] = []
    switch c.table {
    case .ring(let t): parts.append("\(t.size) ring points, hash \(c.options.hashKey.text)")
    case .maglev(let t): parts.append("table \(t.size), hash \(c.options.hashKey.text)")
    default: break
    }
    if c.balancer == .leastRequest { parts.append("choice_count \(c.options.choiceCount), bias \(c.options.activeRequestBias)") }
    if let s = c.slowStart { parts.append("slow_start \(formatDuration(nanoseconds: s.windowNanoseconds))") }
    switch c.health.probe {
    case .http(let path, _, _): parts.append("http health \(path) every \(formatDuration(nanoseconds: c.health.intervalNanoseconds))")
    case .tcp: parts.append("tcp health every \(formatDuration(nanoseconds: c.health.intervalNanoseconds))")
    case .none: break
    }
    if let n = c.health.consecutiveFailures { parts.append("ejects after \(n) failures") }
    return c.balancer.rawValue + (parts.isEmpty ? "" : " (" + parts.joined(separator: ", ") + ")")
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version.")
    func run() { print("weir \(weirVersion)") }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the load balancer with a config file. SIGHUP reloads it; SIGTERM or SIGINT drains and exits.")
    @OptionGroup var options: ConfigOption
    @Option(help: "Shard threads (default: the config's 'shards', else one per CPU).")
    var shards: Int?
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (overrides the config).")
    var logLevel: String?
    @Option(help: "I/O backend: auto (io_uring where the kernel allows it, else epoll), io_uring or epoll (overrides the config's limits.io).")
    var io: String?

    func validate() throws {
        if let s = shards, !(1...1024).contains(s) { throw ValidationError("--shards must be 1 to 1024") }
        if let io, Limits.IOSetting(rawValue: io) == nil { throw ValidationError("--io must be auto, io_uring or epoll, not '\(io)'") }
        if let l = logLevel, LogLevel(name: l) == nil { throw ValidationError("--log-level must be one of \(LogLevel.allCases.map { "\($0)" }.joined(separator: ", "))") }
    }

    func run() throws {
        let snapshot = try loadSnapshot(options.config)
        Log.bootstrap()
        Log.level = LogLevel(name: logLevel ?? snapshot.logLevel) ?? .info
        #if !XDS
        if let xds = snapshot.xds {
            fputs("weir: this build has no xDS (it was built with --disable-default-traits); build with the default traits to use 'xds:' (\(xds.target))\n", stderr)
            throw ExitCode(1)
        }
        #endif
        let signals = SignalSet.blockForProcess()
        let server = try Server(snapshot: snapshot, shards: shards, io: io.flatMap(Limits.IOSetting.init(rawValue:)))
        do { try server.start() } catch {
            fputs("weir: \(error)\n", stderr)
            throw ExitCode(1)
        }
        #if XDS
        if let xds = snapshot.xds {
            // Listeners and clusters also come from a control plane: each update is compiled with
            // the file's static part and published whole, or NACKed.
            let client = ADSClient(settings: xds) { listeners, clusters in
                server.reloadLock.withLock { _ -> [ConfigError] in
                    do {
                        try publishMerged(server, dynamic: (listeners, clusters), reason: "xds")
                        return []
                    } catch let e as ConfigErrors {
                        return e.errors.isEmpty ? [ConfigError(SourcePosition(file: "xds", line: 1, column: 1), "the configuration could not be compiled")] : e.errors
                    } catch let e as StartError where e.listener != nil {
                        // A port that cannot be bound refuses its listener, not the whole response.
                        return [ConfigError(SourcePosition(file: "xds:listener/\(e.listener!)", line: 1, column: 1), e.description)]
                    } catch {
                        return [ConfigError(SourcePosition(file: "xds", line: 1, column: 1), "\(error)")]
                    }
                }
            }
            XDSState.client.withLock { $0 = client }
            server.extraPrometheus = { client.prometheus() }
            server.extraEnvoyStats = { client.envoyStats() }
            server.extraConfigDump = { client.configDumpJSON() }
            client.start()
            Log.info("xds: control plane \(xds.target), node \(xds.nodeID)")
        }
        #endif
        if let settings = server.store.snapshot.admin {
            do {
                let admin = try AdminServer(server: server, settings: settings, hooks: AdminServer.Hooks(
                    reload: { reload(server) },
                    drain: { kill(getpid(), SIGTERM) },
                    version: weirVersion))
                try admin.start()
                Log.info("admin API on http://\(admin.address)/ (GET / lists its paths)")
            } catch {
                fputs("weir: admin: \(error)\n", stderr)
                _ = server.drain(timeoutNanoseconds: 0)
                throw ExitCode(1)
            }
        }
        watchFile(server)
        Log.info("weir \(weirVersion) running generation \(server.store.snapshot.generation) from \(options.config); SIGHUP reloads, SIGTERM drains")
        while true {
            switch signals.wait() {
            case SIGHUP:
                reload(server)
            case let s:
                let timeout = server.store.snapshot.drainTimeoutNanoseconds
                Log.info("signal \(s): draining (up to \(formatDuration(nanoseconds: timeout)))")
                let r = server.drain(timeoutNanoseconds: timeout)
                if r.drainedCleanly {
                    Log.info("drained in \(String(format2: r.seconds))s; every connection ended on its own")
                } else {
                    Log.warning("drain_timeout passed; cut \(r.cut) connection(s)")
                }
                let t = server.stats
                Log.info("totals: \(t.summary), health changes \(server.healthChanges), panics \(server.panics)",
                         ["event": "exit", "accepted": "\(t.accepted)", "completed": "\(t.completed)", "aborted": "\(t.aborted)",
                          "cut": "\(r.cut)", "drain_seconds": "\(String(format2: r.seconds))"])
                return
            }
        }
    }

    /// watch_config: a thread that stats the file twice a second and reloads when its size,
    /// modification time or inode changes (editors often replace the file rather than write it).
    /// The setting is read from each snapshot, so a reload can turn it on or off.
    func watchFile(_ server: Server) {
        let path = options.config
        let run = self
        spawnThread {
            func fingerprint() -> [Int] {
                var st = stat()
                guard stat(path, &st) == 0 else { return [] }
                return [Int(st.st_size), Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec), Int(st.st_ino)]
            }
            var last = fingerprint()
            while !server.draining.load(ordering: .acquiring) {
                usleep(500_000)
                let now = fingerprint()
                guard now != last else { continue }
                last = now
                if server.store.snapshot.watchConfig {
                    Log.info("watch_config: \(path) changed; reloading")
                    run.reload(server)
                }
            }
        }
    }

    /// Reloads the config file through the compile-and-swap path; SIGHUP and POST /reload both
    /// land here, one at a time. A failure changes nothing and says why.
    @discardableResult
    func reload(_ server: Server) -> Result<UInt64, AdminServer.ReloadRefused> {
        server.reloadLock.withLock { _ in
            let current = server.store.snapshot.generation
            do {
                let doc = try loadDocument(options.config)
                XDSState.staticDocument.withLock { $0 = doc }
                let dynamic = XDSState.dynamic.withLock { $0 }
                var merged = doc
                merged.listeners += dynamic.0
                merged.clusters += dynamic.1
                let next = try Compiler.compile(merged, previous: server.store.snapshot)
                if next.admin != server.store.snapshot.admin {
                    Log.warning("reload: the admin address is fixed at start; the new one applies after a restart")
                }
                if logLevel == nil { Log.level = LogLevel(name: next.logLevel) ?? .info }
                let published = try server.reload(next)
                // Say when every shard has it, so an operator (or a test) knows new connections use it.
                let deadline = monotonicNanoseconds() + 2_000_000_000
                while !server.allShardsAdopted(published.generation) && monotonicNanoseconds() < deadline { usleep(1000) }
                if server.allShardsAdopted(published.generation) {
                    Log.info("reload: generation \(published.generation) applied by all \(server.shardCount) shard(s)",
                             ["event": "reload", "result": "applied", "generation": "\(published.generation)", "source": "\(published.source)"])
                } else {
                    Log.warning("reload: generation \(published.generation) published but not yet adopted by every shard after 2s")
                }
                server.reloadsSucceeded.add(1, ordering: .relaxed)
                return .success(published.generation)
            } catch let e as ConfigErrors {
                for err in e.errors { Log.error("reload refused: \(err)") }
                Log.error("reload refused: \(e.errors.count) error(s); still serving generation \(current)")
                server.reloadsFailed.add(1, ordering: .relaxed)
                return .failure(AdminServer.ReloadRefused(e.errors.map(\.description).joined(separator: "\n")
                                                          + "\n\(e.errors.count) error(s); still serving generation \(current)"))
            } catch {
                Log.error("reload refused: \(error); still serving generation \(current)")
                server.reloadsFailed.add(1, ordering: .relaxed)
                return .failure(AdminServer.ReloadRefused("\(error); still serving generation \(current)"))
            }
        }
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Ask a running weir to reload its config file, through its admin API.")
    @OptionGroup var options: ConfigOption
    @Option(help: "The admin address (default: the config file's admin.address, else 127.0.0.1:9901).")
    var admin: String?

    func run() throws {
        let text = admin ?? ((try? YAMLLoader.load(path: options.config))?.adminAddress?.value) ?? "127.0.0.1:9901"
        let address: SocketAddress
        do { address = try SocketAddress.parse(text) } catch { throw ValidationError("admin address: \(error)") }
        let (status, body) = try adminRequest(address, method: "POST", path: "/reload")
        print(body, terminator: "")
        if status != 200 { throw ExitCode(1) }
    }
}

/// One request to the admin API over a blocking socket with a 10 s timeout.
func adminRequest(_ address: SocketAddress, method: String, path: String) throws -> (Int, String) {
    let fd = socket(address.family == .inet ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    guard address.withSockAddr({ connect(fd, $0, $1) }) == 0 else {
        throw ValidationError("cannot reach the admin API at \(address): \(String(cString: strerror(errno))); is weir running with admin: { address: \(address) }?")
    }
    let request = Array("\(method) \(path) HTTP/1.1\r\nHost: \(address)\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var reply: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        reply.append(contentsOf: buffer[0..<n])
    }
    let text = String(decoding: reply, as: UTF8.self)
    let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
    let body = text.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
    return (status, body)
}

extension String {
    init(format2 v: Double) {
        let scaled = Int((v * 100).rounded())
        let frac = scaled % 100
        self = "\(scaled / 100).\(frac < 10 ? "0" : "")\(frac)"
    }
}

/// The signals the control thread handles synchronously with sigwait. Blocked before the shard
/// threads start, so they inherit the mask and never see them.
struct SignalSet {
    var set = sigset_t()

    static func blockForProcess() -> SignalSet {
        // splice and send on a closed peer must return EPIPE, not kill the process.
        signal(SIGPIPE, SIG_IGN)
        var s = SignalSet()
        sigemptyset(&s.set)
        for sig in [SIGHUP, SIGTERM, SIGINT] { sigaddset(&s.set, sig) }
        pthread_sigmask(SIG_BLOCK, &s.set, nil)
        return s
    }

    func wait() -> Int32 {
        var sig: Int32 = 0
        var set = self.set
        while sigwait(&set, &sig) != 0 {}
        return sig
    }
}

/// What xDS has contributed, and the file's own document, so a reload of either keeps the other.
enum XDSState {
    static let staticDocument = Mutex<ConfigDocument?>(nil)
    static let dynamic = Mutex<([ListenerDocument], [ClusterDocument])>(([], []))
    #if XDS
    static let client = Mutex<ADSClient?>(nil)
    #endif
}

/// Compiles the file's document with `dynamic` and publishes it (the caller holds the reload lock).
func publishMerged(_ server: Server, dynamic: ([ListenerDocument], [ClusterDocument]), reason: String) throws {
    guard let doc = XDSState.staticDocument.withLock({ $0 }) else { throw ConfigErrors([]) }
    var merged = doc
    merged.listeners += dynamic.0
    merged.clusters += dynamic.1
    let next = try Compiler.compile(merged, previous: server.store.snapshot)
    let published = try server.reload(next)
    XDSState.dynamic.withLock { $0 = dynamic }
    server.reloadsSucceeded.add(1, ordering: .relaxed)
    Log.info("\(reason): generation \(published.generation) published (\(dynamic.0.count) listener(s), \(dynamic.1.count) cluster(s) from xds)")
}
