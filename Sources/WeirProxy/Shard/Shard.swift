// A shard: one thread, one ring, and everything that lives on it (listening sockets, connections,
// buffers, balancer state, stats). Nothing here is shared with another thread except the mailbox
// and the stats the control thread reads.
import CNGHTTP2
import CURing
import CWeirSys
import Synchronization
import WeirBalance
import WeirConfig
import WeirCore
import WeirHTTP
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

/// Operations packed into user_data.
enum Op {
    static let accept: UInt8 = 1
    static let recv: UInt8 = 2
    static let send: UInt8 = 3
    static let connect: UInt8 = 4
    static let ignore: UInt8 = 5
    static let tick: UInt8 = 6
    static let wake: UInt8 = 7
    static let pollIn: UInt8 = 8
    static let pollOut: UInt8 = 9
    /// HTTP upstream connections (slot is in Shard.upstreams).
    static let upRecv: UInt8 = 10
    static let upSend: UInt8 = 11
    static let upConnect: UInt8 = 12
    /// HTTP: a retry's backoff ended (slot is a connection).
    static let retry: UInt8 = 13
    /// The access log's write finished.
    static let logWrite: UInt8 = 14
}

/// Commands the control thread leaves for a shard, then wakes it.
enum ShardCommand: Int {
    case none = 0
    /// Stop accepting; exit when the open connections have ended.
    case drain = 1
    /// Cut every open connection and exit.
    case cut = 2
}

struct ShardListener {
    var fd: Int32 = -1
    var address: SocketAddress
    /// Index in the shard's current snapshot, or -1 while closing.
    var listenerIndex: Int
    var generation: UInt32 = 0
    var acceptArmed = false
    var closing = false
}

final class Shard<IO: IOBackend> {
    let index: Int
    let control: ShardControl
    let ring: IO
    let buffers: IO.Buffers
    let limits: Limits
    let connections: UnsafeMutablePointer<Connection>
    /// Free slot stack.
    let freeSlots: UnsafeMutablePointer<Int32>
    var freeCount: Int
    /// Highest slot ever used + 1, bounds the idle scan.
    var highWater = 0
    var active = 0
    /// Per-buffer queue links and lengths, indexed by buffer id.
    let bufferNext: UnsafeMutablePointer<Int32>
    let bufferLength: UnsafeMutablePointer<Int32>
    /// Per flow (slot * 2 + flow): the message header and iovecs of its gather send, which the
    /// kernel reads while the send is in flight.
    let sendMessages: UnsafeMutablePointer<msghdr>
    let sendVectors: UnsafeMutablePointer<iovec>
    /// Buffers one gather send may carry.
    static var maxVectors: Int { 16 }
    /// Flows whose recv stopped on an empty buffer ring (sub: the flow), re-armed when buffers
    /// come back if their slot still has that generation.
    let starvedFlows: SlotRefQueue
    var listeners: [ShardListener] = []
    var snapshot: Snapshot
    /// One balancer per cluster of `snapshot`, this shard's own state over the shared tables.
    var balancers: [any Balancer] = []
    /// Clusters whose endpoints are still in their slow-start window (refreshed each tick).
    var rampingClusters: [Int] = []
    /// Passive outlier detection: consecutive connect failures per cluster and endpoint, this
    /// shard's own count; at the cluster's threshold the health checker is told.
    var failureStreaks: [[Int32]] = []
    /// Stats slots of the current snapshot's listeners and endpoints.
    var listenerSlots: [Int32] = []
    var endpointSlots: [[Int32]] = []
    /// The registry's endpoint counters, cached: they move only when a snapshot brings new names
    /// (in adopt, on this thread), and the per-send byte count should not reach through two objects.
    var endpointCounters: UnsafeMutablePointer<EndpointCounters>
    /// Stats slot -> cluster << 32 | endpoint in the current snapshot, or -1.
    var endpointBySlot: [Int64] = []
    var random: SplitMix64
    /// Source addresses whose bind failed and was logged (once each; the rest are counted).
    var bindWarned = Set<SocketAddress>()
    var now: Int64 = 0
    let queueCap: Int32
    let recvLimit: Bool
    var tickTimespec = __kernel_timespec(tv_sec: 0, tv_nsec: 250_000_000)
    var wakeBuffer: UInt64 = 0
    var draining = false
    var cutting = false

    // HTTP state, sized once.
    /// Where the parser records a head's fields; reused by every message on this shard.
    let headers = HeaderTable(capacity: 1000)
    /// Head buffers (see Limits.headBuffersPerShard) and their free stack.
    let headStorage: UnsafeMutableRawPointer
    let headFree: UnsafeMutablePointer<Int32>
    var headFreeCount: Int
    /// Upstream connections for HTTP and their free stack.
    let upstreams: UnsafeMutablePointer<Upstream>
    let upstreamFree: UnsafeMutablePointer<Int32>
    var upstreamFreeCount: Int
    var upstreamHighWater = 0
    /// Per endpoint stats slot: the newest idle upstream (list through Upstream.next), how many
    /// are idle, and how many are open.
    var idleHead: [Int32] = []
    var idleCount: [Int32] = []
    var openCount: [Int32] = []
    /// Upstreams whose recv stopped on an empty buffer ring.
    let starvedUpstreams: SlotRefQueue
    /// Connections waiting for a head buffer, oldest first (sub: 0 request head, 1 response head;
    /// a connection may wait for both).
    let headWaiters: SlotRefQueue
    /// Per connection slot: the client's address as text, for X-Forwarded-For.
    let clientText: UnsafeMutablePointer<UInt8>
    static var clientTextBytes: Int { 48 }
    /// Per connection: the mTLS peer's X-Forwarded-Client-Cert element, once a request needed it
    /// (allocated, touched only by connections that use it).
    let peerText: UnsafeMutablePointer<UInt8>
    static var peerTextBytes: Int { 1024 }
    /// Per connection slot: TLS state (used by connections on `tls:` listeners).
    let tlsStates: UnsafeMutablePointer<TLSState>
    /// Per upstream slot: TLS state of connections to clusters with `tls:`.
    let upstreamTLS: UnsafeMutablePointer<TLSState>
    /// TLS from TCP sessions to their upstreams, by connection slot.
    let tcpUpstreamTLS: UnsafeMutablePointer<TLSState>
    /// Where plaintext an idle TLS upstream produces lands (it should produce none).
    let discardFlow = UnsafeMutablePointer<Flow>.allocate(capacity: 1)
    /// Scratch for a request id.
    let scratch = UnsafeMutablePointer<UInt8>.allocate(capacity: 64)
    var requestCounter: UInt64 = 0
    /// Access logs by file, which one each listener of the current snapshot uses (-1: none),
    /// per-slot room for a request's method and path, and endpoint addresses as text.
    var logWriters: [AccessLogWriter] = []
    var listenerLog: [Int] = []
    var logScratch: UnsafeMutableRawPointer? = nil
    var endpointText: [[[UInt8]]] = []
    /// HTTP/2: per connection slot, the connection (its session) or the stream a slot carries,
    /// and what its session's user_data points at; the bridge nghttp2's callbacks reach the
    /// shard through; work those callbacks leave for after nghttp2 returns; scratch for the
    /// header fields of a response being submitted.
    let h2Connections: UnsafeMutablePointer<H2Connection>
    let h2Streams: UnsafeMutablePointer<H2Stream>
    let h2Contexts: UnsafeMutablePointer<H2Context>
    let h2Bridge = H2Bridge()
    var h2Events: [H2Event] = []
    var h2Credits: [SlotRef] = []
    var h2RunningEvents = false
    var h2PendingFlushes: [SlotRef] = []
    /// nghttp2's allocator on this shard (CWeirSys/slab.c): blocks it frees are reused.
    let h2Slab: UnsafeMutableRawPointer = weir_slab_new()
    var h2RunningCredits = false
    let h2Nva: UnsafeMutablePointer<nghttp2_nv>
    var h2NvaCapacity: Int { headers.capacity + 4 }
    let h2Scratch: UnsafeMutablePointer<UInt8>

    init(index: Int, control: ShardControl, snapshot: Snapshot) throws {
        self.index = index
        self.control = control
        self.snapshot = snapshot
        self.limits = snapshot.limits
        endpointCounters = control.named.endpoints
        let entries = UInt32(max(256, min(32768, (snapshot.limits.maxConnectionsPerShard * 4).nextPowerOfTwo)))
        ring = try IO(entries: entries)
        // From the backend's clock, so a simulated shard's choices replay from its seed.
        random = SplitMix64(seed: UInt64(bitPattern: ring.clock(coarse: false)) ^ UInt64(index &* 0x9E37_79B9))
        buffers = try ring.makeBuffers(group: 1, count: limits.buffersPerShard, bufferBytes: limits.bufferBytes)
        let n = limits.maxConnectionsPerShard
        connections = .allocate(capacity: n)
        connections.initialize(repeating: Connection(), count: n)
        freeSlots = .allocate(capacity: n)
        for i in 0..<n { freeSlots[i] = Int32(n - 1 - i) }
        freeCount = n
        // Queue links cover the ring's buffers and, after them, the head buffers (which hold
        // decrypted TLS bytes that did not fit back into their receive buffer).
        let queueable = limits.buffersPerShard + limits.headBuffersPerShard
        bufferNext = .allocate(capacity: queueable)
        bufferNext.initialize(repeating: -1, count: queueable)
        bufferLength = .allocate(capacity: queueable)
        bufferLength.initialize(repeating: 0, count: queueable)
        starvedFlows = SlotRefQueue(capacity: 2 * n)
        sendMessages = .allocate(capacity: 2 * n)
        sendMessages.initialize(repeating: msghdr(), count: 2 * n)
        sendVectors = .allocate(capacity: 2 * n * Shard.maxVectors)
        sendVectors.initialize(repeating: iovec(), count: 2 * n * Shard.maxVectors)
        queueCap = Int32(limits.maxQueuedBuffersPerDirection)
        headStorage = .allocate(byteCount: limits.headBuffersPerShard * limits.bufferBytes, alignment: 64)
        headFree = .allocate(capacity: limits.headBuffersPerShard)
        for i in 0..<limits.headBuffersPerShard { headFree[i] = Int32(limits.headBuffersPerShard - 1 - i) }
        headFreeCount = limits.headBuffersPerShard
        upstreams = .allocate(capacity: n)
        upstreams.initialize(repeating: Upstream(), count: n)
        upstreamFree = .allocate(capacity: n)
        for i in 0..<n { upstreamFree[i] = Int32(n - 1 - i) }
        upstreamFreeCount = n
        clientText = .allocate(capacity: n * Shard.clientTextBytes)
        peerText = .allocate(capacity: n * Shard.peerTextBytes)
        tlsStates = .allocate(capacity: n)
        tlsStates.initialize(repeating: TLSState(), count: n)
        upstreamTLS = .allocate(capacity: n)
        upstreamTLS.initialize(repeating: TLSState(), count: n)
        tcpUpstreamTLS = .allocate(capacity: n)
        tcpUpstreamTLS.initialize(repeating: TLSState(), count: n)
        discardFlow.initialize(to: Flow())
        starvedUpstreams = SlotRefQueue(capacity: n)
        headWaiters = SlotRefQueue(capacity: 2 * n)
        recvLimit = control.recvLimit
        h2Connections = .allocate(capacity: n)
        h2Connections.initialize(repeating: H2Connection(), count: n)
        h2Streams = .allocate(capacity: n)
        h2Streams.initialize(repeating: H2Stream(), count: n)
        h2Contexts = .allocate(capacity: n)
        h2Nva = .allocate(capacity: headers.capacity + 4)
        h2Scratch = .allocate(capacity: limits.bufferBytes)
        h2Events.reserveCapacity(1024)
        h2Credits.reserveCapacity(1024)
        h2PendingFlushes.reserveCapacity(256)
        bindH2Callbacks()
        Log.debug("shard \(index): ring \(entries) entries, \(ring.setupDescription), \(limits.buffersPerShard) x \(limits.bufferBytes) B buffers")
    }

    deinit {
        connections.deinitialize(count: limits.maxConnectionsPerShard)
        connections.deallocate()
        freeSlots.deallocate()
        bufferNext.deallocate()
        bufferLength.deallocate()
        sendMessages.deallocate()
        sendVectors.deallocate()
        headStorage.deallocate()
        headFree.deallocate()
        upstreams.deinitialize(count: limits.maxConnectionsPerShard)
        upstreams.deallocate()
        upstreamFree.deallocate()
        clientText.deallocate()
        peerText.deallocate()
        tlsStates.deinitialize(count: limits.maxConnectionsPerShard)
        tlsStates.deallocate()
        upstreamTLS.deinitialize(count: limits.maxConnectionsPerShard)
        upstreamTLS.deallocate()
        tcpUpstreamTLS.deinitialize(count: limits.maxConnectionsPerShard)
        tcpUpstreamTLS.deallocate()
        discardFlow.deallocate()
        scratch.deallocate()
        logScratch?.deallocate()
        h2Connections.deallocate()
        h2Streams.deallocate()
        h2Contexts.deallocate()
        h2Nva.deallocate()
        h2Scratch.deallocate()
    }

    /// Points the bridge's closures at this shard (nghttp2 calls them with the connection's slot).
    func bindH2Callbacks() {
        h2Bridge.send = { [unowned self] in self.h2Take($0, $1, $2) }
        h2Bridge.beginHeaders = { [unowned self] in self.h2BeginHeaders($0, $1, $2) }
        h2Bridge.header = { [unowned self] in self.h2Header($0, $1, $2, $3, $4) }
        h2Bridge.frameRecv = { [unowned self] in self.h2FrameRecv($0, $1) }
        h2Bridge.dataChunk = { [unowned self] in self.h2DataChunk($0, $1, $2) }
        h2Bridge.streamClose = { [unowned self] in self.h2StreamCloseCallback($0, $1, $2) }
        h2Bridge.frameSend = { [unowned self] in self.h2FrameSent($0, $1) }
        h2Bridge.dataRead = { [unowned self] in self.h2DataRead($0, $1, $2, $3, $4) }
    }

    // MARK: The loop

    func run() {
        begin()
        while turn(waitNanoseconds: 1_000_000_000) {}
        // Closes queued in the last turn go to the kernel before the ring does.
        ring.submit()
        publishStats()
    }

    /// Takes the snapshot and arms the wake-up read and the tick.
    func begin() {
        now = ring.clock(coarse: true)
        adopt(snapshot)
        ring.read(fd: control.waker.fd, into: &wakeBuffer, count: 8, userData: UserData(op: Op.wake, slot: 0, generation: 0))
        ring.timeout(&tickTimespec, userData: UserData(op: Op.tick, slot: 0, generation: 0))
    }

    /// One loop turn: commands, a new snapshot, one submit-and-wait, every completion, then the
    /// receives starved for buffers and the head-buffer waiters. False once drained or cut.
    func turn(waitNanoseconds: Int64) -> Bool {
        checkMailbox()
        if control.store.generation != snapshot.generation { adopt(control.store.snapshot) }
        if (draining || cutting) && active == 0 && listeners.isEmpty {
            closeIdleUpstreams()
            for w in logWriters { w.flush(ring) }
            if upstreamsOpen == 0 && logWriters.allSatisfy(\.idle) { return false }
        }
        _ = ring.submitAndWait(timeoutNanoseconds: waitNanoseconds)
        now = ring.clock(coarse: true)
        _ = ring.forEachCompletion { userData, result, flags in
            dispatch(UserData(raw: userData), result, flags)
        }
        if buffers.commit() > 0 && (!starvedFlows.isEmpty || !starvedUpstreams.isEmpty) { rearmStarved() }
        for w in logWriters { w.flush(ring) }
        if !headWaiters.isEmpty && headFreeCount > 0 { serveHeadWaiters() }
        if !h2PendingFlushes.isEmpty { h2RunPendingFlushes() }
        publishStats()
        return true
    }

    @inline(__always)
    func dispatch(_ ud: UserData, _ res: Int32, _ flags: UInt32) {
        switch ud.op {
        case Op.recv: onRecv(ud, res, flags)
        case Op.send: onSend(ud, res)
        case Op.accept: onAccept(ud, res, flags)
        case Op.connect: onConnect(ud, res)
        case Op.pollIn, Op.pollOut: onPoll(ud, res)
        case Op.upRecv: onUpstreamRecv(ud, res, flags)
        case Op.upSend: onUpstreamSend(ud, res)
        case Op.upConnect: onUpstreamConnect(ud, res)
        case Op.retry: onRetryTimer(ud)
        case Op.logWrite: if ud.slot < logWriters.count { logWriters[ud.slot].written(res, ring: ring) }
        case Op.tick: onTick()
        case Op.wake:
            ring.read(fd: control.waker.fd, into: &wakeBuffer, count: 8, userData: UserData(op: Op.wake, slot: 0, generation: 0))
        default: break
        }
    }

    func checkMailbox() {
        switch ShardCommand(rawValue: control.command.load(ordering: .acquiring)) ?? .none {
        case .none: break
        case .drain:
            if !draining { draining = true; closeAllListeners() }
        case .cut:
            if !cutting {
                cutting = true
                closeAllListeners()
                for slot in 0..<highWater where connections[slot].state != .free && connections[slot].state != .closing {
                    control.stats.pointee.cutOnDrain += 1
                    abort(connections + slot)
                }
            }
        }
    }

    func publishStats() {
        control.stats.pointee.active = active
    }

    func onTick() {
        ring.timeout(&tickTimespec, userData: UserData(op: Op.tick, slot: 0, generation: 0))
        // A listener whose accept stopped on EMFILE/ENFILE gets another try once per tick.
        for i in listeners.indices where listeners[i].fd >= 0 && !listeners[i].acceptArmed && !listeners[i].closing {
            armAccept(i)
        }
        if !rampingClusters.isEmpty {
            let clock = ring.clock(coarse: false)
            rampingClusters.removeAll { !balancers[$0].refresh(nowNanoseconds: clock) }
        }
        for slot in 0..<highWater {
            let c = connections + slot
            if c.pointee.kind == .http {
                if c.pointee.state == .open { httpTick(c) }
                // A finished stream whose end waits for window the client never gives.
                else if c.pointee.state == .closing && c.pointee.carrier == .h2Stream && now - c.pointee.lastActivity > c.pointee.idleTimeout {
                    h2StreamAborted(c)
                    c.pointee.lastActivity = now
                }
                continue
            }
            if c.pointee.kind == .h2 { if c.pointee.state == .open { h2Tick(c) }; continue }
            if c.pointee.state == .peeking {
                if now > c.pointee.helloDeadline { control.stats.pointee.sniTimeouts += 1; abort(c) }
                continue
            }
            if c.pointee.state == .inspecting {
                if c.pointee.helloDeadline > 0 && now > c.pointee.helloDeadline { inspectTimedOut(c) }
                else if now - c.pointee.lastActivity > c.pointee.idleTimeout { control.stats.pointee.idleTimeouts += 1; abort(c) }
                continue
            }
            // TLS to the upstream: the handshake must end within the cluster's connect timeout.
            if c.pointee.state == .open && c.pointee.upstreamIsTLS && c.pointee.helloDeadline > 0 && now > c.pointee.helloDeadline {
                control.stats.pointee.connectTimeouts += 1
                upTLSFailed(c, "the TLS handshake did not finish within connect_timeout", timedOut: true)
                continue
            }
            guard c.pointee.state == .open, now - c.pointee.lastActivity > c.pointee.idleTimeout else { continue }
            control.stats.pointee.idleTimeouts += 1
            abort(c)
        }
        upstreamTick()
        for w in logWriters { w.checkRotation() }
    }

    // MARK: Snapshots and listeners

    /// Takes a new snapshot: keeps sockets of listeners whose address stayed, opens the new ones
    /// (sockets the control thread bound for this shard), closes the ones that went away.
    func adopt(_ next: Snapshot) {
        var wanted: [SocketAddress: Int] = [:]
        if !draining && !cutting {
            for (i, l) in next.listeners.enumerated() where l.binds { wanted[l.address] = i }
        }
        for i in listeners.indices where !listeners[i].closing {
            if let li = wanted.removeValue(forKey: listeners[i].address) {
                listeners[i].listenerIndex = li
            } else {
                closeListener(i)
            }
        }
        for (address, li) in wanted.sorted(by: { $0.value < $1.value }) {
            guard let fd = control.sockets.take(address, shard: index) else {
                Log.error("shard \(index): no socket was bound for listener \(next.listeners[li].name) at \(address)")
                continue
            }
            var l = ShardListener(fd: fd, address: address, listenerIndex: li)
            let slot = listeners.firstIndex(where: { $0.fd < 0 }) ?? listeners.count
            if slot < listeners.count { l.generation = listeners[slot].generation &+ 1; listeners[slot] = l } else { listeners.append(l) }
            armAccept(slot)
        }
        snapshot = next
        let clock = ring.clock(coarse: false)
        balancers = next.clusters.map { $0.makeBalancer(shard: index, of: control.shardCount, now: clock) }
        rampingClusters = next.clusters.indices.filter { next.clusters[$0].slowStart != nil }
        (listenerSlots, endpointSlots) = control.named.slots(for: next)
        forgetUnusedNames()
        endpointCounters = control.named.endpoints
        endpointBySlot = Array(repeating: -1, count: (endpointSlots.flatMap { $0 }.max().map { Int($0) } ?? -1) + 1)
        if idleHead.count < endpointBySlot.count {
            let more = endpointBySlot.count - idleHead.count
            idleHead += Array(repeating: -1, count: more)
            idleCount += Array(repeating: 0, count: more)
            openCount += Array(repeating: 0, count: more)
        }
        adoptAccessLog(next)
        endpointText = logWriters.isEmpty ? [] : next.clusters.map { $0.endpoints.map { Array($0.address.description.utf8) } }
        for (ci, slots) in endpointSlots.enumerated() {
            for (ep, slot) in slots.enumerated() { endpointBySlot[Int(slot)] = Int64(ci) << 32 | Int64(ep) }
        }
        // The new balancers start empty: count the connections that are open now, so least
        // request keeps seeing the load across reloads and health changes.
        for slot in 0..<highWater {
            let c = connections + slot
            guard c.pointee.countedActive else { continue }
            c.pointee.countedActive = false
            startActive(c)
        }
        failureStreaks = next.clusters.map { [Int32](repeating: 0, count: $0.health.consecutiveFailures == nil ? 0 : $0.endpoints.count) }
        control.stats.pointee.snapshotsAdopted += 1
        control.adoptedGeneration.store(next.generation, ordering: .releasing)
    }

    /// Stats names in use: the adopted snapshot's, and the slots live connections and pooled
    /// upstream connections still count against (a connection keeps its slots until it ends).
    /// The rest are forgotten, so names that come and go (EDS endpoints) do not pile up.
    func forgetUnusedNames() {
        var listenersInUse = Set(listenerSlots)
        var endpointsInUse = Set(endpointSlots.joined())
        for slot in 0..<highWater where connections[slot].state != .free {
            listenersInUse.insert(connections[slot].listenerSlot)
            endpointsInUse.insert(connections[slot].endpointSlot)
        }
        for i in 0..<upstreamHighWater where upstreams[i].state != .free { endpointsInUse.insert(upstreams[i].pool) }
        control.named.forget(keepingListeners: listenersInUse, endpoints: endpointsInUse)
    }

    func armAccept(_ slot: Int) {
        listeners[slot].acceptArmed = true
        ring.acceptMultishot(fd: listeners[slot].fd,
                             userData: UserData(op: Op.accept, slot: slot, generation: listeners[slot].generation))
    }

    func closeListener(_ slot: Int) {
        guard listeners[slot].fd >= 0, !listeners[slot].closing else { return }
        listeners[slot].closing = true
        listeners[slot].listenerIndex = -1
        if listeners[slot].acceptArmed {
            // The pending accept holds the socket open; it ends with -ECANCELED, then we close.
            ring.cancelAll(fd: listeners[slot].fd, userData: UserData(op: Op.ignore, slot: 0, generation: 0))
        } else {
            finishListenerClose(slot)
        }
    }

    func finishListenerClose(_ slot: Int) {
        ring.close(fd: listeners[slot].fd)
        listeners[slot].fd = -1
        listeners[slot].closing = false
        while let last = listeners.last, last.fd < 0 { listeners.removeLast() }
    }

    func closeAllListeners() {
        for i in listeners.indices { closeListener(i) }
    }

    func onAccept(_ ud: UserData, _ res: Int32, _ flags: UInt32) {
        let slot = ud.slot
        guard slot < listeners.count, listeners[slot].generation == ud.generation else {
            if res >= 0 { ring.close(fd: res) }
            return
        }
        if !hasMore(flags: flags) { listeners[slot].acceptArmed = false }
        if res >= 0 {
            if listeners[slot].closing { ring.close(fd: res) }
            else if listeners[slot].listenerIndex >= 0 { acceptConnection(fd: res, listener: listeners[slot].listenerIndex) }
            else { ring.close(fd: res) }
        } else if res != -ECANCELED {
            // EMFILE, ENFILE, ENOMEM: the kernel stops the multishot; re-arming below tries again
            // on the next completion rather than spinning.
            Log.warning("shard \(index): accept on \(listeners[slot].address) failed: \(String(cString: strerror(-res)))")
        }
        if !listeners[slot].acceptArmed {
            if listeners[slot].closing { finishListenerClose(slot) }
            else if res != -EMFILE && res != -ENFILE { armAccept(slot) }
        }
    }
}

extension Int {
    var nextPowerOfTwo: Int { self <= 1 ? 1 : 1 << (Int.bitWidth - (self - 1).leadingZeroBitCount) }
}
