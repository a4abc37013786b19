// The weir command: run, check, demo, version.
import ArgumentParser
import WeirConfig
import WeirCore
import WeirProxy
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
        subcommands: [Run.self, Check.self, Demo.self, Version.self])
}

struct ConfigOption: ParsableArguments {
    @Option(name: .shortAndLong, help: "The YAML config file.")
    var config: String
}

/// Loads and compiles a config file, or prints every error and exits 1.
func loadSnapshot(_ path: String) throws -> Snapshot {
    do {
        return try Compiler.compile(try YAMLLoader.load(path: path))
    } catch let e as ConfigErrors {
        for err in e.errors { fputs("\(err)\n", stderr) }
        fputs("\(path): \(e.errors.count) error(s); nothing was applied\n", stderr)
        throw ExitCode(1)
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
            print("  \(l.name)  \(l.address)  \(l.proto.rawValue) -> \(s.clusters[l.clusterIndex].name)  idle_timeout \(formatDuration(nanoseconds: l.idleTimeoutNanoseconds))")
        }
        print("clusters:")
        for c in s.clusters {
            print("  \(c.name)  \(balancerSummary(c))  connect_timeout \(formatDuration(nanoseconds: c.connectTimeoutNanoseconds))  connect_attempts \(c.connectAttempts)")
            for e in c.endpoints { print("    \(e.address)  weight \(e.weight)") }
        }
    }
}

/// The balancer and the knobs that matter for it, for `weir check`.
func balancerSummary(_ c: Cluster) -> String {
    var parts: [String] = []
    switch c.table {
    case .ring(let t): parts.append("\(t.size) ring points, hash source_ip")
    case .maglev(let t): parts.append("table \(t.size), hash source_ip")
    default: break
    }
    if c.balancer == .leastRequest { parts.append("choice_count \(c.options.choiceCount), bias \(c.options.activeRequestBias)") }
    if let s = c.slowStart { parts.append("slow_start \(formatDuration(nanoseconds: s.windowNanoseconds))") }
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

    func validate() throws {
        if let s = shards, !(1...1024).contains(s) { throw ValidationError("--shards must be 1 to 1024") }
        if let l = logLevel, LogLevel(name: l) == nil { throw ValidationError("--log-level must be one of \(LogLevel.allCases.map { "\($0)" }.joined(separator: ", "))") }
    }

    func run() throws {
        let snapshot = try loadSnapshot(options.config)
        Log.level = LogLevel(name: logLevel ?? snapshot.logLevel) ?? .info
        let signals = SignalSet.blockForProcess()
        let server = try Server(snapshot: snapshot, shards: shards)
        do { try server.start() } catch {
            fputs("weir: \(error)\n", stderr)
            throw ExitCode(1)
        }
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
                Log.info("totals: \(server.stats.summary), health changes \(server.healthChanges), panics \(server.panics)")
                return
            }
        }
    }

    func reload(_ server: Server) {
        let current = server.store.snapshot.generation
        do {
            let next = try Compiler.compile(try YAMLLoader.load(path: options.config))
            if logLevel == nil { Log.level = LogLevel(name: next.logLevel) ?? .info }
            let published = try server.reload(next)
            // Say when every shard has it, so an operator (or a test) knows new connections use it.
            let deadline = monotonicNanoseconds() + 2_000_000_000
            while !server.allShardsAdopted(published.generation) && monotonicNanoseconds() < deadline { usleep(1000) }
            if server.allShardsAdopted(published.generation) {
                Log.info("reload: generation \(published.generation) applied by all \(server.shardCount) shard(s)")
            } else {
                Log.warning("reload: generation \(published.generation) published but not yet adopted by every shard after 2s")
            }
        } catch let e as ConfigErrors {
            for err in e.errors { Log.error("reload refused: \(err)") }
            Log.error("reload refused: \(e.errors.count) error(s); still serving generation \(current)")
        } catch {
            Log.error("reload refused: \(error); still serving generation \(current)")
        }
    }
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
