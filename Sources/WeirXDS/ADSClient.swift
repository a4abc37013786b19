// The xDS client: one Aggregated Discovery Service stream (state of the world) to the control
// plane, on the control side only (a Swift concurrency task; never on a shard). LDS and CDS are
// wildcard; EDS and RDS ask for the names the clusters and listeners need, the full list re-sent
// when it changes. A response is applied resource by resource, as Envoy does: each one is
// translated with everything else Weir holds; one that is refused (by translation or by the
// compiler) keeps its previous version (or stays out), the others are compiled and published,
// and the NACK names every refused resource and its field. The stream reconnects with jittered
// backoff and sends the versions it holds. Secrets whose sds_config names pilot-agent's sds-grpc
// cluster come on a second stream (SecretDiscoveryService) to its Unix socket when one is
// configured (xds.sds_address, or the bootstrap's sds-grpc cluster); their responses go through
// the same resource-by-resource handling.
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
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
    /// Resources refused in the last response of each type (type -> name -> why).
    public var refused: [String: [String: String]] = [:]
    /// Accepted and ignored fields and skipped filters: type -> field -> resources now carrying it,
    /// and how many accepted resource versions carried it (weir_xds_ignored_total).
    public var ignored: [String: [String: Set<String>]] = [:]
    public var ignoredTotal: [String: [String: Int]] = [:]
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
    /// Translates and compiles the dynamic documents with the static file: no errors when
    /// applied, else why not (errors positioned in a resource, `xds:KIND/NAME`, name it).
    let apply: @Sendable (_ listeners: [ListenerDocument], _ clusters: [ClusterDocument]) -> [ConfigError]
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
    /// The stream a request or response travels on: ADS, or the SDS stream to the agent's socket.
    enum Channel: Hashable { case ads, sdsSocket }
    struct StreamKey: Hashable {
        let type: XDSType, channel: Channel
        init(_ type: XDSType, _ channel: Channel = .ads) { self.type = type; self.channel = channel }
    }
    private var versions: [StreamKey: String] = [:]
    private var nonces: [StreamKey: String] = [:]
    private var subscribed: [StreamKey: [String]] = [:]
    /// Where requests go, while each stream is up.
    private var adsOut: AsyncStream<DiscoveryRequest>.Continuation? = nil
    private var sdsOut: AsyncStream<DiscoveryRequest>.Continuation? = nil
    /// Clusters the control plane sent that were refused with no version to keep: what names
    /// them is told so (a 503 under validate_clusters false, else a refusal saying why).
    private var refusedClusters = Set<String>()
    private let stopped = Atomic<Bool>(false)

    /// (type, field) pairs logged once already.
    private var loggedIgnored = Set<String>()

    public init(settings: XDSSettings, apply: @escaping @Sendable ([ListenerDocument], [ClusterDocument]) -> [ConfigError]) {
        self.settings = settings
        self.apply = apply
    }

    public func start() {
        Task.detached { [self] in await self.run() }
        if settings.sdsUnixPath != nil { Task.detached { [self] in await self.runSDS() } }
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
        // 0 means no timeout, as in Envoy: warming resources wait for what they need.
        let due = settings.initialFetchTimeoutNanoseconds <= 0 ? [] :
            warmingSince.filter { !activated.contains($0.key) && now - $0.value >= settings.initialFetchTimeoutNanoseconds }.keys.sorted()
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
            // The previous translation too: a listener's old version serving while its new one
            // warms keeps serving (none of it is reused otherwise).
            let t = translateEach(resources, activate: activated.union(keys), previous: lastTranslation, refused: refusedClusters)
            if let e = t.rejected.first { throw e }
            let errors = apply(t.listeners, t.clusters)
            if !errors.isEmpty { return errors.map(\.description).joined(separator: "; ") }
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
    /// from any type); returns the names of those changed.
    @discardableResult
    func noteChanges(_ type: XDSType, version: String, old: XDSResources, new: XDSResources) -> Set<String> {
        let now = Date()
        var changedNow = Set<String>()
        func track<M: SwiftProtobuf.Message>(_ t: XDSType, _ o: [String: M], _ n: [String: M]) {
            var m = (changed[t] ?? [:]).filter { n[$0.key] != nil }
            if t == type {
                for (name, msg) in n where o[name].map({ !$0.isEqualTo(message: msg) }) ?? true || m[name] == nil {
                    m[name] = (version, now)
                    changedNow.insert(name)
                }
            }
            changed[t] = m
        }
        track(.listener, old.listeners, new.listeners)
        track(.cluster, old.clusters, new.clusters)
        track(.endpoint, old.loadAssignments, new.loadAssignments)
        track(.route, old.routes, new.routes)
        track(.secret, old.secrets, new.secrets)
        return changedNow
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
                Log.warning("xds: stream to \(settings.target) ended: \(error); reconnecting")
            }
            // Jittered exponential backoff, at most 30 s.
            let wait = backoff * Double.random(in: 0.5...1.5)
            backoff = min(backoff * 2, 30)
            try? await Task.sleep(nanoseconds: UInt64(wait * 1e9))
        }
    }

    func stream() async throws {
        let host = settings.address.hostText, port = Int(settings.address.port)
        let target: any ResolvableTarget = settings.unixPath.map { .unixDomainSocket(path: $0) }
            ?? (settings.address.family == .inet ? .ipv4(address: host, port: port) : .ipv6(address: host, port: port))
        let transport = try HTTP2ClientTransport.Posix(target: target, transportSecurity: .plaintext,
                                                       config: .defaults { $0.http2.maxFrameSize = 1 << 20 })
        try await withGRPCClient(transport: transport) { grpc in
            let ads = Envoy_Service_Discovery_V3_AggregatedDiscoveryService.Client(wrapping: grpc)
            let (outgoing, continuation) = AsyncStream<DiscoveryRequest>.makeStream()
            // A new stream: the node, then what we hold of each type (versions survive reconnects).
            statsBox.withLock { $0.connected = true; $0.streams += 1 }
            lock.withLock {
                var first = true
                for type in [XDSType.cluster, .listener] {
                    continuation.yield(request(type, names: [], node: first))
                    first = false
                }
                for type in [XDSType.endpoint, .route, .secret] where !(subscribed[StreamKey(type)] ?? []).isEmpty {
                    continuation.yield(request(type, names: subscribed[StreamKey(type)]!, node: false))
                }
                adsOut = continuation
            }
            defer { lock.withLock { adsOut = nil } }
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

    func request(_ type: XDSType, names: [String], node: Bool, nonce: String? = nil, error: String? = nil, on channel: Channel = .ads) -> DiscoveryRequest {
        let key = StreamKey(type, channel)
        var r = DiscoveryRequest()
        r.typeURL = type.rawValue
        r.versionInfo = versions[key] ?? ""
        r.responseNonce = nonce ?? nonces[key] ?? ""
        r.resourceNames = names
        if node {
            r.node.id = settings.nodeID
            r.node.cluster = settings.nodeCluster
            if let json = settings.nodeMetadataJSON, let m = try? Google_Protobuf_Struct(jsonString: json) {
                r.node.metadata = m
            } else if !settings.nodeMetadata.isEmpty {
                var s = Google_Protobuf_Struct()
                for (k, v) in settings.nodeMetadata { s.fields[k] = Google_Protobuf_Value(stringValue: v) }
                r.node.metadata = s
            }
            r.node.userAgentName = "weir"
            let loc = settings.nodeLocality
            if !loc.isEmpty {
                r.node.locality.region = loc[0]
                if loc.count > 1 { r.node.locality.zone = loc[1] }
                if loc.count > 2 { r.node.locality.subZone = loc[2] }
            }
        }
        if let error {
            r.errorDetail.code = 3  // INVALID_ARGUMENT
            r.errorDetail.message = error
        }
        subscribed[key] = names
        return r
    }

    /// The SDS stream to the agent's socket: open while there are secrets to ask it for,
    /// reconnecting with backoff as the ADS stream does.
    func runSDS() async {
        var backoff = 0.25
        while !stopped.load(ordering: .relaxed) {
            let wanted = lock.withLock { !(subscribed[StreamKey(.secret, .sdsSocket)] ?? []).isEmpty }
            guard wanted else { try? await Task.sleep(nanoseconds: 100_000_000); continue }
            do {
                try await streamSDS()
                backoff = 0.25
            } catch {
                Log.warning("xds: SDS stream to unix:\(settings.sdsUnixPath ?? "") ended: \(error); reconnecting")
            }
            let wait = backoff * Double.random(in: 0.5...1.5)
            backoff = min(backoff * 2, 30)
            try? await Task.sleep(nanoseconds: UInt64(wait * 1e9))
        }
    }

    func streamSDS() async throws {
        guard let path = settings.sdsUnixPath else { return }
        let transport = try HTTP2ClientTransport.Posix(target: .unixDomainSocket(path: path), transportSecurity: .plaintext,
                                                       config: .defaults { $0.http2.maxFrameSize = 1 << 20 })
        try await withGRPCClient(transport: transport) { grpc in
            let (outgoing, continuation) = AsyncStream<DiscoveryRequest>.makeStream()
            lock.withLock {
                // The node on the first request (set_node_on_first_message_only), then what is
                // held; a nonce belongs to the stream that sent it.
                nonces[StreamKey(.secret, .sdsSocket)] = nil
                continuation.yield(request(.secret, names: subscribed[StreamKey(.secret, .sdsSocket)] ?? [], node: true, on: .sdsSocket))
                sdsOut = continuation
            }
            defer { lock.withLock { sdsOut = nil } }
            Log.info("xds: SDS stream to unix:\(path) open")
            var options = CallOptions.defaults
            options.maxResponseMessageBytes = 16 << 20
            let descriptor = MethodDescriptor(service: ServiceDescriptor(fullyQualifiedService: "envoy.service.secret.v3.SecretDiscoveryService"),
                                              method: "StreamSecrets", type: .bidirectionalStreaming)
            try await grpc.bidirectionalStreaming(
                request: StreamingClientRequest(of: DiscoveryRequest.self) { writer in
                    for await r in outgoing { try await writer.write(r) }
                },
                descriptor: descriptor,
                serializer: ProtobufSerializer<DiscoveryRequest>(),
                deserializer: ProtobufDeserializer<DiscoveryResponse>(),
                options: options
            ) { response in
                for try await message in response.messages {
                    self.handle(message, continuation, on: .sdsSocket)
                }
            }
            continuation.finish()
        }
    }

    func handle(_ response: DiscoveryResponse, _ out: AsyncStream<DiscoveryRequest>.Continuation, on channel: Channel = .ads) {
        lock.lock()
        defer { lock.unlock() }
        guard let type = XDSType(rawValue: response.typeURL) else {
            Log.warning("xds: ignoring a response of unknown type \(response.typeURL)")
            return
        }
        if channel == .sdsSocket && type != .secret {
            Log.warning("xds: ignoring a \(type.short) response on the SDS stream")
            return
        }
        let key = StreamKey(type, channel)
        let t0 = monotonicNanoseconds()
        var candidate = resources
        var decodeError: String? = nil
        var responseNames = Set<String>()
        do {
            switch type {
            case .listener:
                candidate.listeners = try decodeAll(response.resources, EnvoyListener.self, type) { $0.name }
                responseNames = Set(candidate.listeners.keys)
            case .cluster:
                candidate.clusters = try decodeAll(response.resources, EnvoyCluster.self, type) { $0.name }
                responseNames = Set(candidate.clusters.keys)
            case .endpoint:
                for (k, v) in try decodeAll(response.resources, EnvoyLoadAssignment.self, type, { $0.clusterName }) { candidate.loadAssignments[k] = v; responseNames.insert(k) }
            case .route:
                for (k, v) in try decodeAll(response.resources, EnvoyRouteConfiguration.self, type, { $0.name }) { candidate.routes[k] = v; responseNames.insert(k) }
            case .secret:
                for (k, v) in try decodeAll(response.resources, EnvoySecret.self, type, { $0.name }) { candidate.secrets[k] = v; responseNames.insert(k) }
            }
        } catch {
            decodeError = "\(error)"
        }
        let short = type.short
        func nack(_ why: String) {
            Log.warning("xds: NACK \(short) version \(response.versionInfo): \(why)")
            statsBox.withLock { $0.rejected[short, default: 0] += 1; $0.lastError = why }
            out.yield(request(type, names: subscribed[key] ?? [], node: false, nonce: response.nonce, error: why, on: channel))
            nonces[key] = response.nonce
        }
        if let decodeError { return nack(decodeError) }
        // Resource by resource: a refused one keeps its previous version, or stays out (a refused
        // cluster's name is remembered, so what names it says it was refused).
        var refused: [String: String] = [:]
        var refusedClusters = type == .cluster ? Set<String>() : self.refusedClusters
        func revert(_ name: String) {
            switch type {
            case .listener: candidate.listeners[name] = resources.listeners[name]
            case .cluster:
                candidate.clusters[name] = resources.clusters[name]
                if candidate.clusters[name] == nil { refusedClusters.insert(name) }
            case .endpoint: candidate.loadAssignments[name] = resources.loadAssignments[name]
            case .route: candidate.routes[name] = resources.routes[name]
            case .secret: candidate.secrets[name] = resources.secrets[name]
            }
        }
        func refuse(_ name: String, _ why: String) {
            if refused[name] == nil { refused[name] = why }
            revert(name)
        }
        // A secret is checked as it arrives (its PEM loads, its key matches), so a bad one is
        // refused by its own name and the last good version keeps serving.
        if type == .secret {
            for name in responseNames.sorted() { if let s = candidate.secrets[name], let why = secretProblem(s) { refuse(name, why) } }
        }
        var translation: Translation? = nil
        let t1 = monotonicNanoseconds()
        var t2 = t1
        for round in 1...8 {
            let same = lastTranslation != nil && lastActivated == activated
            let t = translateEach(candidate, activate: activated, previous: lastTranslation,
                                  reuseClusters: same && (type == .route || type == .listener),
                                  reuseListeners: same && type == .endpoint, refused: refusedClusters)
            var progress = false
            var other: [String] = []
            for e in t.rejected {
                if let name = e.involved[type] { refuse(name, e.description); progress = true } else { other.append(e.description) }
            }
            // A refusal no resource of this response can take (say a CDS response removes a
            // cluster a tcp_proxy listener still uses): refused whole, as before. Envoy would
            // apply it and close such connections; docs/xds.md says so.
            if !other.isEmpty { return nack(other.joined(separator: "; ")) }
            if progress {
                if round < 8 { continue }
                return nack("refusals did not settle: \(errorDetail(refused))")
            }
            t2 = monotonicNanoseconds()
            let errors = apply(t.listeners, t.clusters)
            if errors.isEmpty {
                if !t.warming.isEmpty { Log.info("xds: warming \(t.warming.map { "\($0.key) (\($0.why))" }.joined(separator: ", "))") }
                translation = t
                break
            }
            // Compiler errors name their resource in their position (xds:KIND/NAME).
            for err in errors {
                let file = err.position.file
                guard file.hasPrefix("xds:"), let slash = file.firstIndex(of: "/") else { other.append(err.description); continue }
                let kind = String(file[file.index(file.startIndex, offsetBy: 4)..<slash])
                let name = String(file[file.index(after: slash)...])
                // The message names its resource already, or gets it in front (not the position).
                let why = err.message.contains("'\(name)'") ? err.message : "\(kind) '\(name)': \(err.message)"
                switch (kind, type) {
                case ("listener", .listener), ("cluster", .cluster), ("route", .route): refuse(name, why)
                case ("cluster", .endpoint):
                    if let c = candidate.clusters[name] { refuse(edsName(c), why) } else { other.append(why) }
                case ("route", .listener):
                    // Routes from RDS or inline: the listeners that carry them.
                    let users = candidate.listeners.filter {
                        candidate.rdsNames(of: $0.value).contains(name) || candidate.inlineRouteNames(of: $0.value).contains(name)
                    }.map(\.key)
                    if users.isEmpty { other.append(why) }
                    for u in users { refuse(u, why) }
                case ("listener", .secret), ("cluster", .secret):
                    // A certificate or CA that does not load: the secrets that resource uses.
                    let used = kind == "listener" ? candidate.listeners[name].map { l in
                        (l.filterChains + (l.hasDefaultFilterChain ? [l.defaultFilterChain] : [])).flatMap { sdsNames(of: $0.transportSocket) }
                    } ?? [] : candidate.clusters[name].map { clusterSDSNames($0) } ?? []
                    if used.isEmpty { other.append(why) }
                    for r in Set(used) { refuse(r, why) }
                case ("listener", .route):
                    // A listener's routes as a whole (none at all, say): the configurations it uses.
                    let used = candidate.listeners[name].map { candidate.rdsNames(of: $0) } ?? []
                    if used.isEmpty { other.append(why) }
                    for r in used { refuse(r, why) }
                default: other.append(why)
                }
            }
            if !other.isEmpty || round == 8 { return nack((other.isEmpty ? errors.map(\.description) : other).joined(separator: "; ")) }
        }
        guard let translation else { return nack("resources could not be applied") }
        // Routes and endpoints no listener or cluster needs any more go (after the refusals, so
        // a listener or cluster kept at its previous version keeps what it uses).
        if type == .listener {
            let keep = Set(candidate.rdsNames)
            candidate.routes = candidate.routes.filter { keep.contains($0.key) }
            let secrets = Set(candidate.sdsNames)
            candidate.secrets = candidate.secrets.filter { secrets.contains($0.key) }
        } else if type == .cluster {
            let keep = Set(candidate.edsNames)
            candidate.loadAssignments = candidate.loadAssignments.filter { keep.contains($0.key) }
            let secrets = Set(candidate.sdsNames)
            candidate.secrets = candidate.secrets.filter { secrets.contains($0.key) }
        }
        // Ignored fields are counted once per new version of a resource, not per resend.
        let changedNames = noteChanges(type, version: response.versionInfo, old: resources, new: candidate)
            .intersection(responseNames).subtracting(refused.keys)
        resources = candidate
        self.refusedClusters = refusedClusters
        lastTranslation = translation
        lastActivated = activated
        noteWarming(translation)
        noteIgnored(translation.notes, type: type, accepted: changedNames)
        nonces[key] = response.nonce
        let t3 = monotonicNanoseconds()
        func ms(_ a: Int64, _ b: Int64) -> String { String(format: "%.1f", Double(b - a) / 1e6) }
        if refused.isEmpty {
            versions[key] = response.versionInfo
            statsBox.withLock { $0.accepted[short, default: 0] += 1; $0.versions[short] = response.versionInfo; $0.refused[short] = [:] }
            Log.info("xds: ACK \(short) version \(response.versionInfo) (\(response.resources.count) resource(s)) in \(ms(t0, t3)) ms: decode \(ms(t0, t1)), translate \(ms(t1, t2)), compile and publish \(ms(t2, t3))")
            out.yield(request(type, names: subscribed[key] ?? [], node: false, on: channel))
        } else {
            // The rest is applied; the NACK keeps the version last accepted whole and names
            // every refused resource.
            let why = errorDetail(refused)
            Log.warning("xds: NACK \(short) version \(response.versionInfo): \(refused.count) of \(response.resources.count) resource(s) refused, the rest applied: \(why)")
            statsBox.withLock { $0.rejected[short, default: 0] += 1; $0.lastError = why; $0.refused[short] = refused }
            out.yield(request(type, names: subscribed[key] ?? [], node: false, nonce: response.nonce, error: why, on: channel))
        }
        followSubscriptions()
    }

    /// Subscriptions follow what the clusters and listeners need now: sent on each stream that
    /// is up, else remembered for when it (re)connects. With `lock` held.
    func followSubscriptions() {
        let socket = settings.sdsUnixPath != nil
        let wanted: [(XDSType, Channel, [String])] = [
            (.endpoint, .ads, resources.edsNames), (.route, .ads, resources.rdsNames),
            (.secret, .ads, socket ? resources.sdsNames(socket: false) : resources.sdsNames),
            (.secret, .sdsSocket, socket ? resources.sdsNames(socket: true) : []),
        ]
        for (type, channel, names) in wanted where names != (subscribed[StreamKey(type, channel)] ?? []) {
            if channel == .sdsSocket && names.isEmpty {
                // Nothing to ask the agent for: the stream ends (an empty list could read as
                // "everything" to a server), and opens again when something is needed.
                subscribed[StreamKey(type, channel)] = []
                sdsOut?.finish()
                continue
            }
            if let out = channel == .ads ? adsOut : sdsOut {
                out.yield(request(type, names: names, node: false, on: channel))
            } else {
                subscribed[StreamKey(type, channel)] = names
            }
        }
    }

    /// Every refused resource and why, sorted by name, at most 8 KiB (then how many more).
    func errorDetail(_ refused: [String: String]) -> String {
        var out = ""
        let sorted = refused.sorted { $0.key < $1.key }
        for (i, (_, why)) in sorted.enumerated() {
            let piece = (out.isEmpty ? "" : "; ") + why
            if out.utf8.count + piece.utf8.count > 8192 { return out + "; and \(sorted.count - i) more" }
            out += piece
        }
        return out
    }

    /// Publishes what the held resources carry that is accepted and ignored, counts it for the
    /// resources this response of `type` carried, and logs each (type, field) once.
    func noteIgnored(_ notes: Notes, type: XDSType, accepted: Set<String>) {
        var lines: [String] = []
        statsBox.withLock { st in
            st.ignored = [:]
            for (t, fields) in notes.ignored {
                for (field, names) in fields {
                    st.ignored[t.short, default: [:]][field] = names
                    if t == type {
                        let n = names.intersection(accepted).count
                        if n > 0 { st.ignoredTotal[t.short, default: [:]][field, default: 0] += n }
                    }
                    let key = "\(t.short) \(field)"
                    if !loggedIgnored.contains(key) {
                        loggedIgnored.insert(key)
                        lines.append("xds: accepting and ignoring \(key) (\(names.count) resource(s), e.g. '\(names.sorted().first ?? "")'; see docs/xds.md)")
                    }
                }
            }
        }
        for l in lines.sorted() { Log.info(l) }
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
        out += "# HELP weir_xds_refused_resources Resources refused in the last response of their type (the rest of it was applied).\n# TYPE weir_xds_refused_resources gauge\n"
        for type in XDSType.allCases.map(\.short) { out += "weir_xds_refused_resources{type=\"\(type)\"} \(s.refused[type]?.count ?? 0)\n" }
        out += "# HELP weir_xds_ignored_total Accepted new versions of resources that carried a field or filter Weir accepts and ignores (docs/xds.md).\n# TYPE weir_xds_ignored_total counter\n"
        for (type, fields) in s.ignoredTotal.sorted(by: { $0.key < $1.key }) {
            for (field, n) in fields.sorted(by: { $0.key < $1.key }) {
                out += "weir_xds_ignored_total{type=\"\(type)\",field=\"\(field.replacingOccurrences(of: "\"", with: "'"))\"} \(n)\n"
            }
        }
        return out
    }

    /// The control plane, the versions accepted per type and the last refusal, as JSON.
    /// Envoy's admin /stats lines pilot-agent's readiness check reads (xDS updates applied).
    public func envoyStats() -> [String: Int] {
        let s = stats
        return ["cluster_manager.cds.update_success": s.accepted["CDS"] ?? 0, "listener_manager.lds.update_success": s.accepted["LDS"] ?? 0,
                "cluster_manager.cds.update_rejected": s.rejected["CDS"] ?? 0, "listener_manager.lds.update_rejected": s.rejected["LDS"] ?? 0]
    }

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
        var refused: [String] = []
        for (type, list) in s.refused.sorted(by: { $0.key < $1.key }) {
            for (name, why) in list.sorted(by: { $0.key < $1.key }) { refused.append("{\"type\":\(q(type)),\"name\":\(q(name)),\"error\":\(q(why))}") }
        }
        var ignored: [String] = []
        for (type, fields) in s.ignored.sorted(by: { $0.key < $1.key }) {
            for (field, names) in fields.sorted(by: { $0.key < $1.key }) {
                ignored.append("{\"type\":\(q(type)),\"field\":\(q(field)),\"resources\":[\(names.sorted().map(q).joined(separator: ","))]}")
            }
        }
        return "{\"control_plane\":\(q(settings.target)),\"node\":\(q(settings.nodeID)),\"connected\":\(s.connected),"
            + "\"versions\":{\(versions)},\"resources\":[\(resources)],\"refused\":[\(refused.joined(separator: ","))],"
            + "\"ignored\":[\(ignored.joined(separator: ","))],\"last_error\":\(q(s.lastError))}"
    }
}
