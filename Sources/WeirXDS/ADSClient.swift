// The xDS client: one Aggregated Discovery Service stream (state of the world) to the control
// plane, on the control side only (a Swift concurrency task; never on a shard). LDS and CDS are
// wildcard; EDS and RDS ask for the names the clusters and listeners need, the full list re-sent
// when it changes. Every response is translated with everything else Weir holds and compiled
// whole: accepted, it is published and ACKed; refused, the previous resources stay and the NACK
// names the resource and the field. The stream reconnects with jittered backoff and sends the
// versions it holds.
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization
import SwiftProtobuf
import WeirConfig
import WeirCore
import WeirXDSProtos

typealias DiscoveryRequest = Envoy_Service_Discovery_V3_DiscoveryRequest
typealias DiscoveryResponse = Envoy_Service_Discovery_V3_DiscoveryResponse

/// Counters for /stats/prometheus.
public struct XDSStats: Sendable {
    public var connected = false
    public var streams = 0
    public var accepted: [String: Int] = [:]
    public var rejected: [String: Int] = [:]
    public var versions: [String: String] = [:]
    public var lastError = ""
    /// Every resource held: its type, name, the version of the response that last changed it,
    /// when, and whether it is active, warming or activated by initial_fetch_timeout.
    public var resources: [ResourceState] = []
}

public struct ResourceState: Sendable {
    public var type: String
    public var name: String
    public var version: String
    public var updated: Date
    public var state: String
}

public final class ADSClient: @unchecked Sendable {
    public let settings: XDSSettings
    /// Translates and compiles the dynamic documents with the static file: nil when applied, else
    /// why not (the NACK's error_detail).
    let apply: @Sendable (_ listeners: [ListenerDocument], _ clusters: [ClusterDocument]) -> String?
    private let statsBox = Mutex(XDSStats())
    public var stats: XDSStats { statsBox.withLock { $0 } }

    // Owned by whoever holds `lock`: the stream task handling a response, or the warming timer.
    private let lock = NSLock()
    private var resources = XDSResources()
    /// Per type and name: the version of the response that last changed the resource, and when.
    private var changed: [XDSType: [String: (version: String, at: Date)]] = [:]
    /// Warming resources ("cluster NAME", "listener NAME"): since when (monotonic ns), and those
    /// activated because initial_fetch_timeout passed.
    private var warmingSince: [String: Int64] = [:]
    private var activated = Set<String>()
    /// The translation of `resources` (with `activated`), for the next update to reuse parts of.
    private var lastTranslation: Translation? = nil
    private var lastActivated = Set<String>()
    /// After an activation that could not be applied: when to try again, and the pause that grows
    /// with each failure.
    private var activationRetryAt: Int64 = 0
    private var activationBackoff: Int64 = 0
    private var versions: [XDSType: String] = [:]
    private var nonces: [XDSType: String] = [:]
    private var subscribed: [XDSType: [String]] = [:]
    private let stopped = Atomic<Bool>(false)

    public init(settings: XDSSettings, apply: @escaping @Sendable ([ListenerDocument], [ClusterDocument]) -> String?) {
        self.settings = settings
        self.apply = apply
    }

    public func start() {
        Task.detached { [self] in await self.run() }
        Task.detached { [self] in await self.warmingTimer() }
    }

    /// Activates resources still warming after initial_fetch_timeout: a cluster without its
    /// endpoints (it answers 503 until they come), a listener without its routes (404). The
    /// timeout counts from when each resource started warming.
    func warmingTimer() async {
        while !stopped.load(ordering: .relaxed) {
            try? await Task.sleep(nanoseconds: 100_000_000)
            lock.withLock { activateDue() }
        }
    }

    /// With `lock` held.
    func activateDue() {
        let now = monotonicNanoseconds()
        guard now >= activationRetryAt else { return }
        let due = warmingSince.filter { !activated.contains($0.key) && now - $0.value >= settings.initialFetchTimeoutNanoseconds }.keys.sorted()
        guard !due.isEmpty else { return }
        Log.warning("xds: initial_fetch_timeout passed, activating \(due.joined(separator: ", ")) while still warming")
        guard let failure = activate(due) else { return }
        // One that cannot be applied must not hold back the others: try them one by one.
        var failed: [(String, String)] = []
        if due.count > 1 {
            for key in due { if let why = activate([key]) { failed.append((key, why)) } }
        } else {
            failed = [(due[0], failure)]
        }
        guard !failed.isEmpty else { return }
        // Not applied, so not activated: they stay warming and the activation is tried again
        // (a bind that failed may succeed once the address is free), with growing pauses.
        activationBackoff = min(max(2 * activationBackoff, 500_000_000), 30_000_000_000)
        activationRetryAt = now + activationBackoff
        for (key, why) in failed {
            Log.warning("xds: activating \(key) failed: \(why); trying again in \(activationBackoff / 1_000_000) ms")
        }
    }

    /// Applies the current resources with `keys` activated as well; nil when that worked (they
    /// are activated now), else why not (nothing changed).
    private func activate(_ keys: [String]) -> String? {
        do {
            let t = try translate(resources, activate: activated.union(keys))
            if let why = apply(t.listeners, t.clusters) { return why }
            lastTranslation = t
            activated.formUnion(keys)
            lastActivated = activated
            activationBackoff = 0
            noteWarming(t)
            return nil
        } catch {
            return "\(error)"
        }
    }

    /// Tracks which resources are warming since when. Activated resources stay activated while
    /// the translation still uses them incomplete; complete or gone, they leave both sets.
    func noteWarming(_ t: Translation) {
        let now = monotonicNanoseconds()
        let warming = Set(t.warming.map(\.key))
        activated = t.activatedIncomplete
        warmingSince = warmingSince.filter { warming.contains($0.key) || activated.contains($0.key) }
        for key in warming where warmingSince[key] == nil { warmingSince[key] = now }
        publishResourceStates(warming: warming)
    }

    func publishResourceStates(warming: Set<String>) {
        var list: [ResourceState] = []
        for type in XDSType.allCases {
            for (name, c) in (changed[type] ?? [:]).sorted(by: { $0.key < $1.key }) {
                var state = "active"
                let key = type == .cluster ? "cluster \(name)" : type == .listener ? "listener \(name)" : ""
                if activated.contains(key) { state = "activated_by_initial_fetch_timeout" } else if warming.contains(key) { state = "warming" }
                list.append(ResourceState(type: type.short, name: name, version: c.version, updated: c.at, state: state))
            }
        }
        statsBox.withLock { $0.resources = list }
    }

    /// Records, for the type a response carried, the resources it changed (and drops those gone
    /// from any type).
    func noteChanges(_ type: XDSType, version: String, old: XDSResources, new: XDSResources) {
        let now = Date()
        func track<M: SwiftProtobuf.Message>(_ t: XDSType, _ o: [String: M], _ n: [String: M]) {
            var m = (changed[t] ?? [:]).filter { n[$0.key] != nil }
            if t == type {
                for (name, msg) in n where o[name].map({ !$0.isEqualTo(message: msg) }) ?? true || m[name] == nil {
                    m[name] = (version, now)
                }
            }
            changed[t] = m
        }
        track(.listener, old.listeners, new.listeners)
        track(.cluster, old.clusters, new.clusters)
        track(.endpoint, old.loadAssignments, new.loadAssignments)
        track(.route, old.routes, new.routes)
    }

    public func stop() { stopped.store(true, ordering: .relaxed) }

    func run() async {
        var backoff = 0.25
        while !stopped.load(ordering: .relaxed) {
            do {
                try await stream()
                backoff = 0.25
            } catch {
                statsBox.withLock { $0.connected = false; $0.lastError = "\(error)" }
                Log.warning("xds: stream to \(settings.address) ended: \(error); reconnecting")
            }
            // Jittered exponential backoff, at most 30 s.
            let wait = backoff * Double.random(in: 0.5...1.5)
            backoff = min(backoff * 2, 30)
            try? await Task.sleep(nanoseconds: UInt64(wait * 1e9))
        }
    }

    func stream() async throws {
        let host = settings.address.hostText, port = Int(settings.address.port)
        let target: any ResolvableTarget = settings.address.family == .inet ? .ipv4(address: host, port: port) : .ipv6(address: host, port: port)
        let transport = try HTTP2ClientTransport.Posix(target: target, transportSecurity: .plaintext,
                                                       config: .defaults { $0.http2.maxFrameSize = 1 << 20 })
        try await withGRPCClient(transport: transport) { grpc in
            let ads = Envoy_Service_Discovery_V3_AggregatedDiscoveryService.Client(wrapping: grpc)
            let (outgoing, continuation) = AsyncStream<DiscoveryRequest>.makeStream()
            // A new stream: the node, then what we hold of each type (versions survive reconnects).
            statsBox.withLock { $0.connected = true; $0.streams += 1 }
            var first = true
            for type in [XDSType.cluster, .listener] {
                continuation.yield(request(type, names: [], node: first))
                first = false
            }
            for type in [XDSType.endpoint, .route] where !(subscribed[type] ?? []).isEmpty {
                continuation.yield(request(type, names: subscribed[type]!, node: false))
            }
            var options = CallOptions.defaults
            options.maxResponseMessageBytes = 64 << 20   // Istio sends more than gRPC's 4 MB default
            try await ads.streamAggregatedResources(
                request: StreamingClientRequest(of: DiscoveryRequest.self) { writer in
                    for await r in outgoing { try await writer.write(r) }
                },
                options: options
            ) { response in
                for try await message in response.messages {
                    self.handle(message, continuation)
                }
            }
            continuation.finish()
        }
    }

    func request(_ type: XDSType, names: [String], node: Bool, nonce: String? = nil, error: String? = nil) -> DiscoveryRequest {
        var r = DiscoveryRequest()
        r.typeURL = type.rawValue
        r.versionInfo = versions[type] ?? ""
        r.responseNonce = nonce ?? nonces[type] ?? ""
        r.resourceNames = names
        if node {
            r.node.id = settings.nodeID
            r.node.cluster = settings.nodeCluster
            if !settings.nodeMetadata.isEmpty {
                var s = Google_Protobuf_Struct()
                for (k, v) in settings.nodeMetadata { s.fields[k] = Google_Protobuf_Value(stringValue: v) }
                r.node.metadata = s
            }
            r.node.userAgentName = "weir"
        }
        if let error {
            r.errorDetail.code = 3  // INVALID_ARGUMENT
            r.errorDetail.message = error
        }
        subscribed[type] = names
        return r
    }

    func handle(_ response: DiscoveryResponse, _ out: AsyncStream<DiscoveryRequest>.Continuation) {
        lock.lock()
        defer { lock.unlock() }
        guard let type = XDSType(rawValue: response.typeURL) else {
            Log.warning("xds: ignoring a response of unknown type \(response.typeURL)")
            return
        }
        let t0 = monotonicNanoseconds()
        var candidate = resources
        var decodeError: String? = nil
        do {
            switch type {
            case .listener:
                candidate.listeners = try decodeAll(response.resources, EnvoyListener.self, type) { $0.name }
                let keep = Set(candidate.rdsNames)
                candidate.routes = candidate.routes.filter { keep.contains($0.key) }
            case .cluster:
                candidate.clusters = try decodeAll(response.resources, EnvoyCluster.self, type) { $0.name }
                let keep = Set(candidate.edsNames)
                candidate.loadAssignments = candidate.loadAssignments.filter { keep.contains($0.key) }
            case .endpoint:
                for (k, v) in try decodeAll(response.resources, EnvoyLoadAssignment.self, type, { $0.clusterName }) { candidate.loadAssignments[k] = v }
            case .route:
                for (k, v) in try decodeAll(response.resources, EnvoyRouteConfiguration.self, type, { $0.name }) { candidate.routes[k] = v }
            }
        } catch {
            decodeError = "\(error)"
        }
        var verdict = decodeError
        var translation: Translation? = nil
        let t1 = monotonicNanoseconds()
        var t2 = t1
        if verdict == nil {
            do {
                let same = lastTranslation != nil && lastActivated == activated
                let t = try translate(candidate, activate: activated, previous: lastTranslation,
                                      reuseClusters: same && (type == .route || type == .listener),
                                      reuseListeners: same && type == .endpoint)
                if !t.warming.isEmpty { Log.info("xds: warming \(t.warming.map { "\($0.key) (\($0.why))" }.joined(separator: ", "))") }
                t2 = monotonicNanoseconds()
                verdict = apply(t.listeners, t.clusters)
                translation = t
            } catch {
                verdict = "\(error)"
            }
        }
        let short = type.short
        if let why = verdict {
            Log.warning("xds: NACK \(short) version \(response.versionInfo): \(why)")
            statsBox.withLock { $0.rejected[short, default: 0] += 1; $0.lastError = why }
            out.yield(request(type, names: subscribed[type] ?? [], node: false, nonce: response.nonce, error: why))
            nonces[type] = response.nonce
            return
        }
        noteChanges(type, version: response.versionInfo, old: resources, new: candidate)
        resources = candidate
        if let translation {
            lastTranslation = translation
            lastActivated = activated
            noteWarming(translation)
        }
        versions[type] = response.versionInfo
        nonces[type] = response.nonce
        statsBox.withLock { $0.accepted[short, default: 0] += 1; $0.versions[short] = response.versionInfo }
        let t3 = monotonicNanoseconds()
        func ms(_ a: Int64, _ b: Int64) -> String { String(format: "%.1f", Double(b - a) / 1e6) }
        Log.info("xds: ACK \(short) version \(response.versionInfo) (\(response.resources.count) resource(s)) in \(ms(t0, t3)) ms: decode \(ms(t0, t1)), translate \(ms(t1, t2)), compile and publish \(ms(t2, t3))")
        out.yield(request(type, names: subscribed[type] ?? [], node: false))
        // Subscriptions follow what the clusters and listeners need now.
        let eds = resources.edsNames, rds = resources.rdsNames
        if eds != (subscribed[.endpoint] ?? []) { out.yield(request(.endpoint, names: eds, node: false)) }
        if rds != (subscribed[.route] ?? []) { out.yield(request(.route, names: rds, node: false)) }
    }

    func decodeAll<M: SwiftProtobuf.Message>(_ list: [Google_Protobuf_Any], _: M.Type, _ type: XDSType, _ name: (M) -> String) throws -> [String: M] {
        var out: [String: M] = [:]
        for any in list {
            guard any.typeURL == type.rawValue else { throw XDSError(resource: "\(type.short) response", message: "a resource of type \(any.typeURL)") }
            let m = try M(unpackingAny: any)
            let n = name(m)
            if n.isEmpty { throw XDSError(resource: "\(type.short) response", message: "a resource without a name") }
            if out[n] != nil { throw XDSError(resource: "\(type.short) '\(n)'", message: "sent twice in one response") }
            out[n] = m
        }
        return out
    }
}

extension ADSClient {
    /// The stream's state and updates by type, in Prometheus text format.
    public func prometheus() -> String {
        let s = stats
        var out = "# HELP weir_xds_connected 1 while the ADS stream to the control plane is up.\n# TYPE weir_xds_connected gauge\n"
        out += "weir_xds_connected \(s.connected ? 1 : 0)\n"
        out += "# HELP weir_xds_streams_total ADS streams opened (reconnects included).\n# TYPE weir_xds_streams_total counter\n"
        out += "weir_xds_streams_total \(s.streams)\n"
        out += "# HELP weir_xds_updates_total xDS responses by type and result.\n# TYPE weir_xds_updates_total counter\n"
        for type in XDSType.allCases.map(\.short) {
            out += "weir_xds_updates_total{type=\"\(type)\",result=\"accepted\"} \(s.accepted[type] ?? 0)\n"
            out += "weir_xds_updates_total{type=\"\(type)\",result=\"rejected\"} \(s.rejected[type] ?? 0)\n"
        }
        return out
    }

    /// The control plane, the versions accepted per type and the last refusal, as JSON.
    public func configDumpJSON() -> String {
        let s = stats
        func q(_ t: String) -> String {
            "\"" + t.unicodeScalars.map { c -> String in
                switch c {
                case "\"": return "\\\""
                case "\\": return "\\\\"
                default: return c.value < 0x20 ? String(format: "\\u%04x", c.value) : String(c)
                }
            }.joined() + "\""
        }
        let versions = XDSType.allCases.map { "\(q($0.short)):\(q(s.versions[$0.short] ?? ""))" }.joined(separator: ",")
        let iso = ISO8601DateFormatter()
        let resources = s.resources.map {
            "{\"type\":\(q($0.type)),\"name\":\(q($0.name)),\"version\":\(q($0.version)),\"last_updated\":\(q(iso.string(from: $0.updated))),\"state\":\(q($0.state))}"
        }.joined(separator: ",")
        return "{\"control_plane\":\(q(settings.address.description)),\"node\":\(q(settings.nodeID)),\"connected\":\(s.connected),"
            + "\"versions\":{\(versions)},\"resources\":[\(resources)],\"last_error\":\(q(s.lastError))}"
    }
}
