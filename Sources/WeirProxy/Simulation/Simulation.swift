// The simulation harness: one real shard (its real session code, specialized for SimIO) against
// a simulated network whose clients and upstreams act from a seed: bytes split anyhow, short
// sends, resets and FINs at any time, pipelined and half-closed requests, upstreams that close
// pooled connections or reset before answering, refused and hanging connects, a buffer pool small
// enough to run dry. After every step the invariants are checked; at the end the shard drains and
// must have given back every buffer, slot and socket. A failing seed replays exactly.
import WeirConfig
import WeirCore
import WeirHTTP
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

public struct SimulationReport: Sendable, CustomStringConvertible {
    public var seed: UInt64
    public var dataPath = Limits.DataPath.copy
    public var steps = 0
    public var httpClients = 0
    public var responses = 0
    public var errorResponses = 0
    public var cutConnections = 0
    public var tcpClients = 0
    public var tcpBytesEchoed = 0
    public var upstreamResets = 0
    public var upstreamCloses = 0
    /// Receives that found the buffer pool empty (each one starved a flow until buffers came back).
    public var poolDry = 0
    /// The first broken invariant, or nil.
    public var failure: String?

    public var description: String {
        "seed \(seed) (\(dataPath.rawValue)): \(steps) steps, \(httpClients) HTTP clients, \(responses) responses (\(errorResponses) made by Weir), "
            + "\(cutConnections) connections cut, \(tcpClients) TCP clients, \(tcpBytesEchoed) bytes echoed, "
            + "\(upstreamResets) upstream resets, \(upstreamCloses) pooled connections closed by upstreams, pool dry \(poolDry) times: "
            + (failure.map { "FAILED: \($0)" } ?? "ok")
    }
}

public enum Simulation {
    /// The configuration a simulated shard runs, with TCP passthrough on the buffer-ring copy or
    /// on splice. Small limits, so pools run dry and queues fill.
    public static func configYAML(dataPath: Limits.DataPath) -> String { """
    shards: 1
    limits: { max_connections_per_shard: 64, buffer_bytes: 8KiB, buffers_per_shard: 32, head_buffers_per_shard: 4, max_queued_buffers: 4, data_path: \(dataPath.rawValue) }
    listeners:
      - { name: web, address: "10.0.0.1:80", protocol: http, cluster: app, http: { max_header_bytes: 4KiB, max_request_line_bytes: 2KiB } }
      - { name: raw, address: "10.0.0.1:7", protocol: tcp, cluster: echo }
      - { name: sni, address: "10.0.0.1:443", protocol: tcp, client_hello_timeout: 2s, routes: [{ match: { sni: api.example.com }, cluster: echo }] }
      - name: mux
        address: "10.0.0.1:8443"
        inspect_timeout: 2s
        chains:
          - { name: web, match: { transport_protocol: raw_buffer, application_protocols: [http/1.1, http/1.0] }, protocol: http, cluster: app,
              http: { max_header_bytes: 4KiB, max_request_line_bytes: 2KiB } }
          - { name: api, match: { server_names: [api.example.com] }, cluster: echo }
        default_chain: { cluster: echo }
      - { name: virtual, address: "10.0.0.1:15001", use_original_destination: true, cluster: passthrough }
    clusters:
      - name: passthrough
        original_destination: true
        connect_timeout: 1s
      - name: app
        connect_timeout: 1s
        connect_attempts: 2
        endpoints: [{ address: "10.0.1.1:80" }, { address: "10.0.1.2:80" }]
      - name: echo
        connect_timeout: 1s
        endpoints: [{ address: "10.0.2.1:7" }]
    """
    }

    nonisolated(unsafe) static var compiled: [Limits.DataPath: Snapshot] = [:]

    /// Quiet logs for a run of seeds (a trap or a failed invariant is what matters).
    public static func quietLogs() {
        Log.bootstrap()
        Log.level = .critical
    }

    /// Odd seeds splice TCP passthrough, even ones copy it through the buffer ring.
    public static func dataPath(seed: UInt64) -> Limits.DataPath { seed % 2 == 1 ? .splice : .copy }

    static let web = SocketAddress(ipv4: 10, 0, 0, 1, port: 80)
    static let raw = SocketAddress(ipv4: 10, 0, 0, 1, port: 7)
    static let sni = SocketAddress(ipv4: 10, 0, 0, 1, port: 443)
    static let mux = SocketAddress(ipv4: 10, 0, 0, 1, port: 8443)
    static let virtual = SocketAddress(ipv4: 10, 0, 0, 1, port: 15001)
    /// A real ClientHello naming api.Example.com.
    static let hello = ClientHello.sample
    static let apps = [SocketAddress(ipv4: 10, 0, 1, 1, port: 80), SocketAddress(ipv4: 10, 0, 1, 2, port: 80)]
    static let echo = SocketAddress(ipv4: 10, 0, 2, 1, port: 7)

    /// Runs one seed for `steps` steps (then the drain), on the caller's thread.
    /// With `tape`, the world's and the kernel's choices also come from its bytes, and some
    /// hostile clients send its bytes as they are (the connection fuzzer's way in).
    public static func run(seed: UInt64, steps: Int, tape: [UInt8]? = nil) -> SimulationReport {
        var report = SimulationReport(seed: seed)
        report.dataPath = dataPath(seed: seed)
        let snapshot: Snapshot
        if let s = compiled[report.dataPath] {
            snapshot = s
        } else {
            do { snapshot = try Compiler.compile(YAMLLoader.parse(configYAML(dataPath: report.dataPath), file: "<simulation>")) } catch {
                report.failure = "configuration: \(error)"
                return report
            }
            compiled[report.dataPath] = snapshot
        }
        let shared = tape.map(SimTape.init)
        let kernel = SimKernel(seed: seed, tape: shared)
        SimKernel.current = kernel
        defer { SimKernel.current = nil }
        let world = World(kernel: kernel, seed: seed, tape: shared)
        let sockets = ListenerSockets()
        sockets.put(web, fds: [kernel.listen(web, world: false)])
        sockets.put(raw, fds: [kernel.listen(raw, world: false)])
        sockets.put(sni, fds: [kernel.listen(sni, world: false)])
        sockets.put(mux, fds: [kernel.listen(mux, world: false)])
        sockets.put(virtual, fds: [kernel.listen(virtual, world: false)])
        for a in apps { world.upstreams.append(HTTPUpstreamActor(listener: kernel.listen(a, world: true))) }
        world.echoListener = kernel.listen(echo, world: true)
        let shard: Shard<SimIO>
        let control: ShardControl
        do {
            control = try ShardControl(store: SnapshotStore(snapshot), sockets: sockets, shardCount: 1, reports: try OutlierReports())
            shard = try Shard<SimIO>(index: 0, control: control, snapshot: snapshot)
        } catch {
            report.failure = "setup: \(error)"
            return report
        }
        shard.begin()
        for step in 0..<steps {
            report.steps = step + 1
            // Now and then the world does several steps' worth before the shard's next turn (a
            // busy shard), so one batch of completions holds frees, accepts and re-arms together.
            for _ in 0..<(world.random.chance(0.2) ? 2 + world.random.below(4) : 1) { world.act(ending: false) }
            kernel.advance(by: Int64(world.random.below(2_000_000)))
            _ = shard.turn(waitNanoseconds: 1_000_000)
            if let f = world.failure {
                let st = control.stats.pointee
                report.failure = "step \(step): \(f) [shard: aborted \(st.aborted), no slot \(st.rejectedNoSlot), head buffers exhausted \(st.headBuffersExhausted), idle timeouts \(st.idleTimeouts)]"
                break
            }
        }
        if getenv("WEIR_SIM_DEBUG") != nil {
            print("after steps: clients \(world.clients.count) (outstanding \(world.clients.map(\.outstanding.count))), tcp \(world.tcpClients.count), shard active \(shard.active), buffers out \(shard.buffers.outstanding), head free \(shard.headFreeCount), upstreams \(shard.upstreamsOpen), starved \(shard.starvedFlows.count)/\(shard.starvedUpstreams.count), waiters \(shard.headWaiters.count), t=\(kernel.now)")
            for slot in 0..<shard.highWater where shard.connections[slot].state != .free {
                let c = shard.connections[slot]
                print("  slot \(slot) \(c.state) \(c.kind) phase \(c.ex.phase) req \(c.ex.request) resp \(c.ex.response) f0 recv \(c.flows.0.recv) q \(c.flows.0.queued) ended \(c.flows.0.sourceEnded) f1 recv \(c.flows.1.recv) q \(c.flows.1.queued) sending \(c.flows.1.sending) up \(c.ex.upstream) inflight \(c.inflight)")
            }
        }
        // The clients finish: every one closes; then the shard drains.
        if report.failure == nil {
            var quiet = 0
            while quiet < 20_000 && !world.idle {
                world.act(ending: true)
                _ = shard.turn(waitNanoseconds: 5_000_000)
                quiet += 1
                if let f = world.failure { report.failure = "ending: \(f)"; break }
            }
            if report.failure == nil && !world.idle { report.failure = "clients still open after the end: \(world.openClients)" }
        }
        if report.failure == nil {
            control.command.store(ShardCommand.drain.rawValue, ordering: .releasing)
            var turns = 0
            while shard.turn(waitNanoseconds: 50_000_000) {
                world.act(ending: true)
                turns += 1
                if turns > 100_000 { report.failure = "the drain never ended (active \(shard.active), upstreams \(shard.upstreamsOpen))"; break }
            }
        }
        if report.failure == nil {
            var leaks: [String] = []
            if shard.active != 0 { leaks.append("\(shard.active) connections") }
            if shard.buffers.outstanding != 0 { leaks.append("\(shard.buffers.outstanding) receive buffers") }
            if shard.headFreeCount != shard.limits.headBuffersPerShard { leaks.append("\(shard.limits.headBuffersPerShard - shard.headFreeCount) head buffers") }
            if shard.upstreamsOpen != 0 { leaks.append("\(shard.upstreamsOpen) upstream slots") }
            if kernel.shardSockets != 0 { leaks.append("\(kernel.shardSockets) sockets") }
            if !leaks.isEmpty { report.failure = "after the drain, still held: " + leaks.joined(separator: ", ") }
        }
        report.httpClients = world.httpStarted
        report.tcpClients = world.tcpStarted
        report.responses = world.responses
        report.errorResponses = world.errorResponses
        report.cutConnections = world.cut
        report.tcpBytesEchoed = world.echoed
        report.upstreamResets = world.upstreamResets
        report.upstreamCloses = world.upstreamCloses
        report.poolDry = control.stats.pointee.bufferRingDry
        if report.failure == nil, let f = world.failure { report.failure = f }
        return report
    }
}

/// The simulated clients and upstreams.
final class World {
    let kernel: SimKernel
    var random: SimRandom
    var failure: String?
    var clients: [HTTPClientActor] = []
    var tcpClients: [TCPClientActor] = []
    var hostile: [HostileClientActor] = []
    /// Every path a hostile client's bytes hold as a request a strict server would read.
    var hostileRequested: Set<String> = []
    var upstreams: [HTTPUpstreamActor] = []
    var echoListener: Int32 = -1
    var echoes: [(fd: Int32, closed: Bool)] = []
    var httpStarted = 0, tcpStarted = 0, responses = 0, errorResponses = 0, cut = 0, echoed = 0
    var upstreamResets = 0, upstreamCloses = 0

    init(kernel: SimKernel, seed: UInt64, tape: SimTape? = nil) {
        self.kernel = kernel
        random = SimRandom(seed: seed ^ 0x5EED, tape: tape)
    }

    var idle: Bool { clients.isEmpty && tcpClients.isEmpty && hostile.isEmpty }
    var openClients: Int { clients.count + tcpClients.count + hostile.count }

    func fail(_ why: String) { if failure == nil { failure = why } }

    func act(ending: Bool) {
        if !ending {
            if clients.count < 14 && random.chance(0.1) {
                httpStarted += 1
                if let fd = kernel.connect(to: Simulation.web, from: SocketAddress(ipv4: 10, 1, 0, UInt8(httpStarted % 250), port: UInt16(1000 + httpStarted % 60000))) {
                    clients.append(HTTPClientActor(id: httpStarted, fd: fd, plan: 1 + random.below(8), pipeline: 1 + random.below(3), patient: random.chance(0.8)))
                }
            }
            if hostile.count < 3 && random.chance(0.03) {
                httpStarted += 1
                if let fd = kernel.connect(to: Simulation.web, from: SocketAddress(ipv4: 10, 4, 0, 1, port: UInt16(4000 + httpStarted % 60000))) {
                    let c = HostileClientActor(id: httpStarted, fd: fd, random: &random)
                    hostile.append(c)
                    hostileRequested.formUnion(c.requested)
                }
            }
            if tcpClients.count < 8 && random.chance(0.05) {
                // Through the listener that routes by server name: a real ClientHello and bytes
                // after it (echoed), or what port scanners and broken clients send: nothing, half
                // a hello, bytes that are not TLS (the connection must end, echoing nothing).
                tcpStarted += 1
                if let fd = kernel.connect(to: Simulation.sni, from: SocketAddress(ipv4: 10, 3, 0, 1, port: UInt16(3000 + tcpStarted % 60000))) {
                    switch random.below(4) {
                    case 0:
                        var bytes = Simulation.hello
                        for _ in 0..<random.below(3000) { bytes.append(UInt8(truncatingIfNeeded: random.next())) }
                        tcpClients.append(TCPClientActor(fd: fd, toSend: bytes))
                    case 1:
                        kernel.closeWorld(fd)
                    case 2:
                        tcpClients.append(TCPClientActor(fd: fd, toSend: Array(Simulation.hello.prefix(1 + random.below(Simulation.hello.count - 1))), refused: true))
                    default:
                        tcpClients.append(TCPClientActor(fd: fd, toSend: Array("GET / HTTP/1.1\r\n\r\n".utf8), refused: true))
                    }
                }
            }
            if clients.count < 14 && random.chance(0.03) {
                // HTTP through the listener whose chains sniff it.
                httpStarted += 1
                if let fd = kernel.connect(to: Simulation.mux, from: SocketAddress(ipv4: 10, 5, 0, UInt8(httpStarted % 250), port: UInt16(1000 + httpStarted % 60000))) {
                    clients.append(HTTPClientActor(id: httpStarted, fd: fd, plan: 1 + random.below(8), pipeline: 1 + random.below(3), patient: random.chance(0.8)))
                }
            }
            if hostile.count < 3 && random.chance(0.01) {
                httpStarted += 1
                if let fd = kernel.connect(to: Simulation.mux, from: SocketAddress(ipv4: 10, 5, 1, 1, port: UInt16(4000 + httpStarted % 60000))) {
                    let c = HostileClientActor(id: httpStarted, fd: fd, random: &random)
                    hostile.append(c)
                    hostileRequested.formUnion(c.requested)
                }
            }
            if tcpClients.count < 8 && random.chance(0.04) {
                // The chains' other ways: the TLS chain by server name (echo), raw bytes to the
                // default chain, nothing at all, half a hello; and connections handed over by
                // original destination (to the echo, or to this listener), or straight to the
                // virtual listener (a loop: closed, nothing echoed).
                tcpStarted += 1
                let source = SocketAddress(ipv4: 10, 6, 0, 1, port: UInt16(5000 + tcpStarted % 60000))
                let choice = random.below(7)
                let target = choice >= 4 ? Simulation.virtual : Simulation.mux
                let original: SocketAddress? = choice == 4 ? Simulation.echo : choice == 5 ? Simulation.mux : nil
                if let fd = kernel.connect(to: target, from: source, originalDestination: original) {
                    var noise = [UInt8](repeating: 0, count: 1 + random.below(4000))
                    for i in noise.indices { noise[i] = UInt8(truncatingIfNeeded: random.next()) }
                    noise[0] = 0
                    switch choice {
                    case 0: tcpClients.append(TCPClientActor(fd: fd, toSend: Simulation.hello + noise))
                    case 1: tcpClients.append(TCPClientActor(fd: fd, toSend: noise))
                    case 2: kernel.closeWorld(fd)
                    case 3: tcpClients.append(TCPClientActor(fd: fd, toSend: Array(Simulation.hello.prefix(1 + random.below(Simulation.hello.count - 1)))))
                    case 4, 5: tcpClients.append(TCPClientActor(fd: fd, toSend: noise))
                    default: tcpClients.append(TCPClientActor(fd: fd, toSend: noise, refused: true))
                    }
                }
            }
            if tcpClients.count < 8 && random.chance(0.05) {
                tcpStarted += 1
                if let fd = kernel.connect(to: Simulation.raw, from: SocketAddress(ipv4: 10, 2, 0, 1, port: UInt16(2000 + tcpStarted % 60000))) {
                    var bytes = [UInt8](repeating: 0, count: 1 + random.below(6000))
                    for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: random.next()) }
                    tcpClients.append(TCPClientActor(fd: fd, toSend: bytes))
                }
            }
        }
        for c in clients where random.chance(0.6) { c.act(self, ending: ending) }
        clients.removeAll { $0.done }
        for c in tcpClients where random.chance(0.6) { c.act(self, ending: ending) }
        tcpClients.removeAll { $0.done }
        for c in hostile where random.chance(0.6) { c.act(self, ending: ending) }
        hostile.removeAll { $0.done }
        for u in upstreams where random.chance(0.7) { u.act(self) }
        actEcho()
    }

    /// The TCP upstream: echoes what it reads, in pieces, and half-closes after the client's FIN;
    /// now and then it resets a connection mid-stream.
    func actEcho() {
        while let fd = kernel.accept(echoListener) { echoes.append((fd, false)) }
        for i in echoes.indices where !echoes[i].closed && random.chance(0.7) {
            if random.chance(0.003) { kernel.reset(echoes[i].fd); echoes[i].closed = true; upstreamResets += 1; continue }
            let (bytes, ended, reset) = kernel.read(echoes[i].fd, max: 1 + random.below(3000))
            if reset { kernel.closeWorld(echoes[i].fd); echoes[i].closed = true; continue }
            if !bytes.isEmpty { kernel.write(echoes[i].fd, bytes) }
            if ended { kernel.shutdownWrite(echoes[i].fd); kernel.closeWorld(echoes[i].fd); echoes[i].closed = true }
        }
        echoes.removeAll { $0.closed }
    }
}

/// FNV-1a of a body, as text: what the simulated upstream answers for a request with one.
func bodyHash(_ bytes: [UInt8]) -> String {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return String(h, radix: 16)
}

/// Scans HTTP/1.1 messages out of a byte stream: a head up to CRLFCRLF, a Content-Length body.
struct MessageReader {
    var bytes: [UInt8] = []
    /// Requests: empty lines (CRLF) before a request line are skipped (RFC 9112 section 2.2).
    var skipsEmptyLines = false

    /// The next whole message: its first line, its headers (lowercased names), its body.
    mutating func next() -> (line: String, headers: [(String, String)], body: [UInt8])?? {
        while skipsEmptyLines && bytes.count >= 2 && bytes[0] == 13 && bytes[1] == 10 { bytes.removeFirst(2) }
        guard let end = headEnd() else { return .some(nil) }
        let head = String(decoding: bytes[0..<end], as: UTF8.self)
        var lines = head.split(separator: "\r\n" as Character, omittingEmptySubsequences: false).map(String.init)
        let first = lines.removeFirst()
        var headers: [(String, String)] = []
        // A strict recipient: no bare CR or LF, no control bytes, no space before a colon.
        guard !first.isEmpty, first.utf8.allSatisfy({ $0 >= 0x20 && $0 != 0x7F }) else { return nil }
        for l in lines where !l.isEmpty {
            guard l.utf8.allSatisfy({ ($0 >= 0x20 && $0 != 0x7F) || $0 == 9 }) else { return nil }
            guard let colon = l.firstIndex(of: ":"), colon != l.startIndex, !l[..<colon].contains(where: { $0 == " " || $0 == "\t" }) else { return nil }
            headers.append((l[..<colon].lowercased(), trimmingSpaces(l[l.index(after: colon)...])))
        }
        // Framing as a strict recipient reads it: one Content-Length of digits, or
        // Transfer-Encoding exactly chunked, never both.
        let lengths = headers.filter { $0.0 == "content-length" }
        let codings = headers.filter { $0.0 == "transfer-encoding" }
        if !codings.isEmpty {
            guard lengths.isEmpty, codings.count == 1, codings[0].1 == "chunked" else { return nil }
            switch chunkedBody(from: end + 4) {
            case .invalid: return nil
            case .partial: return .some(nil)
            case .whole(let body, let next):
                bytes.removeFirst(next)
                return .some((first, headers, body))
            }
        }
        guard lengths.count <= 1 else { return nil }
        let length: Int
        if let l = lengths.first {
            guard !l.1.isEmpty, l.1.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), l.1.count < 12, let n = Int(l.1) else { return nil }
            length = n
        } else {
            length = 0
        }
        guard bytes.count >= end + 4 + length else { return .some(nil) }
        let body = Array(bytes[(end + 4)..<(end + 4 + length)])
        bytes.removeFirst(end + 4 + length)
        return .some((first, headers, body))
    }

    enum Chunks { case whole([UInt8], next: Int), partial, invalid }

    /// A chunked body starting at `start`, read by RFC 9112 section 7.1 (hex sizes, extensions
    /// after ';', trailers), strictly: anything else is invalid.
    func chunkedBody(from start: Int) -> Chunks {
        var i = start
        var body: [UInt8] = []
        func lineEnd(_ from: Int) -> Int? {
            guard from < bytes.count else { return nil }
            for j in from..<(bytes.count - 1) where bytes[j] == 13 && bytes[j + 1] == 10 { return j }
            return nil
        }
        func isHex(_ b: UInt8) -> Bool { (48...57).contains(b) || (97...102).contains(b) || (65...70).contains(b) }
        while true {
            guard let e = lineEnd(i) else { return bytes.count - i > 4096 ? .invalid : .partial }
            let line = bytes[i..<e]
            let digits = line.prefix { $0 != UInt8(ascii: ";") }
            guard !digits.isEmpty, digits.count <= 8, digits.allSatisfy(isHex),
                  line.allSatisfy({ $0 >= 0x20 && $0 != 0x7F }) else { return .invalid }
            let size = Int(String(decoding: digits, as: UTF8.self), radix: 16)!
            i = e + 2
            if size == 0 {
                while true {
                    guard let t = lineEnd(i) else { return .partial }
                    if t == i { return .whole(body, next: t + 2) }
                    guard bytes[i..<t].contains(UInt8(ascii: ":")) else { return .invalid }
                    i = t + 2
                }
            }
            guard bytes.count >= i + size + 2 else { return .partial }
            guard bytes[i + size] == 13, bytes[i + size + 1] == 10 else { return .invalid }
            body += bytes[i..<(i + size)]
            i += size + 2
        }
    }

    func headEnd() -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 { return i }
        return nil
    }
}

func trimmingSpaces(_ s: Substring) -> String {
    var s = s
    while s.first == " " || s.first == "\t" { s = s.dropFirst() }
    while s.last == " " || s.last == "\t" { s = s.dropLast() }
    return String(s)
}

final class HTTPClientActor {
    let id: Int
    let fd: Int32
    let plan: Int
    let pipeline: Int
    var sent = 0
    /// Paths sent and not yet answered, oldest first, and when each was sent.
    var outstanding: [String] = []
    var sentAt: [Int64] = []
    /// What each answer's body must be: its path, and for a request with a body, the body's hash.
    var expectedBodies: [String] = []
    var outgoing: [UInt8] = []
    var reader = MessageReader()
    var done = false
    var halfClosed = false
    var closing = false

    /// A patient client never resets or gives up early, so a request it waits on too long is the
    /// shard's fault (the liveness check).
    let patient: Bool

    init(id: Int, fd: Int32, plan: Int, pipeline: Int, patient: Bool) {
        self.id = id; self.fd = fd; self.plan = plan; self.pipeline = pipeline; self.patient = patient
    }

    func act(_ w: World, ending: Bool) {
        let k = w.kernel
        if ending && !closing { closing = true }
        // Faults: a reset, or closing with requests in flight.
        if !patient && w.random.chance(0.002) { k.reset(fd); w.cut += 1; done = true; return }
        if !closing && sent < plan && outstanding.count < pipeline && outgoing.isEmpty {
            sent += 1
            let path = "/c\(id)/r\(sent)"
            outstanding.append(path)
            sentAt.append(k.now)
            if w.random.chance(0.3) {
                var body = [UInt8](repeating: 0, count: 1 + w.random.below(12000))
                for i in body.indices { body[i] = UInt8(truncatingIfNeeded: w.random.next()) }
                outgoing += Array("PUT \(path) HTTP/1.1\r\nHost: sim\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
                expectedBodies.append("\(path) \(bodyHash(body))")
            } else {
                outgoing += Array("GET \(path) HTTP/1.1\r\nHost: sim\r\n\r\n".utf8)
                expectedBodies.append(path)
            }
        }
        if !outgoing.isEmpty {
            let n = 1 + w.random.below(outgoing.count)
            if k.write(fd, Array(outgoing.prefix(n))) { outgoing.removeFirst(n) } else { outgoing.removeAll() }
        }
        if sent == plan && outgoing.isEmpty && !halfClosed && w.random.chance(0.2) {
            // Some clients half-close after their last request: the answers must still come.
            halfClosed = true
            k.shutdownWrite(fd)
        }
        let (bytes, ended, reset) = k.read(fd, max: 1 + w.random.below(4000))
        reader.bytes += bytes
        while true {
            guard let message = reader.next() else { return w.fail("client \(id): a response Weir sent is not HTTP/1.1 it can frame") }
            guard let (line, headers, body) = message else { break }
            guard let expected = outstanding.first else {
                return w.fail("client \(id): a response with no request waiting for it: \(line) \(String(decoding: body, as: UTF8.self))")
            }
            outstanding.removeFirst()
            sentAt.removeFirst()
            let wanted = expectedBodies.removeFirst()
            w.responses += 1
            if line.hasPrefix("HTTP/1.1 200") {
                let got = String(decoding: body, as: UTF8.self)
                if got != wanted { return w.fail("client \(id): asked for \(wanted), got the response for \(got)") }
            } else if ["HTTP/1.1 502", "HTTP/1.1 503"].contains(where: { line.hasPrefix($0) }) {
                // Upstream resets and refused connects: Weir's answers for them.
                w.errorResponses += 1
                if headers.contains(where: { $0.0 == "connection" && $0.1 == "close" }) { outstanding.removeAll(); sentAt.removeAll(); expectedBodies.removeAll(); closing = true }
            } else if line.hasPrefix("HTTP/1.1 504") || line.hasPrefix("HTTP/1.1 408") {
                // Every upstream here answers at once and every client sends at once: a timeout
                // means the shard stalled (a pool pinned, a wake-up lost).
                return w.fail("client \(id): \(line) for \(expected): the request waited out a timeout")
            } else {
                return w.fail("client \(id): unexpected \(line) for \(expected)")
            }
        }
        if let first = sentAt.first, k.now - first > 16_000_000_000 {
            return w.fail("client \(id): \(outstanding[0]) unanswered for 16 s of simulated time: the shard stalled")
        }
        if (reset || ended) && patient && !outstanding.isEmpty && !closing {
            // Nothing here cuts a patient client short: its upstreams answer whole responses
            // before they close, and Weir's own answers say Connection: close when it closes.
            return w.fail("client \(id): its connection ended with \(outstanding.count) request(s) unanswered (\(outstanding[0]) first, half-closed: \(halfClosed))")
        }
        if reset || ended {
            if !outstanding.isEmpty { w.cut += 1; if getenv("WEIR_SIM_DEBUG") != nil { print("http client \(id) ended reset=\(reset) outstanding=\(outstanding.count) sent=\(sent)/\(plan) half=\(halfClosed) t=\(k.now)") } }
            k.closeWorld(fd)
            done = true
            return
        }
        if (closing && (outstanding.isEmpty || (!patient && w.random.chance(0.01)))) || (sent == plan && outstanding.isEmpty && outgoing.isEmpty) {
            if !outstanding.isEmpty { w.cut += 1 }
            k.closeWorld(fd)
            done = true
        }
    }
}

final class HTTPUpstreamActor {
    let listener: Int32
    final class Conn {
        let fd: Int32
        var reader = MessageReader()
        var served = 0
        let limit: Int
        var outgoing: [UInt8] = []
        var closeAfterSend = false
        var closed = false
        init(fd: Int32, limit: Int) { self.fd = fd; self.limit = limit }
    }
    var conns: [Conn] = []

    init(listener: Int32) { self.listener = listener }

    func act(_ w: World) {
        let k = w.kernel
        while let fd = k.accept(listener) { conns.append(Conn(fd: fd, limit: 1 + w.random.below(6))) }
        for c in conns where !c.closed {
            let (bytes, ended, reset) = k.read(c.fd, max: 1 + w.random.below(4000))
            c.reader.bytes += bytes
            while c.outgoing.isEmpty && !c.closeAfterSend {
                guard let message = c.reader.next() else { w.fail("upstream: a request Weir forwarded is not HTTP/1.1 it can frame"); return }
                guard let (line, _, requestBody) = message else { break }
                let parts = line.split(separator: " ")
                guard parts.count == 3, parts[2] == "HTTP/1.1" else { w.fail("upstream: bad request line \(line)"); return }
                // A path no well-behaved client asked for is a hostile client's, and must be one
                // a strict server reads from that client's bytes: else Weir framed something
                // else as a request (a request hidden in a body: smuggled).
                if !parts[1].hasPrefix("/c") && !w.hostileRequested.contains(String(parts[1])) {
                    w.fail("upstream: a request no strict server reads from what its client sent: \(line)"); return
                }
                if w.random.chance(0.01) {
                    // Reset before answering: Weir retries or answers 502.
                    w.upstreamResets += 1
                    k.reset(c.fd)
                    c.closed = true
                    break
                }
                c.served += 1
                let body = String(parts[1]) + (parts[0] == "GET" ? "" : " \(bodyHash(requestBody))")
                c.outgoing += Array("HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8)
                // A pooled connection the upstream closes right after an answer (nginx's
                // keepalive_requests), without saying so.
                if c.served >= c.limit { c.closeAfterSend = true }
            }
            if c.closed { continue }
            if !c.outgoing.isEmpty {
                let n = 1 + w.random.below(c.outgoing.count)
                k.write(c.fd, Array(c.outgoing.prefix(n)))
                c.outgoing.removeFirst(n)
            }
            if c.outgoing.isEmpty && c.closeAfterSend {
                w.upstreamCloses += 1
                k.closeWorld(c.fd)
                c.closed = true
            } else if reset || (ended && c.outgoing.isEmpty) {
                k.closeWorld(c.fd)
                c.closed = true
            }
        }
        conns.removeAll { $0.closed }
    }
}

final class TCPClientActor {
    let fd: Int32
    let toSend: [UInt8]
    var sentCount = 0
    var received: [UInt8] = []
    var done = false
    var halfClosed = false
    /// Weir must end this connection without passing a byte on (an SNI listener given half a
    /// ClientHello, or no TLS at all); the client gives up after a while if it does not.
    let refused: Bool
    var waited = 0

    init(fd: Int32, toSend: [UInt8], refused: Bool = false) { self.fd = fd; self.toSend = toSend; self.refused = refused }

    func act(_ w: World, ending: Bool) {
        let k = w.kernel
        if w.random.chance(0.01) { k.reset(fd); w.cut += 1; done = true; return }
        if sentCount < toSend.count {
            let n = 1 + w.random.below(min(2000, toSend.count - sentCount))
            if k.write(fd, Array(toSend[sentCount..<(sentCount + n)])) { sentCount += n }
        } else if !halfClosed {
            halfClosed = true
            k.shutdownWrite(fd)
        }
        let (bytes, ended, reset) = k.read(fd, max: 1 + w.random.below(3000))
        received += bytes
        if received.count > sentCount || received != Array(toSend[0..<received.count]) {
            return w.fail("TCP client: the echo is not what it sent (\(received.count) bytes back of \(sentCount) sent)")
        }
        if refused {
            if !received.isEmpty { return w.fail("SNI client: bytes came back through a connection that had no route") }
            waited += 1
            if reset || ended || waited > 3000 || (ending && waited > 200) {
                k.closeWorld(fd)
                done = true
            }
            return
        }
        if reset || ended {
            if received.count < toSend.count { w.cut += 1; if getenv("WEIR_SIM_DEBUG") != nil { print("tcp client ended reset=\(reset) got \(received.count)/\(toSend.count) sent \(sentCount) t=\(k.now)") } } else { w.echoed += received.count }
            k.closeWorld(fd)
            done = true
        } else if ending && w.random.chance(0.01) {
            w.cut += 1
            k.closeWorld(fd)
            done = true
        }
    }
}

/// A client that sends what attackers and broken clients send to an HTTP listener: the smuggling
/// shapes of RFC 9112 section 11 (Content-Length beside Transfer-Encoding, two lengths, codings
/// that are almost chunked, obs-fold, bare LF, chunk sizes that overflow, Connection naming a
/// framing header), each with a second request hidden in its body, and valid requests with
/// random bytes flipped. Weir may answer or refuse, but its answers must frame, a 200 must be
/// for one of this client's own paths, and the hidden request must never reach an upstream
/// (the upstreams fail the run if one does).
final class HostileClientActor {
    let id: Int
    let fd: Int32
    var outgoing: [UInt8]
    var reader = MessageReader()
    var done = false
    var waited = 0
    var requested: Set<String> = []

    /// The paths a strict server reads from `bytes` as requests (up to the first it cannot frame).
    static func requestPaths(_ bytes: [UInt8]) -> Set<String> {
        var reader = MessageReader(bytes: bytes, skipsEmptyLines: true)
        var paths: Set<String> = []
        while let m = reader.next(), let (line, _, _) = m {
            let parts = line.split(separator: " ")
            if parts.count == 3 { paths.insert(String(parts[1])) }
        }
        return paths
    }

    init(id: Int, fd: Int32, random: inout SimRandom) {
        self.id = id
        self.fd = fd
        let p = "/h\(id)/1"
        let h = "GET /smuggled/h\(id) HTTP/1.1\r\nHost: sim\r\n\r\n"
        let n = h.utf8.count
        let chunk = String(n, radix: 16) + "\r\n" + h + "\r\n0\r\n\r\n"
        let shapes = [
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\(h)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\(chunk)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nContent-Length: 0\r\nContent-Length: \(n)\r\n\r\n\(h)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nContent-Length: \(n), 0\r\n\r\n\(h)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nTransfer-Encoding: xchunked\r\n\r\n\(chunk)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nTransfer-Encoding: chunked, identity\r\n\r\n\(chunk)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nTransfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n\(chunk)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 0\r\n\r\n\(chunk)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nContent-Length: 0\r\nTransfer-Encoding:\tchunked\r\n\r\n\(chunk)",
            "POST \(p) HTTP/1.1\nHost: sim\nContent-Length: \(n)\n\n\(h)",
            "POST \(p) HTTP/1.1\r\nHost: sim\nTransfer-Encoding: chunked\r\n\r\n\(chunk)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n\(h)\r\n0\r\n\r\n",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nTransfer-Encoding: chunked\r\n\r\n\(String(n, radix: 16)) x\r\n\(h)\r\n0\r\n\r\n",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nTransfer-Encoding: chunked\r\n\r\n0\n\r\n\(h)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nConnection: content-length\r\nContent-Length: \(n)\r\n\r\n\(h)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n\(chunk)",
            "GET \(p) HTTP/1.1\r\nHost: sim\r\nContent-Length: \(n)\r\n\r\n\(h)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nContent-Length: +\(n)\r\n\r\n\(h)",
            "POST \(p) HTTP/1.1\rHost: sim\r\nContent-Length: \(n)\r\n\r\n\(h)",
            "POST \(p) HTTP/1.1\r\nHost: sim\r\nContent-Length: \(n)\r\n\r\n\(h)",
        ]
        // Steered by a fuzzer, some send its bytes as they are, after a request line or not.
        var bytes = random.tape != nil && random.chance(0.5)
            ? (random.chance(0.5) ? Array("POST \(p) HTTP/1.1\r\n".utf8) : []) + random.bytes(random.below(600))
            : Array(shapes[random.below(shapes.count)].utf8)
        // Half the time some bytes after the request line are flipped, inserted or dropped as well.
        let line = (bytes.firstIndex(of: 10) ?? 0) + 1
        if random.chance(0.5) {
            for _ in 0..<(1 + random.below(4)) where bytes.count > line {
                let at = line + random.below(bytes.count - line)
                let b = UInt8(truncatingIfNeeded: random.next())
                switch random.below(3) {
                case 0: bytes[at] = b
                case 1: bytes.insert(b, at: at)
                default: bytes.remove(at: at)
                }
            }
        }
        // And then, often, a plain request that must still be framed right.
        if random.chance(0.5) { bytes += Array("GET /h\(id)/2 HTTP/1.1\r\nHost: sim\r\n\r\n".utf8) }
        outgoing = bytes
        // A flipped byte can make the hidden request a real one (a Content-Length misspelt):
        // what a strict server would read as requests is this client's to ask for.
        requested = HostileClientActor.requestPaths(bytes)
        if getenv("WEIR_SIM_DEBUG") != nil { print("hostile client \(id) sends \(String(decoding: bytes, as: UTF8.self).debugDescription)") }
    }

    func act(_ w: World, ending: Bool) {
        let k = w.kernel
        if !outgoing.isEmpty {
            let n = 1 + w.random.below(outgoing.count)
            if k.write(fd, Array(outgoing.prefix(n))) { outgoing.removeFirst(n) } else { outgoing.removeAll() }
        }
        let (bytes, ended, reset) = k.read(fd, max: 1 + w.random.below(4000))
        reader.bytes += bytes
        while true {
            guard let message = reader.next() else { return w.fail("hostile client \(id): a response Weir sent is not HTTP/1.1 it can frame") }
            guard let (line, _, body) = message else { break }
            w.responses += 1
            if line.hasPrefix("HTTP/1.1 200") {
                let got = String(decoding: body, as: UTF8.self)
                let path = String(got.prefix { $0 != " " })
                if !requested.contains(path) { return w.fail("hostile client \(id): got the response for \(got)") }
            } else {
                w.errorResponses += 1
            }
        }
        waited += 1
        if reset || ended || waited > 2000 || (ending && waited > 100) {
            k.closeWorld(fd)
            done = true
        }
    }
}
