// Active health checks and passive ejections, once per process (not once per shard: N shards x
// M endpoints of probes is a known complaint about per-worker checkers). Runs on its own thread
// with its own ring; publishes what it learns as new snapshot generations that share every
// cluster whose availability did not change.
import CURing
import Synchronization
import WeirBalance
import WeirConfig
import WeirCore
import WeirHealth
import WeirHTTP
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

/// An endpoint of a cluster, by name and address, so its health survives reloads.
struct EndpointKey: Hashable {
    let cluster: String
    let address: SocketAddress
}

/// What shards tell the checker: this endpoint failed `consecutive_failures` times in a row.
/// Adding one wakes the checker, so an ejection takes effect in microseconds, not at its next tick.
final class OutlierReports: Sendable {
    private let pending = Mutex<[EndpointKey]>([])
    /// The checker's wake-up; also used to stop it.
    let waker: Waker
    init() throws { waker = try Waker() }
    func add(_ key: EndpointKey) {
        pending.withLock { $0.append(key) }
        waker.wake()
    }
    func take() -> [EndpointKey] { pending.withLock { p in defer { p.removeAll() }; return p } }
}

final class HealthChecker: @unchecked Sendable {
    enum Phase { case idle, connecting, sending, receiving }

    struct Probe {
        var key: EndpointKey
        var policy: HealthPolicy
        var target: SocketAddress
        var phase = Phase.idle
        var fd: Int32 = -1
        var inflight = 0
        var generation: UInt32 = 0
        var nextAt: Int64 = 0
        var deadline: Int64 = 0
        var failed = false
        var received = 0
        var lastError = ""
    }

    let store: SnapshotStore
    let reports: OutlierReports
    var waker: Waker { reports.waker }
    let wakeShards: () -> Void
    let stopped = Atomic<Bool>(false)
    private var thread = pthread_t()
    private var ring: (any IOBackend)!
    /// The shards' backend (the checker is off the data path: an existential is enough).
    let io: IOBackendKind
    private var states: [EndpointKey: EndpointHealth] = [:]
    private var policies: [String: HealthPolicy] = [:]
    private var probes: [Probe] = []
    private var slotOf: [EndpointKey: Int] = [:]
    /// Per probe slot: connect address, request bytes and receive buffer, kept alive while in flight.
    private var addresses: UnsafeMutablePointer<sockaddr_storage>!
    private var timeouts: UnsafeMutablePointer<__kernel_timespec>!
    private var buffers: UnsafeMutableRawPointer!
    private var requests: [[UInt8]] = []
    /// Receive buffers of probe sets replaced while probes were in flight: the kernel may still
    /// write into them, so each is freed when the last completion of its set (`base`, the low
    /// 16 bits of those probes' generations) arrives.
    private var retiredBuffers: [(base: UInt32, buffer: UnsafeMutableRawPointer, requests: [[UInt8]], pending: Int)] = []
    /// Raised on every probe-set rebuild so completions for the old set never match a new slot.
    private var generationBase: UInt32 = 0
    private let bufferBytes = 4096
    private var capacity = 0
    private var seenGeneration: UInt64 = 0
    private var random = SplitMix64(seed: UInt64(bitPattern: monotonicNanoseconds()))
    private var wakeValue: UInt64 = 0
    private var panicking = Set<String>()
    /// Counted state changes and panic entries, for the totals line (and stats later).
    private(set) var changes = 0
    private(set) var panics = 0
    private let headers = HeaderTable(capacity: 128)

    init(store: SnapshotStore, reports: OutlierReports, io: IOBackendKind, wakeShards: @escaping () -> Void) throws {
        self.store = store; self.reports = reports; self.io = io; self.wakeShards = wakeShards
    }

    func start() throws {
        do { thread = try startThread { [self] in run() } } catch {
            throw StartError(description: "health checker thread: \(error)")
        }
    }

    func stop() {
        stopped.store(true, ordering: .releasing)
        waker.wake()
        pthread_join(thread, nil)
    }

    // MARK: Loop

    private func run() {
        do { ring = io == .epoll ? try EpollIO(entries: 1024) : try Ring(entries: 1024) } catch {
            Log.error("health checker: \(error); active health checks are off")
            return
        }
        ring.read(fd: waker.fd, into: &wakeValue, count: 8, userData: UserData(op: 7, slot: 0, generation: 0))
        while !stopped.load(ordering: .acquiring) {
            if store.generation != seenGeneration { sync(store.snapshot) }
            let now = monotonicNanoseconds()
            // Ejections and their ends take effect now, not after this turn's wait.
            let ejections = handleReports(now: now)
            if expireEjections(now: now) || ejections { publish() }
            var changed = false
            var nextWake = now + 100_000_000
            for i in probes.indices {
                if probes[i].phase == .idle && probes[i].nextAt <= now { begin(i, now: now) }
                if probes[i].phase != .idle && probes[i].deadline <= now && !probes[i].failed {
                    fail(i, "timed out")
                }
                nextWake = min(nextWake, probes[i].phase == .idle ? probes[i].nextAt : probes[i].deadline)
            }
            for state in states.values { if let until = state.ejectedUntil { nextWake = min(nextWake, until) } }
            let wait = max(1_000_000, nextWake - now)
            _ = ring.submitAndWait(timeoutNanoseconds: wait)
            _ = ring.forEachCompletion { ud, res, _ in
                let u = UserData(raw: ud)
                if u.op == 7 {
                    ring.read(fd: waker.fd, into: &wakeValue, count: 8, userData: UserData(op: 7, slot: 0, generation: 0))
                } else if u.op >= 1 && u.op <= 3 {
                    if complete(u, res) { changed = true }
                }
            }
            if changed { publish() }
        }
        for i in probes.indices where probes[i].fd >= 0 { ring.close(fd: probes[i].fd) }
        ring.submit()
        // Tear the ring down first (that cancels whatever is pending), then free the buffers it
        // might have written into.
        ring = nil
        retiredBuffers.forEach { $0.buffer.deallocate() }
        buffers?.deallocate()
    }

    /// Follows the snapshot: a probe per endpoint of each actively checked cluster, health state
    /// for every endpoint of clusters with checks or outlier detection.
    private func sync(_ snapshot: Snapshot) {
        seenGeneration = snapshot.generation
        var wanted: [EndpointKey: (HealthPolicy, SocketAddress)] = [:]
        var keys = Set<EndpointKey>()
        for c in snapshot.clusters where c.health.probe != nil || c.health.consecutiveFailures != nil {
            policies[c.name] = c.health
            for e in c.endpoints {
                let key = EndpointKey(cluster: c.name, address: e.address)
                keys.insert(key)
                if states[key] == nil { states[key] = EndpointHealth(startHealthy: c.health.startHealthy || c.health.probe == nil) }
                if c.health.probe != nil { wanted[key] = (c.health, e.address.with(port: c.health.portOverride ?? e.address.port)) }
            }
        }
        for key in states.keys where !keys.contains(key) { states[key] = nil }
        // Rebuild probe slots only when the set changed; in-flight probes of removed endpoints end.
        let current = Set(probes.map(\.key))
        if current == Set(wanted.keys) && probes.allSatisfy({ wanted[$0.key]?.0 == $0.policy }) { return }
        // End in-flight probes of the old set. Their completions may still arrive (the kernel
        // may be writing into their buffers), so the old buffers are retired, never freed here.
        // Operations queued this turn reach the kernel first: closing their sockets before the
        // submit would let a shard's new socket take the number and meet a stale send or recv.
        ring.submit()
        for i in probes.indices where probes[i].fd >= 0 {
            if probes[i].inflight > 0 { ring.cancelAll(fd: probes[i].fd, userData: UserData(op: 9, slot: 0, generation: 0)) }
            shutdown(probes[i].fd, Int32(SHUT_RDWR))
            ring.close(fd: probes[i].fd)
        }
        let pending = probes.reduce(0) { $0 + $1.inflight }
        if pending > 0, let old = buffers {
            // The old request bytes stay with the buffer: a queued send may still read them.
            retiredBuffers.append((generationBase & 0xFFFF, old, requests, pending))
            buffers = .allocate(byteCount: max(capacity, 1) * bufferBytes, alignment: 16)
        }
        // Bump every slot's generation so late completions of the old set are ignored.
        generationBase &+= 1
        let now = monotonicNanoseconds()
        probes = wanted.sorted { "\($0.key.cluster)\($0.key.address)" < "\($1.key.cluster)\($1.key.address)" }.map { key, v in
            // Spread the first probes over one interval rather than firing all at once.
            Probe(key: key, policy: v.0, target: v.1, generation: generationBase & 0xFFFF,
                  nextAt: now + Int64(Double(v.0.intervalNanoseconds) * random.nextDouble() * 0.5))
        }
        if probes.count > capacity {
            // Addresses and timeouts are read only at submission; buffers may still be written.
            // No operation of the new set is in flight yet, and the old set's moved to a
            // retired buffer above: the current one can go.
            addresses?.deallocate(); timeouts?.deallocate()
            buffers?.deallocate()
            capacity = max(16, probes.count)
            addresses = .allocate(capacity: capacity)
            timeouts = .allocate(capacity: capacity)
            buffers = .allocate(byteCount: capacity * bufferBytes, alignment: 16)
        }
        requests = probes.map { p in
            switch p.policy.probe {
            case .http(let path, let host, _):
                return Array("GET \(path) HTTP/1.1\r\nHost: \(host ?? "\(p.target)")\r\nUser-Agent: weir-health\r\nConnection: close\r\n\r\n".utf8)
            case .tcp(let send, _): return send
            case .none: return []
            }
        }
        slotOf = Dictionary(uniqueKeysWithValues: probes.enumerated().map { ($1.key, $0) })
        publish()
    }

    // MARK: One probe

    private func begin(_ i: Int, now: Int64) {
        let fd = Sockets.tcpSocket(for: probes[i].target.family)
        guard fd >= 0 else { probes[i].nextAt = now + probes[i].policy.intervalNanoseconds; return }
        probes[i].fd = fd
        probes[i].phase = .connecting
        probes[i].failed = false
        probes[i].received = 0
        // Low 16 bits: the probe-set rebuild; high 8: this probe's attempt.
        probes[i].generation = ((probes[i].generation &+ 0x10000) & 0xFF0000) | (generationBase & 0xFFFF)
        probes[i].deadline = now + probes[i].policy.timeoutNanoseconds
        let len = probes[i].target.fill(&addresses[i])
        let t = probes[i].policy.timeoutNanoseconds
        timeouts[i] = __kernel_timespec(tv_sec: t / 1_000_000_000, tv_nsec: t % 1_000_000_000)
        probes[i].inflight += 1
        let address = UnsafeMutableRawPointer(addresses + i).assumingMemoryBound(to: sockaddr.self)
        ring.connect(fd: fd, address: address, length: len, timeout: timeouts + i,
                     userData: UserData(op: 1, slot: i, generation: probes[i].generation), timeoutUserData: UserData(op: 9, slot: 0, generation: 0))
    }

    /// Advances probe `u.slot`; returns true when availability changed.
    private func complete(_ u: UserData, _ res: Int32) -> Bool {
        let i = u.slot
        guard i < probes.count, probes[i].generation == u.generation else { retiredCompletion(u); return false }
        probes[i].inflight -= 1
        if probes[i].failed { return finish(i, success: false) }
        switch u.op {
        case 1:  // connected
            guard res == 0 else { probes[i].lastError = res == -ECANCELED ? "connect timed out" : "connect: \(String(cString: strerror(-res)))"; return finish(i, success: false) }
            if requests[i].isEmpty { return expectsReply(i) ? recvMore(i) : finish(i, success: true) }
            probes[i].phase = .sending
            probes[i].inflight += 1
            requests[i].withUnsafeBytes { ring.send(fd: probes[i].fd, buffer: $0.baseAddress!, count: $0.count, userData: UserData(op: 2, slot: i, generation: probes[i].generation)) }
            // The request bytes live in `requests`, unchanged until the next sync.
            return false
        case 2:  // sent (probe requests are small: a short send is a failure)
            guard Int(res) == requests[i].count else { probes[i].lastError = "send failed"; return finish(i, success: false) }
            return expectsReply(i) ? recvMore(i) : finish(i, success: true)
        default: // received
            guard res > 0 else {
                probes[i].lastError = res == 0 ? "closed before a complete answer" : "recv: \(String(cString: strerror(-res)))"
                return finish(i, success: false)
            }
            probes[i].received += Int(res)
            let answer = UnsafeRawBufferPointer(start: buffers + i * bufferBytes, count: probes[i].received)
            switch probes[i].policy.probe {
            case .http(_, _, let expect):
                switch HTTPParser.parseResponse(answer, requestMethod: .get, limits: HTTPLimits(), headers: headers) {
                case .complete(let head):
                    let ok = expect.contains { $0.contains(head.status) }
                    probes[i].lastError = ok ? "" : "status \(head.status)"
                    return finish(i, success: ok)
                case .incomplete:
                    if probes[i].received >= bufferBytes { probes[i].lastError = "response head over 4 KiB"; return finish(i, success: false) }
                    return recvMore(i)
                case .failed:
                    probes[i].lastError = "malformed response"
                    return finish(i, success: false)
                }
            case .tcp(_, let expect):
                if contains(answer, expect) { return finish(i, success: true) }
                if probes[i].received >= bufferBytes { probes[i].lastError = "expected bytes not seen"; return finish(i, success: false) }
                return recvMore(i)
            case .none:
                return finish(i, success: true)
            }
        }
    }

    /// A completion of a probe set that was replaced: one less operation may touch its buffer.
    private func retiredCompletion(_ u: UserData) {
        guard let k = retiredBuffers.firstIndex(where: { $0.base == u.generation & 0xFFFF }) else { return }
        retiredBuffers[k].pending -= 1
        if retiredBuffers[k].pending == 0 {
            retiredBuffers.remove(at: k).buffer.deallocate()
            Log.debug("health: the receive buffers of a replaced probe set are freed (its last completion came)")
        }
    }

    private func expectsReply(_ i: Int) -> Bool {
        switch probes[i].policy.probe {
        case .http: return true
        case .tcp(_, let expect): return !expect.isEmpty
        case .none: return false
        }
    }

    private func recvMore(_ i: Int) -> Bool {
        probes[i].phase = .receiving
        probes[i].inflight += 1
        let room = bufferBytes - probes[i].received
        ring.recv(fd: probes[i].fd, into: buffers + i * bufferBytes + probes[i].received, count: room,
                  userData: UserData(op: 3, slot: i, generation: probes[i].generation))
        return false
    }

    private func fail(_ i: Int, _ why: String) {
        probes[i].failed = true
        probes[i].lastError = why
        if probes[i].inflight > 0 {
            shutdown(probes[i].fd, Int32(SHUT_RDWR))
            ring.cancelAll(fd: probes[i].fd, userData: UserData(op: 9, slot: 0, generation: 0))
        } else {
            _ = finish(i, success: false)
        }
    }

    /// Records the result once no operation is pending, and schedules the next probe.
    private func finish(_ i: Int, success: Bool) -> Bool {
        if probes[i].inflight > 0 {
            // Wait for the pending operation (a cancel is on its way) before closing.
            if !success && !probes[i].failed { fail(i, probes[i].lastError) }
            return false
        }
        if probes[i].fd >= 0 { ring.close(fd: probes[i].fd); probes[i].fd = -1 }
        probes[i].phase = .idle
        let key = probes[i].key
        guard var state = states[key] else { return false }
        let change = state.probed(success: success, policy: probes[i].policy)
        states[key] = state
        probes[i].nextAt = monotonicNanoseconds() + probes[i].policy.nextWait(healthy: state.probeHealthy, random: random.nextDouble())
        switch change {
        case .none: return false
        case .becameUnhealthy:
            log(key, "healthy", "unhealthy", "\(probes[i].policy.unhealthyThreshold) consecutive failed probes, last: \(probes[i].lastError)")
        case .becameHealthy:
            log(key, "unhealthy", "healthy", "\(probes[i].policy.healthyThreshold) consecutive passed probes")
        case .returned:
            log(key, "ejected", "healthy", "an active probe passed")
        case .ejected:
            break
        }
        return true
    }

    // MARK: Passive ejection

    private func handleReports(now: Int64) -> Bool {
        var changed = false
        for key in reports.take() {
            guard var state = states[key], state.available, let policy = policies[key.cluster] else { continue }
            let ejected = states.filter { $0.key.cluster == key.cluster && $0.value.ejectedUntil != nil }.count
            let total = states.keys.filter { $0.cluster == key.cluster }.count
            guard Eligibility.mayEject(ejected: ejected, total: total, maxPercent: policy.maxEjectionPercent) else {
                Log.warning("health: cluster \(key.cluster) endpoint \(key.address) failed \(policy.consecutiveFailures ?? 0) times in a row but max_ejection_percent (\(policy.maxEjectionPercent)%) is reached; not ejected")
                continue
            }
            state.eject(now: now, policy: policy)
            states[key] = state
            log(key, "healthy", "ejected", "\(policy.consecutiveFailures ?? 0) consecutive connect failures; back in \(formatDuration(nanoseconds: state.ejectedUntil! - now))")
            changed = true
        }
        return changed
    }

    private func expireEjections(now: Int64) -> Bool {
        var changed = false
        for (key, var state) in states where state.ejectedUntil != nil {
            if state.expire(now: now) == .returned {
                states[key] = state
                log(key, "ejected", state.probeHealthy ? "healthy" : "unhealthy", "ejection time over")
                changed = true
            }
        }
        return changed
    }

    // MARK: Publishing

    private func log(_ key: EndpointKey, _ from: String, _ to: String, _ why: String) {
        changes += 1
        Log.info("health: cluster \(key.cluster) endpoint \(key.address) \(from) -> \(to) (\(why))",
                 ["event": "health", "cluster": "\(key.cluster)", "endpoint": "\(key.address)", "from": "\(from)", "to": "\(to)"])
    }

    /// Publishes availability for every cluster where it differs from the running snapshot.
    private func publish() {
        var panicNow: [String: Bool] = [:]
        let published = store.publish { current -> Snapshot? in
            var changed: [Int: Cluster] = [:]
            for (ci, c) in current.clusters.enumerated() where c.health.probe != nil || c.health.consecutiveFailures != nil {
                let available = c.endpoints.map { states[EndpointKey(cluster: c.name, address: $0.address)]?.available ?? true }
                if available != c.available {
                    let next = c.with(available: available)
                    changed[ci] = next
                    panicNow[c.name] = next.eligibility.panic
                }
            }
            return changed.isEmpty ? nil : current.replacing(clusters: changed)
        }
        for (name, panic) in panicNow {
            if panic && !panicking.contains(name) {
                panicking.insert(name)
                panics += 1
                Log.warning("health: cluster \(name) is in panic: fewer than its panic_threshold of endpoints are healthy; balancing across all of them")
            } else if !panic && panicking.contains(name) {
                panicking.remove(name)
                Log.info("health: cluster \(name) left panic")
            }
        }
        if let published {
            seenGeneration = published.generation
            wakeShards()
        }
    }

    private func contains(_ haystack: UnsafeRawBufferPointer, _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty else { return true }
        guard haystack.count >= needle.count else { return false }
        for start in 0...(haystack.count - needle.count) {
            var k = 0
            while k < needle.count && haystack[start + k] == needle[k] { k += 1 }
            if k == needle.count { return true }
        }
        return false
    }
}

