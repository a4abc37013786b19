// The control side of the data plane: starts the shard threads, binds listening sockets for them,
// publishes new snapshots (reload), and drains. Runs on the control thread, never on a shard.
import Synchronization
import WeirConfig
import WeirCore
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

/// Listening sockets the control thread bound, waiting for their shard to take them. Binding on
/// the control thread lets a reload fail whole (address in use, bad IP) before any shard moves.
final class ListenerSockets: Sendable {
    private let table = Mutex<[SocketAddress: [Int32]]>([:])

    func has(_ address: SocketAddress) -> Bool { table.withLock { $0[address] != nil } }

    func put(_ address: SocketAddress, fds: [Int32]) { table.withLock { $0[address] = fds } }

    /// The socket bound for `shard`, handed over once.
    func take(_ address: SocketAddress, shard: Int) -> Int32? {
        table.withLock { t in
            guard var fds = t[address], shard < fds.count, fds[shard] >= 0 else { return nil }
            let fd = fds[shard]
            fds[shard] = -1
            t[address] = fds.allSatisfy({ $0 < 0 }) ? nil : fds
            return fd
        }
    }

    /// Closes sockets no shard will take because their listener is gone from `snapshot`.
    func closeUnwanted(keeping snapshot: Snapshot) {
        let wanted = Set(snapshot.listeners.filter(\.binds).map(\.address))
        table.withLock { t in
            for (address, fds) in t where !wanted.contains(address) {
                for fd in fds where fd >= 0 { close(fd) }
                t[address] = nil
            }
        }
    }
}

/// What the control thread shares with one shard.
final class ShardControl: @unchecked Sendable {
    let waker: Waker
    let store: SnapshotStore
    let sockets: ListenerSockets
    let shardCount: Int
    let reports: OutlierReports
    let command = Atomic<Int>(ShardCommand.none.rawValue)
    /// 0 starting, 1 running, 2 failed, 3 exited.
    let state = Atomic<Int>(0)
    let adoptedGeneration = Atomic<UInt64>(0)
    /// The kernel can end a multishot recv at a byte limit (probed once at start).
    var recvLimit = true
    let failure = Mutex<String?>(nil)
    /// Written by the shard only; read by the control thread for reports (a torn read at worst
    /// shows a count one step old).
    let stats: UnsafeMutablePointer<ShardStats>
    let named = StatsRegistry()

    init(store: SnapshotStore, sockets: ListenerSockets, shardCount: Int, reports: OutlierReports) throws {
        waker = try Waker()
        self.store = store; self.sockets = sockets; self.shardCount = shardCount; self.reports = reports
        stats = .allocate(capacity: 1)
        stats.initialize(to: ShardStats())
    }
    deinit { stats.deallocate() }
}

public struct StartError: Error, CustomStringConvertible {
    public let description: String
    /// The listener whose address could not be bound, when that is what failed.
    public var listener: String? = nil
}

/// The running data plane.
public final class Server: @unchecked Sendable {
    public let store: SnapshotStore
    public let shardCount: Int
    let sockets = ListenerSockets()
    var controls: [ShardControl] = []
    let reports: OutlierReports
    var health: HealthChecker?
    var threads: [pthread_t] = []
    /// Addresses actually bound per configured address (they differ when the config says port 0).
    public private(set) var boundAddresses: [SocketAddress: SocketAddress] = [:]

    /// What the operator asked for (the command line over limits.io), and the backend chosen at start.
    public let ioSetting: Limits.IOSetting
    public private(set) var io: IOBackendKind = .ioUring

    public static var cpuCount: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    public init(snapshot: Snapshot, shards: Int? = nil, io: Limits.IOSetting? = nil) throws {
        ioSetting = io ?? snapshot.limits.io
        reports = try OutlierReports()
        store = SnapshotStore(snapshot)
        shardCount = shards ?? snapshot.shards ?? Server.cpuCount
    }

    /// Probes io_uring, binds the listeners, starts the shards, and returns once every shard runs.
    public func start() throws {
        switch ioSetting {
        case .epoll:
            io = .epoll
            Log.info("epoll backend (io: epoll); starting \(shardCount) shard(s)")
        case .ioUring:
            let flags: String
            do { flags = try Ring.probe() } catch { throw StartError(description: "\(error) (io: io_uring was asked for; io: auto falls back to epoll)") }
            io = .ioUring
            Log.info("io_uring ready (\(flags)); starting \(shardCount) shard(s)")
        case .auto:
            do {
                let flags = try Ring.probe()
                io = .ioUring
                Log.info("io_uring ready (\(flags)); starting \(shardCount) shard(s)")
            } catch {
                io = .epoll
                Log.warning("io_uring is not available (\(error)); using the epoll backend; starting \(shardCount) shard(s)")
            }
        }
        // The epoll backend bounds its receives itself.
        let recvLimit = io == .epoll || Ring.probeRecvLimit()
        if !recvLimit {
            Log.warning("this kernel cannot bound a multishot recv by bytes (Linux 6.16+); a fast sender facing a slow receiver may take more than max_queued_buffers buffers in one burst")
        }
        try bindNewListeners(store.snapshot)
        for i in 0..<shardCount {
            let control = try ShardControl(store: store, sockets: sockets, shardCount: shardCount, reports: reports)
            control.recvLimit = recvLimit
            controls.append(control)
            threads.append(try spawnShard(index: i, control: control))
        }
        // Startup only: wait for every shard to create its ring and open its listeners.
        while true {
            let states = controls.map { $0.state.load(ordering: .acquiring) }
            if let failed = controls.first(where: { $0.state.load(ordering: .acquiring) == 2 }) {
                let why = failed.failure.withLock { $0 } ?? "unknown"
                stopAll(.cut)
                throw StartError(description: "a shard could not start: \(why)")
            }
            if states.allSatisfy({ $0 == 1 }) { break }
            usleep(1000)
        }
        let controls = self.controls
        let checker = try HealthChecker(store: store, reports: reports, io: io, wakeShards: { controls.forEach { $0.waker.wake() } })
        try checker.start()
        health = checker
        for l in store.snapshot.listeners where l.chainOf == nil {
            let at = l.binds ? "\(boundAddresses[l.address] ?? l.address)" : "\(l.address) (not bound: reached by hand-off)"
            Log.info("listener \(l.name) on \(at) (\(l.proto.rawValue)) -> \(l.targetSummary(in: store.snapshot))")
        }
    }

    func spawnShard(index: Int, control: ShardControl) throws -> pthread_t {
        let store = self.store
        let io = self.io
        let body = {
            do {
                switch io {
                case .ioUring: try Server.runShard(Ring.self, index: index, control: control, store: store)
                case .epoll: try Server.runShard(EpollIO.self, index: index, control: control, store: store)
                case .simulated: preconditionFailure("simulated shards run in the simulation harness, not in a server")
                }
            } catch {
                control.failure.withLock { $0 = "\(error)" }
                control.state.store(2, ordering: .releasing)
            }
        }
        do { return try startThread(body) } catch { throw StartError(description: "\(error)") }
    }

    /// One shard's life on its thread, specialized for its backend.
    static func runShard<IO: IOBackend>(_: IO.Type, index: Int, control: ShardControl, store: SnapshotStore) throws {
        let shard = try Shard<IO>(index: index, control: control, snapshot: store.snapshot)
        control.state.store(1, ordering: .releasing)
        shard.run()
        control.state.store(3, ordering: .releasing)
    }

    /// Binds one SO_REUSEPORT socket per shard for each listener address not yet open. Throws
    /// (closing what it bound) when any address cannot be bound, so a reload changes nothing.
    func bindNewListeners(_ snapshot: Snapshot) throws {
        var opened: [(SocketAddress, [Int32])] = []
        var current: String? = nil
        do {
            for l in snapshot.listeners where l.binds && boundAddresses[l.address] == nil && !sockets.has(l.address) {
                current = l.name
                var address = l.address
                if address.port != 0 { try Sockets.checkFree(address) }
                var fds: [Int32] = []
                opened.append((l.address, fds))
                for _ in 0..<shardCount {
                    let fd = try Sockets.listen(address, backlog: l.backlog, reusePort: true)
                    fds.append(fd)
                    opened[opened.count - 1].1 = fds
                    if address.port == 0, let bound = Sockets.localAddress(fd) { address = bound }
                }
                boundAddresses[l.address] = address
            }
        } catch {
            for (a, fds) in opened { fds.forEach { close($0) }; boundAddresses[a] = nil }
            throw StartError(description: "listener\(current.map { " '\($0)'" } ?? ""): \(error)", listener: current)
        }
        for (a, fds) in opened { sockets.put(a, fds: fds) }
    }

    /// Publishes `next` to every shard. New listeners are bound first; if that fails the running
    /// snapshot stays and the error says why.
    @discardableResult
    public func reload(_ next: Snapshot) throws -> Snapshot {
        let old = store.snapshot
        if next.limits != old.limits || (next.shards ?? shardCount) != shardCount {
            Log.warning("reload: shard count and limits are fixed at start; the new values apply after a restart")
        }
        try bindNewListeners(next)
        // Endpoints this reload adds are stamped now, so slow start can ramp them.
        let now = monotonicNanoseconds()
        let published = store.publish { current in next.inheritingEndpointState(from: current, now: now) }!
        controls.forEach { $0.waker.wake() }
        sockets.closeUnwanted(keeping: published)
        let kept = Set(published.listeners.filter(\.binds).map(\.address))
        for a in boundAddresses.keys where !kept.contains(a) { boundAddresses[a] = nil }
        Log.info("reload: generation \(published.generation) published from \(published.source)")
        return published
    }

    /// True once every shard runs generation `g` or newer.
    public func allShardsAdopted(_ g: UInt64) -> Bool {
        controls.allSatisfy { $0.adoptedGeneration.load(ordering: .acquiring) >= g }
    }

    /// Endpoint health state changes logged so far (read after a drain, or racy-but-harmless before).
    public private(set) var healthChanges = 0
    /// Times a cluster entered panic.
    public private(set) var panics = 0

    /// Reloads by result, for /stats/prometheus.
    public let reloadsSucceeded = Atomic<Int>(0)
    public let reloadsFailed = Atomic<Int>(0)
    /// Serializes reloads from SIGHUP and from the admin API.
    public let reloadLock = Mutex<Void>(())
    public let startedAt = monotonicNanoseconds()
    /// Extra text for /stats/prometheus and an extra JSON member for /config_dump (the xDS
    /// client's state). Set once before the admin API starts.
    public var extraPrometheus: (@Sendable () -> String)? = nil
    /// Envoy-named counters for the admin's /stats (the xDS client's update counts).
    public var extraEnvoyStats: (@Sendable () -> [String: Int])? = nil
    public var extraConfigDump: (@Sendable () -> String)? = nil
    /// Set by drain(): /ready answers 503 from then on.
    public let draining = Atomic<Bool>(false)

    /// Per-listener and per-endpoint counters summed over shards, by name.
    public func namedStats() -> (listeners: [String: ListenerCounters], endpoints: [String: [(SocketAddress, EndpointCounters)]]) {
        var listeners: [String: ListenerCounters] = [:]
        var endpoints: [EndpointKey: EndpointCounters] = [:]
        for c in controls {
            let (l, e) = c.named.read()
            for (name, v) in l {
                var sum = listeners[name] ?? ListenerCounters()
                sum.accepted += v.accepted; sum.active += v.active; sum.rejected += v.rejected
                sum.requests += v.requests; sum.localResponses += v.localResponses; sum.retries += v.retries; sum.poolRetries += v.poolRetries
                sum.responses.0 += v.responses.0; sum.responses.1 += v.responses.1; sum.responses.2 += v.responses.2
                sum.responses.3 += v.responses.3; sum.responses.4 += v.responses.4
                sum.latency = sum.latency + v.latency
                sum.tlsHandshakes += v.tlsHandshakes; sum.tlsResumptions += v.tlsResumptions
                sum.tlsFailedVersion += v.tlsFailedVersion; sum.tlsFailedCertificate += v.tlsFailedCertificate
                sum.tlsFailedOther += v.tlsFailedOther
                listeners[name] = sum
            }
            for (key, v) in e { endpoints[key] = (endpoints[key] ?? EndpointCounters()) + v }
        }
        var byCluster: [String: [(SocketAddress, EndpointCounters)]] = [:]
        for (key, v) in endpoints { byCluster[key.cluster, default: []].append((key.address, v)) }
        return (listeners, byCluster)
    }

    /// Health counters from the checker (state changes, panics) while running.
    public var healthCounters: (changes: Int, panics: Int) {
        if let h = health { return (h.changes, h.panics) }
        return (healthChanges, panics)
    }

    public var stats: ShardStats { controls.reduce(ShardStats()) { $0 + $1.stats.pointee } }

    func stopAll(_ command: ShardCommand) {
        for c in controls {
            c.command.store(command.rawValue, ordering: .releasing)
            c.waker.wake()
        }
    }

    public struct DrainReport: Sendable {
        public var drainedCleanly: Bool
        public var cut: Int
        public var seconds: Double
    }

    /// Stops accepting, lets open connections finish for up to `timeoutNanoseconds`, then cuts
    /// the rest; returns once every shard thread has ended.
    public func drain(timeoutNanoseconds: Int64) -> DrainReport {
        let start = monotonicNanoseconds()
        draining.store(true, ordering: .releasing)
        stopAll(.drain)
        var clean = true
        while !controls.allSatisfy({ $0.state.load(ordering: .acquiring) >= 2 }) {
            if clean && monotonicNanoseconds() - start > timeoutNanoseconds {
                clean = false
                stopAll(.cut)
            }
            usleep(5000)
        }
        for t in threads { pthread_join(t, nil) }
        threads = []
        health?.stop()
        healthChanges = health?.changes ?? healthChanges
        panics = health?.panics ?? panics
        health = nil
        sockets.closeUnwanted(keeping: Snapshot.empty)
        return DrainReport(drainedCleanly: clean, cut: stats.cutOnDrain,
                           seconds: Double(monotonicNanoseconds() - start) / 1e9)
    }
}
