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
}

public final class ADSClient: @unchecked Sendable {
    public let settings: XDSSettings
    /// Translates and compiles the dynamic documents with the static file: nil when applied, else
    /// why not (the NACK's error_detail).
    let apply: @Sendable (_ listeners: [ListenerDocument], _ clusters: [ClusterDocument]) -> String?
    private let statsBox = Mutex(XDSStats())
    public var stats: XDSStats { statsBox.withLock { $0 } }

    // Owned by the stream task.
    private var resources = XDSResources()
    private var versions: [XDSType: String] = [:]
    private var nonces: [XDSType: String] = [:]
    private var subscribed: [XDSType: [String]] = [:]
    private let started = monotonicNanoseconds()
    private let stopped = Atomic<Bool>(false)

    public init(settings: XDSSettings, apply: @escaping @Sendable ([ListenerDocument], [ClusterDocument]) -> String?) {
        self.settings = settings
        self.apply = apply
    }

    public func start() {
        Task.detached { [self] in await self.run() }
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
        let target: any ResolvableTarget = settings.address.family == .inet ? .ipv4(host: host, port: port) : .ipv6(host: host, port: port)
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
        guard let type = XDSType(rawValue: response.typeURL) else {
            Log.warning("xds: ignoring a response of unknown type \(response.typeURL)")
            return
        }
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
        if verdict == nil {
            let timedOut = monotonicNanoseconds() - started > settings.initialFetchTimeoutNanoseconds
            do {
                let (listeners, clusters, warming) = try translate(candidate, includeWarming: false)
                if !warming.isEmpty { Log.info("xds: warming \(warming.joined(separator: ", "))\(timedOut ? " (past initial_fetch_timeout)" : "")") }
                verdict = apply(listeners, clusters)
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
        resources = candidate
        versions[type] = response.versionInfo
        nonces[type] = response.nonce
        statsBox.withLock { $0.accepted[short, default: 0] += 1; $0.versions[short] = response.versionInfo }
        Log.info("xds: ACK \(short) version \(response.versionInfo) (\(response.resources.count) resource(s))")
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
        return "{\"control_plane\":\(q(settings.address.description)),\"node\":\(q(settings.nodeID)),\"connected\":\(s.connected),"
            + "\"versions\":{\(versions)},\"last_error\":\(q(s.lastError))}"
    }
}
