// xDS resources to Weir's intermediate form: the same ListenerDocument and ClusterDocument a YAML
// file produces, so an update compiles into the same immutable snapshot. Each message is copied,
// the fields Weir reads are cleared, and anything left over refuses the resource, naming it and
// the field. Two kinds of field are cleared without being honoured, each one listed where it is
// cleared (`notes.ignore`), counted and shown in /config_dump: those that change neither where a
// request goes nor who may send it (access logs, tracing, statistics, labels), and filters that
// only observe (Filters.swift). Everything that could weaken policy is refused (docs/xds.md).
import SwiftProtobuf
import WeirConfig
import WeirCore
import WeirXDSProtos

public enum XDSType: String, CaseIterable, Sendable {
    case listener = "type.googleapis.com/envoy.config.listener.v3.Listener"
    case cluster = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    case endpoint = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    case route = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    case secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

    public var short: String {
        switch self {
        case .listener: return "LDS"
        case .cluster: return "CDS"
        case .endpoint: return "EDS"
        case .route: return "RDS"
        case .secret: return "SDS"
        }
    }
}

/// Why a resource was refused: names the resource and the field, for the NACK's error_detail.
public struct XDSError: Error, CustomStringConvertible, Sendable {
    public var resource: String
    public var message: String
    /// The resources whose combination failed, by type (a cluster and its load assignment, a
    /// listener and its route configuration): an update of one type refuses its own one.
    public var involved: [XDSType: String] = [:]
    public var description: String { "\(resource): \(message)" }
}

/// What a resource carries that Weir accepts without honouring (fields and skipped filters),
/// by type and resource name: logged once per type and field, counted, listed in /config_dump.
public final class Notes: @unchecked Sendable {
    public private(set) var ignored: [XDSType: [String: Set<String>]] = [:]
    var type: XDSType = .listener
    var name = ""
    public init() {}
    /// Notes from here on are about this resource.
    func about(_ t: XDSType, _ n: String) { type = t; name = n }
    func ignore(_ field: String) { ignored[type, default: [:]][field, default: []].insert(name) }
    func merge(_ other: Notes) {
        for (t, fields) in other.ignored { for (f, names) in fields { ignored[t, default: [:]][f, default: []].formUnion(names) } }
    }
}

public typealias EnvoyListener = Envoy_Config_Listener_V3_Listener
public typealias EnvoyCluster = Envoy_Config_Cluster_V3_Cluster
public typealias EnvoyLoadAssignment = Envoy_Config_Endpoint_V3_ClusterLoadAssignment
public typealias EnvoyRouteConfiguration = Envoy_Config_Route_V3_RouteConfiguration
typealias HCM = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpConnectionManager
typealias TCPProxy = Envoy_Extensions_Filters_Network_TcpProxy_V3_TcpProxy

/// What the control plane sent, by resource name.
public struct XDSResources: Sendable {
    public var listeners: [String: EnvoyListener] = [:]
    public var clusters: [String: EnvoyCluster] = [:]
    public var loadAssignments: [String: EnvoyLoadAssignment] = [:]
    public var routes: [String: EnvoyRouteConfiguration] = [:]
    public var secrets: [String: EnvoySecret] = [:]
    public init() {}

    /// SDS names the listeners' TLS chains and the clusters' TLS need.
    public var sdsNames: [String] { Set(sdsNames(socket: true) + sdsNames(socket: false)).sorted() }

    /// The secrets `sdsNames` holds that are asked for on pilot-agent's SDS socket (their
    /// sds_config names the sds-grpc cluster); a name asked for both ways is in both lists.
    public func sdsNames(socket: Bool) -> [String] {
        var sockets: [Envoy_Config_Core_V3_TransportSocket] = []
        for l in listeners.values {
            for chain in l.filterChains + (l.hasDefaultFilterChain ? [l.defaultFilterChain] : []) where chain.hasTransportSocket { sockets.append(chain.transportSocket) }
        }
        for c in clusters.values {
            if c.hasTransportSocket { sockets.append(c.transportSocket) }
            for m in c.transportSocketMatches where m.hasTransportSocket { sockets.append(m.transportSocket) }
        }
        var names = Set<String>()
        for s in sockets { for config in sdsConfigs(of: s) where viaSDSSocket(config) == socket { names.insert(config.name) } }
        return names.sorted()
    }

    /// EDS names the clusters need (their service name, or their own name).
    public var edsNames: [String] {
        clusters.values.filter { $0.type == .eds }.map { edsName($0) }.sorted()
    }

    /// RDS names the listeners need.
    public var rdsNames: [String] { Set(listeners.values.flatMap { rdsNames(of: $0) }).sorted() }

    /// The route specifiers of a listener's connection managers.
    func routeSpecifiers(of l: EnvoyListener) -> [HCM.OneOf_RouteSpecifier] {
        (l.filterChains + (l.hasDefaultFilterChain ? [l.defaultFilterChain] : [])).flatMap { chain in
            chain.filters.filter { $0.typedConfig.typeURL.hasSuffix(".HttpConnectionManager") }
                .compactMap { (try? HCM(unpackingAny: $0.typedConfig))?.routeSpecifier }
        }
    }

    /// RDS names one listener needs.
    func rdsNames(of l: EnvoyListener) -> [String] {
        routeSpecifiers(of: l).compactMap { if case .rds(let rds) = $0 { rds.routeConfigName } else { nil } }
    }

    /// Names of the route configurations a listener carries inline.
    func inlineRouteNames(of l: EnvoyListener) -> [String] {
        routeSpecifiers(of: l).compactMap { if case .routeConfig(let c) = $0 { c.name } else { nil } }
    }
}

func edsName(_ c: EnvoyCluster) -> String { c.edsClusterConfig.serviceName.isEmpty ? c.name : c.edsClusterConfig.serviceName }

func position(_ kind: String, _ name: String) -> SourcePosition { SourcePosition(file: "xds:\(kind)/\(name)", line: 1, column: 1) }
func located<T>(_ v: T, _ p: SourcePosition) -> Located<T> { Located(v, at: p) }

/// The fields of `message` left after the ones Weir reads were cleared, as JSON; nil when none.
func leftover<M: SwiftProtobuf.Message>(_ message: M) -> String? {
    if message.isEqualTo(message: M()) { return nil }
    return (try? message.jsonString()) ?? "\(message)"
}

/// A duration in nanoseconds, saturating (a control plane's absurd or negative value must reach
/// the compiler's range checks, never trap on overflow).
func seconds(_ d: Google_Protobuf_Duration) -> Int64 { nanoseconds(seconds: d.seconds, nanos: Int64(d.nanos)) }

func nanoseconds(seconds: Int64, nanos: Int64) -> Int64 {
    let (scaled, over) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
    if over { return seconds < 0 ? .min : .max }
    let (sum, over2) = scaled.addingReportingOverflow(nanos)
    return over2 ? (nanos < 0 ? .min : .max) : sum
}

/// What `translate` produced: the documents to compile, and the resources left warming (keys
/// "cluster NAME" and "listener NAME", with why). It also keeps its parts for the next
/// translation to reuse (see `translate`).
public struct Translation {
    public var listeners: [ListenerDocument] = []
    public var clusters: [ClusterDocument] = []
    public var warming: [(key: String, why: String)] = []
    /// Resources refused, each with the resources involved; left out of the documents.
    public var rejected: [XDSError] = []
    /// What the documents' resources carry that is accepted and ignored.
    public var notes = Notes()
    /// Keys in `activate` used while still incomplete (they stay activated until complete).
    public var activatedIncomplete = Set<String>()
    /// The cluster half: documents, warming clusters, activated incomplete clusters, and the
    /// names of the active ones.
    var clusterPart: (docs: [ClusterDocument], warming: [(key: String, why: String)], activated: Set<String>, active: Set<String>,
                      rejected: [XDSError], notes: Notes) = ([], [], [], [], [], Notes())
    /// The listener documents served, by name: a new version that warms leaves its previous
    /// one serving (as Envoy keeps a listener until its replacement is warm).
    var served: [String: (doc: ListenerDocument, uses: [String])] = [:]
    /// Each listener's translation (or refusal) and its notes, before readiness is decided.
    var listenerResults: [String: (result: Result<ListenerTranslation, XDSError>, notes: Notes)] = [:]
    /// Each cluster's document with the Cluster and assignment it came from: an update that
    /// leaves both equal reuses the document (EDS resends every assignment to change one).
    var clusterCache: [String: (cluster: EnvoyCluster, assignment: EnvoyLoadAssignment?, secrets: [String: EnvoySecret], incomplete: Bool,
                                doc: ClusterDocument, notes: Notes)] = [:]
}

/// Translates the resources that are complete (warm) into listener and cluster documents.
/// Clusters still waiting for their ClusterLoadAssignment, and listeners waiting for their routes
/// or for such clusters, are left out (warming) unless their key is in `activate` (warming past
/// initial_fetch_timeout): such a cluster has no endpoints yet (503) and such a listener no routes
/// yet (404), as in Envoy.
///
/// `previous` (the translation of the resources as they were before this update, with the same
/// `activate`) lets an update reuse what it cannot have changed: an RDS or LDS update the cluster
/// half (clusters depend on CDS and EDS only), an EDS update each listener's translation
/// (listeners depend on LDS, RDS and the cluster names, which EDS does not change).
public func translate(_ r: XDSResources, activate: Set<String> = [], previous: Translation? = nil,
                      reuseClusters: Bool = false, reuseListeners: Bool = false) throws -> Translation {
    let t = translateEach(r, activate: activate, previous: previous, reuseClusters: reuseClusters, reuseListeners: reuseListeners)
    if let e = t.rejected.first { throw e }
    return t
}

/// `translate`, resource by resource: a resource that cannot be translated is left out and
/// listed in `rejected` (the caller decides what stands in for it). `refused` names clusters the
/// control plane sent that were refused: a route to one answers 503 under validate_clusters
/// false, and otherwise refuses its resource with a message that says the cluster was refused.
public func translateEach(_ r: XDSResources, activate: Set<String> = [], previous: Translation? = nil,
                          reuseClusters: Bool = false, reuseListeners: Bool = false, refused: Set<String> = []) -> Translation {
    var out = Translation()
    if reuseClusters, let p = previous {
        out.clusterPart = p.clusterPart
        out.clusterCache = p.clusterCache
    } else {
        for name in r.clusters.keys.sorted() {
            let c = r.clusters[name]!
            if c.type == .eds && r.loadAssignments[edsName(c)] == nil {
                // Its own fields are checked now (a bad one is refused with the cluster, not
                // later with its endpoints).
                do { _ = try translateCluster(c, nil) } catch {
                    var e = error as? XDSError ?? XDSError(resource: "cluster '\(name)'", message: "\(error)")
                    e.involved = [.cluster: name]
                    out.clusterPart.rejected.append(e)
                    continue
                }
                guard activate.contains("cluster \(name)") else {
                    out.clusterPart.warming.append(("cluster \(name)", "endpoints \(edsName(c))"))
                    continue
                }
                out.clusterPart.activated.insert("cluster \(name)")
            }
            let cla = r.loadAssignments[edsName(c)]
            let key = "cluster \(name)"
            // The secrets its TLS uses, as held now: a new version of one is a new translation.
            var used: [String: EnvoySecret] = [:]
            for n in clusterSDSNames(c) { used[n] = r.secrets[n] }
            let doc: ClusterDocument
            let notes: Notes
            if let hit = previous?.clusterCache[name], hit.cluster.isEqualTo(message: c),
               (hit.assignment == nil && cla == nil) || (hit.assignment.map { a in cla.map { a.isEqualTo(message: $0) } ?? false } ?? false),
               hit.secrets.count == used.count, hit.secrets.allSatisfy({ k, v in used[k].map { v.isEqualTo(message: $0) } ?? false }),
               !hit.incomplete || activate.contains(key) {
                doc = hit.doc
                notes = hit.notes
                if hit.incomplete { out.clusterPart.activated.insert(key) }
            } else {
                notes = Notes()
                var incomplete = false
                do { doc = try translateCluster(c, cla, secrets: used, activated: activate.contains(key), incomplete: &incomplete, notes: notes) } catch {
                    if let w = error as? WaitingForSecret {
                        out.clusterPart.warming.append((key, "secret \(w.name)"))
                        // A version already serving keeps serving while the new one warms (as
                        // Envoy keeps a cluster until its replacement is warm).
                        if let hit = previous?.clusterCache[name], !hit.incomplete {
                            out.clusterCache[name] = hit
                            out.clusterPart.docs.append(hit.doc)
                            out.clusterPart.notes.merge(hit.notes)
                            out.clusterPart.active.insert(name)
                        }
                        continue
                    }
                    var e = error as? XDSError ?? XDSError(resource: "cluster '\(name)'", message: "\(error)")
                    e.involved[.cluster] = name
                    if cla != nil { e.involved[.endpoint] = edsName(c) }
                    out.clusterPart.rejected.append(e)
                    continue
                }
                if incomplete { out.clusterPart.activated.insert(key) }
                out.clusterCache[name] = (c, cla, used, incomplete, doc, notes)
            }
            if out.clusterCache[name] == nil, let hit = previous?.clusterCache[name] { out.clusterCache[name] = hit }
            out.clusterPart.docs.append(doc)
            out.clusterPart.notes.merge(notes)
            out.clusterPart.active.insert(name)
        }
    }
    out.clusters = out.clusterPart.docs
    out.warming = out.clusterPart.warming
    out.activatedIncomplete = out.clusterPart.activated
    out.rejected = out.clusterPart.rejected
    out.notes.merge(out.clusterPart.notes)
    let active = out.clusterPart.active
    let known = Set(r.clusters.keys)
    for name in r.listeners.keys.sorted() {
        let l = r.listeners[name]!
        let key = "listener \(name)"
        let cached: (result: Result<ListenerTranslation, XDSError>, notes: Notes)
        if reuseListeners, let hit = previous?.listenerResults[name] { cached = hit } else {
            let notes = Notes()
            do { cached = (.success(try translateListener(l, routes: r.routes, secrets: r.secrets, knownClusters: known, refusedClusters: refused, notes: notes)), notes) } catch {
                var e = error as? XDSError ?? XDSError(resource: "listener '\(name)'", message: "\(error)")
                e.involved[.listener] = name
                cached = (.failure(e), notes)
            }
        }
        out.listenerResults[name] = cached
        let result: ListenerTranslation
        switch cached.result {
        case .failure(let e): out.rejected.append(e); continue
        case .success(let t): result = t
        }
        out.notes.merge(cached.notes)
        /// Warming: its previous version (if any) keeps serving meanwhile.
        func warm(_ why: String) {
            out.warming.append((key, why))
            // Only while every cluster it uses is still there (else it would not compile).
            if let old = previous?.served[name], old.uses.allSatisfy(active.contains) { out.listeners.append(old.doc); out.served[name] = old }
        }
        switch result {
        case .ready(let doc, let uses):
            if let missing = uses.first(where: { !active.contains($0) }) {
                guard activate.contains(key) else {
                    warm("cluster \(missing) warming")
                    continue
                }
                out.activatedIncomplete.insert(key)
            }
            out.listeners.append(doc)
            out.served[name] = (doc, uses)
        case .waiting(let what, var doc, let uses):
            // Warming for its routes, or for a cluster another chain uses.
            if activate.contains(key) {
                doc.mayHaveNoRoutes = true
                out.listeners.append(doc)
                out.served[name] = (doc, uses)
                out.activatedIncomplete.insert(key)
            } else {
                let cluster = uses.first(where: { !active.contains($0) }).map { ", cluster \($0) warming" } ?? ""
                warm("\(what)\(cluster)")
            }
        }
    }
    return out
}

enum ListenerTranslation {
    case ready(ListenerDocument, uses: [String])
    /// The listener as it would be without routes, for activation after initial_fetch_timeout.
    /// What it waits for ("routes NAME", "secret NAME"), and the listener as it would be
    /// without it (no routes: 404; a chain without its certificate: closed), for activation
    /// after initial_fetch_timeout.
    case waiting(String, ListenerDocument, uses: [String])
}

func translateListener(_ l: EnvoyListener, routes: [String: EnvoyRouteConfiguration], secrets: [String: EnvoySecret] = [:], knownClusters: Set<String>,
                       refusedClusters: Set<String> = [], notes: Notes = Notes()) throws -> ListenerTranslation {
    let what = "listener '\(l.name)'"
    func fail(_ m: String) -> XDSError { XDSError(resource: what, message: m, involved: [.listener: l.name]) }
    notes.about(.listener, l.name)
    let p = position("listener", l.name)
    var doc = ListenerDocument(position: p)
    doc.name = located(l.name, p)
    guard l.hasAddress, case .socketAddress(let sa)? = l.address.address else { throw fail("address: only socket_address is supported") }
    var saRest = sa
    saRest.address = ""
    saRest.portSpecifier = nil
    if let extra = leftover(saRest) { throw fail("address.socket_address: unsupported field(s) \(extra)") }
    guard case .portValue(let port)? = sa.portSpecifier, port > 0 else { throw fail("address.socket_address.port_value is required") }
    let host = sa.address.contains(":") ? "[\(sa.address)]" : sa.address
    doc.address = located("\(host):\(port)", p)
    var rest = l
    rest.name = ""
    rest.clearAddress()
    rest.filterChains = []
    rest.clearDefaultFilterChain()
    rest.statPrefix = ""
    rest.clearMetadata()
    rest.trafficDirection = .unspecified
    rest.clearBindToPort()
    rest.clearUseOriginalDst()
    rest.listenerFilters = []
    rest.clearListenerFiltersTimeout()
    rest.continueOnListenerFiltersTimeout = false
    // Older Istio (1.9) says bind_to_port inside deprecated_v1; it means the same.
    var bindToPort: Bool? = l.hasBindToPort ? l.bindToPort.value : nil
    if l.hasDeprecatedV1 {
        var dRest = l.deprecatedV1
        dRest.clearBindToPort()
        if let extra = leftover(dRest) { throw fail("deprecated_v1: unsupported field(s) \(extra)") }
        if l.deprecatedV1.hasBindToPort { bindToPort = bindToPort ?? l.deprecatedV1.bindToPort.value }
        rest.clearDeprecatedV1()
    }
    if !l.accessLog.isEmpty { notes.ignore("access_log"); rest.accessLog = [] }
    if let extra = leftover(rest) { throw fail("unsupported field(s) \(extra)") }
    if let bindToPort { doc.bindToPort = located(bindToPort, p) }
    if l.hasUseOriginalDst { doc.useOriginalDestination = located(l.useOriginalDst.value, p) }
    let flat = l.filterChains.count == 1 && !l.filterChains[0].hasFilterChainMatch && !l.hasDefaultFilterChain
        && !l.filterChains[0].hasTransportSocket && l.listenerFilters.isEmpty
    if flat {
        let (uses, waiting) = try translateChain(l.filterChains[0], label: "filter_chains[0]", into: &doc, listener: l.name, routes: routes,
                                                 knownClusters: knownClusters, refusedClusters: refusedClusters, notes: notes, fail: fail)
        if let waiting { return .waiting("routes \(waiting)", doc, uses: uses) }
        return .ready(doc, uses: uses)
    }
    guard !l.filterChains.isEmpty || l.hasDefaultFilterChain else { throw fail("filter_chains: a listener needs at least one filter chain") }
    try translateListenerFilters(l, into: &doc, notes: notes, fail: fail)
    var uses: [String] = [], waiting: String? = nil, names = Set<String>()
    let all = l.filterChains.enumerated().map { (label: "filter_chains[\($0.offset)]", chain: $0.element, isDefault: false) }
        + (l.hasDefaultFilterChain ? [(label: "default_filter_chain", chain: l.defaultFilterChain, isDefault: true)] : [])
    for (label, fc, isDefault) in all {
        var chain = ChainDocument(position: p, body: ListenerDocument(position: p))
        // Names need not be unique in xDS (Istio sends two "virtualInbound" chains): the label tells them apart.
        var name = fc.name.isEmpty ? (isDefault ? "default" : label) : fc.name
        if !names.insert(name).inserted { name += " (\(label))"; names.insert(name) }
        chain.name = located(name, p)
        if !isDefault {
            chain.match = try translateChainMatch(fc.filterChainMatch, label: label, p, fail: fail)
        } else if fc.hasFilterChainMatch, leftover(fc.filterChainMatch) != nil {
            throw fail("default_filter_chain: a filter_chain_match means nothing on the default chain")
        }
        var plaintext = !fc.hasTransportSocket
        if fc.hasTransportSocket {
            let t = fc.transportSocket.typedConfig.typeURL
            plaintext = t.hasSuffix("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer") || (t.isEmpty && fc.transportSocket.name == "envoy.transport_sockets.raw_buffer")
        }
        var socketless = fc
        socketless.clearTransportSocket()
        let (u, w) = try translateChain(socketless, label: label, into: &chain.body, listener: l.name, routes: routes, knownClusters: knownClusters,
                                        refusedClusters: refusedClusters, notes: notes, fail: fail)
        uses += u
        if let w { waiting = waiting ?? "routes \(w)"; chain.body.mayHaveNoRoutes = true }
        if !plaintext {
            switch try translateDownstreamTLS(fc.transportSocket, label: label, secrets: secrets, p, notes: notes, fail: fail) {
            case .ready(let tls):
                chain.body.tls = tls
            case .waiting(let secret):
                // Until its certificate arrives the chain closes what it gets (never plaintext).
                chain.refused = "\(label): secret '\(secret)' has not arrived"
                waiting = waiting ?? "secret \(secret)"
            }
        }
        doc.chains.append(chain)
    }
    notes.about(.listener, l.name)
    if let waiting { return .waiting(waiting, doc, uses: uses) }
    return .ready(doc, uses: uses)
}

/// listener_filters: the TLS and HTTP inspectors (each may be disabled for destination port
/// ranges, as Istio does for declared server-first ports) and original_dst (chains match a
/// redirected connection by where it was going, not by the listener's address).
func translateListenerFilters(_ l: EnvoyListener, into doc: inout ListenerDocument, notes: Notes, fail: (String) -> XDSError) throws {
    let p = doc.position
    var inspectors: [Located<String>] = []
    for (i, f) in l.listenerFilters.enumerated() {
        guard case .typedConfig(let any)? = f.configType else { throw fail("listener_filters[\(i)] '\(f.name)': only typed_config is supported (not config_discovery)") }
        let type = filterType(any)
        let t = type.name
        if !type.empty { notes.ignore("listener filter \(t) settings (fingerprinting and buffer sizes change no routing)") }
        var off: [ClosedRange<Int>] = []
        if f.hasFilterDisabled { off = try portRanges(f.filterDisabled, "listener_filters[\(i)].filter_disabled", fail) }
        switch t {
        case "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector":
            inspectors.append(located("tls", p)); doc.tlsInspectorOffPorts = off
        case "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector":
            inspectors.append(located("http", p)); doc.httpInspectorOffPorts = off
        case "envoy.extensions.filters.listener.original_dst.v3.OriginalDst":
            if !off.isEmpty { throw fail("listener_filters[\(i)] original_dst: filter_disabled is not supported on it") }
            inspectors.append(located("original_dst", p))
        case "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol":
            throw fail("listener_filters[\(i)] proxy_protocol: refused: Weir does not read the PROXY protocol yet")
        default:
            throw fail("listener_filters[\(i)] '\(f.name)' (\(t)): refused: Weir does not implement it")
        }
    }
    doc.inspectors = inspectors
    // Envoy's default is 15s; 0s means no limit.
    doc.inspectTimeout = located(l.hasListenerFiltersTimeout ? seconds(l.listenerFiltersTimeout) : 15_000_000_000, p)
    doc.continueOnInspectTimeout = located(l.continueOnListenerFiltersTimeout, p)
}

/// The destination port ranges of a filter_disabled predicate: one range, or an or_match of them.
func portRanges(_ m: Envoy_Config_Listener_V3_ListenerFilterChainMatchPredicate, _ at: String, _ fail: (String) -> XDSError) throws -> [ClosedRange<Int>] {
    switch m.rule {
    case .destinationPortRange(let r)?:
        // Int32Range is [start, end).
        guard r.start >= 0, r.end > r.start, r.end <= 65536 else { throw fail("\(at): destination_port_range [\(r.start), \(r.end)) is not a port range") }
        return [Int(r.start)...Int(r.end - 1)]
    case .orMatch(let set)?:
        return try set.rules.flatMap { try portRanges($0, at, fail) }
    default:
        throw fail("\(at): only destination_port_range (or an or_match of them) is supported")
    }
}

func translateChainMatch(_ m: Envoy_Config_Listener_V3_FilterChainMatch, label: String, _ p: SourcePosition, fail: (String) -> XDSError) throws -> ChainMatchDocument {
    var d = ChainMatchDocument(position: p)
    var rest = m
    rest.clearDestinationPort()
    rest.prefixRanges = []
    rest.sourcePrefixRanges = []
    rest.sourcePorts = []
    rest.serverNames = []
    rest.transportProtocol = ""
    rest.applicationProtocols = []
    // Left set, and so refused: address_suffix, suffix_len, direct_source_prefix_ranges and a
    // source_type other than ANY (Weir does not evaluate them).
    if let extra = leftover(rest) { throw fail("\(label).filter_chain_match: unsupported field(s) \(extra) (Weir cannot evaluate them)") }
    func cidr(_ c: Envoy_Config_Core_V3_CidrRange) -> Located<String> {
        // An unset prefix_len is 0 (Envoy's default): the range holds every address of its family.
        located("\(c.addressPrefix)/\(c.hasPrefixLen ? Int(c.prefixLen.value) : 0)", p)
    }
    if m.hasDestinationPort { d.destinationPort = located(Int(m.destinationPort.value), p) }
    d.destinationPrefixes = m.prefixRanges.map(cidr)
    d.sourcePrefixes = m.sourcePrefixRanges.map(cidr)
    d.sourcePorts = m.sourcePorts.map { located(Int($0), p) }
    d.serverNames = m.serverNames.map { located($0, p) }
    if !m.transportProtocol.isEmpty { d.transportProtocol = located(m.transportProtocol, p) }
    d.applicationProtocols = m.applicationProtocols.map { located($0, p) }
    return d
}

/// One filter chain's network filters into the listener (or chain) document `doc`: what it
/// uses, and the RDS name it still waits for.
func translateChain(_ chain: Envoy_Config_Listener_V3_FilterChain, label: String, into doc: inout ListenerDocument, listener lname: String,
                    routes: [String: EnvoyRouteConfiguration], knownClusters: Set<String>, refusedClusters: Set<String>, notes: Notes,
                    fail: (String) -> XDSError) throws -> (uses: [String], waiting: String?) {
    func unknown(_ c: String) -> String { unknownCluster(c, refusedClusters) }
    let p = doc.position
    var chainRest = chain
    chainRest.filters = []
    chainRest.name = ""
    chainRest.clearFilterChainMatch()
    chainRest.clearMetadata()
    if let extra = leftover(chainRest) { throw fail("\(label): unsupported field(s) \(extra)") }
    guard let filter = chain.filters.last else { throw fail("\(label).filters: needs http_connection_manager or tcp_proxy last") }
    // Filters before the last one: only those Weir knowingly skips (Filters.swift).
    for (i, f) in chain.filters.dropLast().enumerated() {
        let t = filterType(f.typedConfig)
        switch networkFilterVerdict(t) {
        case .skip: notes.ignore("network filter \(t.name)")
        case .refuse(let why): throw fail("\(label).filters[\(i)] '\(f.name)' (\(t.name)): refused: \(why)")
        }
    }
    if filter.typedConfig.typeURL.hasSuffix("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy") {
        let tcp: TCPProxy
        do { tcp = try TCPProxy(unpackingAny: filter.typedConfig) } catch { throw fail("tcp_proxy: cannot decode: \(error)") }
        var tcpRest = tcp
        tcpRest.statPrefix = ""
        tcpRest.clusterSpecifier = nil
        tcpRest.clearIdleTimeout()
        if !tcp.accessLog.isEmpty { notes.ignore("tcp_proxy.access_log"); tcpRest.accessLog = [] }
        if let extra = leftover(tcpRest) { throw fail("tcp_proxy: unsupported field(s) \(extra)") }
        doc.proto = located("tcp", p)
        if tcp.hasIdleTimeout { doc.idleTimeout = located(seconds(tcp.idleTimeout), p) }
        switch tcp.clusterSpecifier {
        case .cluster(let cluster)?:
            guard knownClusters.contains(cluster) else { throw fail("tcp_proxy.cluster '\(cluster)' \(unknown(cluster))") }
            doc.cluster = located(cluster, p)
            return ([cluster], nil)
        case .weightedClusters(let w)?:
            var uses: [String] = []
            doc.weightedClustersPosition = p
            doc.weightedClusters = try w.clusters.map { cw in
                guard knownClusters.contains(cw.name) else { throw fail("tcp_proxy.weighted_clusters: '\(cw.name)' \(unknown(cw.name))") }
                guard !cw.hasMetadataMatch else { throw fail("tcp_proxy.weighted_clusters: metadata_match is not supported") }
                uses.append(cw.name)
                var wd = WeightedClusterDocument(position: p)
                wd.cluster = located(cw.name, p)
                wd.weight = located(Int(cw.weight), p)
                return wd
            }
            return (uses, nil)
        default:
            throw fail("tcp_proxy: needs cluster or weighted_clusters")
        }
    }
    guard filter.typedConfig.typeURL.hasSuffix("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager") else {
        throw fail("filter '\(filter.name)' (\(filter.typedConfig.typeURL)) is not supported; use http_connection_manager or tcp_proxy")
    }
    let hcm: HCM
    do { hcm = try HCM(unpackingAny: filter.typedConfig) } catch { throw fail("http_connection_manager: cannot decode: \(error)") }
    // The router last; before it only filters Weir knowingly skips, and any refused one named
    // (every one is checked, so a refused filter is named even behind another refusal).
    func isRouter(_ f: Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpFilter) -> Bool {
        f.typedConfig.typeURL.hasSuffix("envoy.extensions.filters.http.router.v3.Router") || (f.name == "envoy.filters.http.router" && f.typedConfig.typeURL.isEmpty)
    }
    // No filters at all: the router alone (what Weir always had).
    if let last = hcm.httpFilters.last, !isRouter(last) { throw fail("http_connection_manager.http_filters: the router must be the last filter") }
    var refusals: [String] = []
    for (i, f) in hcm.httpFilters.dropLast().enumerated() {
        let t = filterType(f.typedConfig)
        switch httpFilterVerdict(t) {
        case .skip: notes.ignore("http filter \(t.name)")
        case .refuse(let why): refusals.append("http_filters[\(i)] '\(f.name)' (\(t.name)): refused: \(why)")
        }
    }
    if !refusals.isEmpty { throw fail("http_connection_manager." + refusals.joined(separator: "; ")) }
    var hcmRest = hcm
    hcmRest.statPrefix = ""
    // HTTP/2 from clients, as Envoy's codec: AUTO (h2 by ALPN or its preface) and HTTP2 both
    // speak it, HTTP1 does not; HTTP/3 is not offered.
    var http2Settings: [String: String] = [:]
    switch hcm.codecType {
    case .http1: http2Settings["http2"] = "false"
    case .http3: throw fail("http_connection_manager.codec_type HTTP3 is not supported")
    default: break
    }
    hcmRest.codecType = .auto
    if hcm.hasHTTP2ProtocolOptions {
        let o = hcm.http2ProtocolOptions
        if o.hasMaxConcurrentStreams { http2Settings["http2_max_concurrent_streams"] = String(min(10_000, max(1, o.maxConcurrentStreams.value))) }
        if o.hasInitialStreamWindowSize { http2Settings["http2_stream_window_bytes"] = String(min(1 << 30, max(1024, o.initialStreamWindowSize.value))) }
        if o.hasInitialConnectionWindowSize { http2Settings["http2_connection_window_bytes"] = String(min(1 << 30, max(65535, o.initialConnectionWindowSize.value))) }
        var rest = o
        rest.clearMaxConcurrentStreams(); rest.clearInitialStreamWindowSize(); rest.clearInitialConnectionWindowSize()
        if rest != Envoy_Config_Core_V3_Http2ProtocolOptions() { notes.ignore("http_connection_manager.http2_protocol_options (other than max_concurrent_streams and the initial windows)") }
        hcmRest.clearHTTP2ProtocolOptions()
    }
    hcmRest.httpFilters = []
    hcmRest.routeSpecifier = nil
    if case .stripAnyHostPort? = hcm.stripPortMode { hcmRest.stripPortMode = nil }
    // Accepted and ignored: they change neither where a request goes nor who may send it.
    if !hcm.accessLog.isEmpty { notes.ignore("http_connection_manager.access_log"); hcmRest.accessLog = [] }
    if hcm.hasTracing { notes.ignore("http_connection_manager.tracing"); hcmRest.clearTracing() }
    if hcm.hasRequestIDExtension { notes.ignore("http_connection_manager.request_id_extension"); hcmRest.clearRequestIDExtension() }
    if !hcm.serverName.isEmpty { notes.ignore("http_connection_manager.server_name"); hcmRest.serverName = "" }
    if hcm.hasStreamIdleTimeout { notes.ignore("http_connection_manager.stream_idle_timeout"); hcmRest.clearStreamIdleTimeout() }
    if hcm.hasUseRemoteAddress { notes.ignore("http_connection_manager.use_remote_address"); hcmRest.clearUseRemoteAddress() }
    if hcm.xffNumTrustedHops != 0 { notes.ignore("http_connection_manager.xff_num_trusted_hops"); hcmRest.xffNumTrustedHops = 0 }
    if hcm.hasGenerateRequestID { notes.ignore("http_connection_manager.generate_request_id"); hcmRest.clearGenerateRequestID() }
    // What Weir does: escaped slashes stay as they are; an explicit false is the default.
    if hcm.pathWithEscapedSlashesAction == .keepUnchanged { hcmRest.pathWithEscapedSlashesAction = .implementationSpecificDefault }
    let normalizePath = hcm.hasNormalizePath && hcm.normalizePath.value
    hcmRest.clearNormalizePath()
    // Weir passes an Upgrade through (a websocket is a tunnel after the 101); other upgrade
    // types and per-upgrade filters are refused.
    for u in hcm.upgradeConfigs {
        guard u.upgradeType.lowercased() == "websocket", u.filters.isEmpty, !u.hasEnabled || u.enabled.value else {
            throw fail("http_connection_manager.upgrade_configs: only websocket (enabled, with no filters) is supported, not '\(u.upgradeType)'")
        }
    }
    hcmRest.upgradeConfigs = []
    // X-Forwarded-Client-Cert, as Envoy: the client's is forwarded only from an mTLS peer
    // (except ALWAYS_FORWARD_ONLY), and APPEND_FORWARD and SANITIZE_SET add the verified peer's
    // details (By, Hash, and Subject, URI, DNS as set_current_client_cert_details asks).
    var xfccMode: String
    switch hcm.forwardClientCertDetails {
    case .sanitize: xfccMode = "sanitize"
    case .forwardOnly: xfccMode = "forward_only"
    case .appendForward: xfccMode = "append_forward"
    case .sanitizeSet: xfccMode = "sanitize_set"
    case .alwaysForwardOnly: xfccMode = "always_forward_only"
    default: throw fail("http_connection_manager.forward_client_cert_details \(hcm.forwardClientCertDetails) is not supported")
    }
    hcmRest.forwardClientCertDetails = .sanitize
    var xfccDetails: [String] = []
    if hcm.hasSetCurrentClientCertDetails {
        let d = hcm.setCurrentClientCertDetails
        if d.hasSubject && d.subject.value { xfccDetails.append("subject") }
        if d.uri { xfccDetails.append("uri") }
        if d.dns { xfccDetails.append("dns") }
        if d.cert || d.chain { notes.ignore("http_connection_manager.set_current_client_cert_details cert and chain (the PEM is not forwarded)") }
        hcmRest.clearSetCurrentClientCertDetails()
        if xfccMode != "append_forward" && xfccMode != "sanitize_set" { xfccDetails = [] }
    }
    if let extra = leftover(hcmRest) { throw fail("http_connection_manager: unsupported field(s) \(extra)") }
    doc.proto = located("http", p)
    // Envoy matches virtual host domains against the Host with its port unless told to strip it.
    doc.http = ["strip_host_port": located(hcm.stripAnyHostPort ? "true" : "false", p)]
    if normalizePath { doc.http?["normalize_path"] = located("true", p) }
    for (k, v) in http2Settings { doc.http?[k] = located(v, p) }
    doc.httpPosition = p
    let config: EnvoyRouteConfiguration
    switch hcm.routeSpecifier {
    case .rds(let rds)?:
        guard let c = routes[rds.routeConfigName] else {
            doc.routesPosition = p
            return ([], rds.routeConfigName)
        }
        config = c
    case .routeConfig(let inline)?:
        config = inline
    default:
        throw fail("http_connection_manager: needs rds or route_config")
    }
    let translated: (docs: [RouteDocument], uses: [String], stripPort: Bool)
    do {
        translated = try translateRoutes(config, listener: lname, knownClusters: knownClusters, refusedClusters: refusedClusters, notes: notes)
    } catch var e as XDSError {
        e.involved[.listener] = lname
        if case .rds? = hcm.routeSpecifier { e.involved[.route] = config.name }
        throw e
    }
    notes.about(.listener, lname)
    if translated.stripPort { doc.http?["strip_host_port"] = located("true", p) }
    doc.routes = translated.docs
    doc.http = (doc.http ?? [:]).merging(["forward_client_cert": located(xfccMode, p)]) { $1 }
    if !xfccDetails.isEmpty { doc.http?["client_cert_details"] = located(xfccDetails.joined(separator: ","), p) }
    doc.routesPosition = p
    return (translated.uses, nil)
}

/// Why a cluster a listener or route names is not there.
func unknownCluster(_ c: String, _ refused: Set<String>) -> String {
    refused.contains(c) ? "was refused (see its NACK)" : "is not a known cluster"
}

/// A route configuration's routes, the clusters they use, and whether the Host's port is ignored
/// when matching domains (ignore_port_in_host_matching).
func translateRoutes(_ config: EnvoyRouteConfiguration, listener: String, knownClusters: Set<String>,
                     refusedClusters: Set<String> = [], notes: Notes = Notes()) throws -> (docs: [RouteDocument], uses: [String], stripPort: Bool) {
    func unknown(_ c: String) -> String { unknownCluster(c, refusedClusters) }
    let what = "route_configuration '\(config.name)'"
    func fail(_ m: String) -> XDSError { XDSError(resource: what, message: m, involved: [.route: config.name]) }
    notes.about(.route, config.name)
    var configRest = config
    configRest.name = ""
    configRest.virtualHosts = []
    // validate_clusters false: a route to a cluster Weir does not hold answers 503 (no cluster)
    // when asked, as in Envoy; unset, such a route refuses the configuration.
    let lenient = config.hasValidateClusters && !config.validateClusters.value
    configRest.clearValidateClusters()
    configRest.ignorePortInHostMatching = false
    // A bound on direct_response bodies, which come inline here; checked below.
    configRest.clearMaxDirectResponseBodySizeBytes()
    if let extra = leftover(configRest) { throw fail("unsupported field(s) \(extra)") }
    let maxDirect = config.hasMaxDirectResponseBodySizeBytes ? Int(config.maxDirectResponseBodySizeBytes.value) : 4096
    let p = position("route", config.name)
    var out: [RouteDocument] = []
    var uses: [String] = []
    // Each virtual host's routes, without their host match (added below, in Envoy's order).
    var routesOf: [[RouteDocument]] = Array(repeating: [], count: config.virtualHosts.count)
    for (vi, vh) in config.virtualHosts.enumerated() {
        var vhRest = vh
        vhRest.name = ""
        vhRest.domains = []
        vhRest.routes = []
        // A request header telling the upstream which attempt this is; information only.
        if vh.includeRequestAttemptCount { notes.ignore("virtual_host.include_request_attempt_count"); vhRest.includeRequestAttemptCount = false }
        if let extra = leftover(vhRest) { throw fail("virtual_host '\(vh.name)': unsupported field(s) \(extra)") }
        if vh.domains.isEmpty { throw fail("virtual_host '\(vh.name)': needs domains") }
        // Weir matches "*.suffix", "prefix*" and "*"; Envoy's other shapes ("*-bar.com",
        // "*.a.com:*") are refused by name rather than matched differently.
        for d in vh.domains where d != "*" && (d.dropFirst().dropLast().contains("*") || (d.hasPrefix("*") && !d.hasPrefix("*.")) || (d.hasPrefix("*") && d.hasSuffix("*"))) {
            throw fail("virtual_host '\(vh.name)': domain '\(d)': wildcards are supported as *.suffix, prefix* or * alone")
        }
        for (i, route) in vh.routes.enumerated() {
            let at = "virtual_host '\(vh.name)' route \(i)"
            var d = RouteDocument(position: p)
            let m = route.match
            switch m.pathSpecifier {
            case .prefix(let prefix)?: if prefix != "/" && !prefix.isEmpty { d.match["path_prefix"] = located(prefix, p) }
            case .path(let path)?: d.match["path_exact"] = located(path, p)
            case .safeRegex(let r)?:
                // The engine is Weir's own (RE2's common subset, compiled to a DFA); google_re2's
                // program size limit has no meaning there, and Weir's own limits apply.
                var rest = r
                rest.regex = ""
                rest.engineType = nil
                if let extra = leftover(rest) { throw fail("\(at): match.safe_regex: unsupported field(s) \(extra)") }
                d.match["path_regex"] = located(r.regex, p)
            case nil: break
            default: throw fail("\(at): match supports prefix, path and safe_regex (path_separated_prefix and path_match_policy are not supported)")
            }
            for h in m.headers {
                var hd = HeaderDocument(position: p)
                hd.name = located(h.name, p)
                func regex(_ r: Envoy_Type_Matcher_V3_RegexMatcher) throws -> String {
                    var rest = r
                    rest.regex = ""; rest.engineType = nil
                    if let extra = leftover(rest) { throw fail("\(at): header '\(h.name)': safe_regex: unsupported field(s) \(extra)") }
                    return r.regex
                }
                switch h.headerMatchSpecifier {
                case .exactMatch(let v)?: hd.value = located(v, p)
                case .prefixMatch(let v)?: hd.prefix = located(v, p)
                case .suffixMatch(let v)?: hd.suffix = located(v, p)
                case .containsMatch(let v)?: hd.contains = located(v, p)
                case .safeRegexMatch(let r)?: hd.regex = located(try regex(r), p)
                case .presentMatch(let v)?: hd.present = located(v ? "true" : "false", p)
                case nil: hd.present = located("true", p)
                case .stringMatch(let sm)?:
                    switch sm.matchPattern {
                    case .exact(let v)?: hd.value = located(v, p)
                    case .prefix(let v)?: hd.prefix = located(v, p)
                    case .suffix(let v)?: hd.suffix = located(v, p)
                    case .contains(let v)?: hd.contains = located(v, p)
                    case .safeRegex(let r)?:
                        if sm.ignoreCase { throw fail("\(at): header '\(h.name)': ignore_case with safe_regex is not supported") }
                        hd.regex = located(try regex(r), p)
                    default: throw fail("\(at): header '\(h.name)': string_match needs exact, prefix, suffix, contains or safe_regex")
                    }
                    if sm.ignoreCase { hd.ignoreCase = located("true", p) }
                case .rangeMatch?: throw fail("\(at): header '\(h.name)': range_match is not supported")
                }
                if h.invertMatch { hd.invert = located("true", p) }
                if h.treatMissingHeaderAsEmpty { throw fail("\(at): header '\(h.name)': treat_missing_header_as_empty is not supported") }
                d.matchHeaders.append(hd)
            }
            var mRest = m
            mRest.pathSpecifier = nil
            mRest.headers = []
            if let extra = leftover(mRest) { throw fail("\(at): match: unsupported field(s) \(extra)") }
            switch route.action {
            case .route(let a)?:
                switch a.clusterSpecifier {
                case .cluster(let c)? where !knownClusters.contains(c) && lenient:
                    d.directResponse = ["status": located("503", p), "body": located(refusedClusters.contains(c) ? "cluster \(c) refused\n" : "no cluster \(c)\n", p)]
                    d.directResponsePosition = p
                case .cluster(let c)?:
                    guard knownClusters.contains(c) else { throw fail("\(at): cluster '\(c)' \(unknown(c))") }
                    d.cluster = located(c, p)
                    uses.append(c)
                case .weightedClusters(let w)?:
                    d.weightedClustersPosition = p
                    d.weightedClusters = try w.clusters.map { cw in
                        guard knownClusters.contains(cw.name) else { throw fail("\(at): weighted cluster '\(cw.name)' \(unknown(cw.name))") }
                        uses.append(cw.name)
                        var wd = WeightedClusterDocument(position: p)
                        wd.cluster = located(cw.name, p)
                        wd.weight = located(Int(cw.weight.value), p)
                        return wd
                    }
                default: throw fail("\(at): route action needs cluster or weighted_clusters")
                }
                if a.hasTimeout { d.timeout = located(seconds(a.timeout), p) }
                if a.hasIdleTimeout { d.idleTimeout = located(seconds(a.idleTimeout), p) }
                if !a.prefixRewrite.isEmpty { d.prefixRewrite = located(a.prefixRewrite, p) }
                if case .hostRewriteLiteral(let h)? = a.hostRewriteSpecifier { d.hostRewrite = located(h, p) }
                if let h = a.hashPolicy.first {
                    guard a.hashPolicy.count == 1 else { throw fail("\(at): hash_policy: one policy is supported, not \(a.hashPolicy.count)") }
                    switch h.policySpecifier {
                    case .header(let hh)?:
                        guard !hh.hasRegexRewrite else { throw fail("\(at): hash_policy.header.regex_rewrite is not supported") }
                        d.hashKey = located("header:\(hh.headerName)", p)
                    case .cookie(let ck)?:
                        guard !ck.hasTtl && ck.attributes.isEmpty && ck.path.isEmpty else {
                            throw fail("\(at): hash_policy.cookie: only name is supported (Weir does not generate cookies: ttl, path, attributes)")
                        }
                        d.hashKey = located("cookie:\(ck.name)", p)
                    case .connectionProperties(let cp)? where cp.sourceIp:
                        d.hashKey = located("source_ip", p)
                    default:
                        throw fail("\(at): hash_policy: header, cookie (name only) or connection_properties.source_ip are supported")
                    }
                }
                if a.hasRetryPolicy { d.retries = try translateRetryPolicy(a.retryPolicy, at, p, fail) }
                var aRest = a
                // gRPC's timeout header needs HTTP/2, which Weir does not speak yet.
                if a.hasMaxGrpcTimeout { notes.ignore("route.max_grpc_timeout"); aRest.clearMaxGrpcTimeout() }
                // A cap on a stream's life (0s, Istio's value, is none); the route's timeout
                // still bounds a request.
                if a.hasMaxStreamDuration { notes.ignore("route.max_stream_duration"); aRest.clearMaxStreamDuration() }
                aRest.clusterSpecifier = nil
                aRest.clearTimeout()
                aRest.clearIdleTimeout()
                aRest.prefixRewrite = ""
                aRest.hostRewriteSpecifier = nil
                aRest.clearRetryPolicy()
                aRest.hashPolicy = []
                if let extra = leftover(aRest) { throw fail("\(at): route: unsupported field(s) \(extra)") }
                if d.directResponse != nil {
                    // The 503 for a cluster Weir does not hold keeps only the route's match.
                    let matched = d
                    d = RouteDocument(position: p)
                    d.match = matched.match
                    d.matchHeaders = matched.matchHeaders
                    d.directResponse = matched.directResponse
                    d.directResponsePosition = p
                }
            case .directResponse(let dr)?:
                var map = ["status": located(String(dr.status), p)]
                if dr.hasBody {
                    guard case .inlineString(let body)? = dr.body.specifier else { throw fail("\(at): direct_response body must be inline_string") }
                    guard body.utf8.count <= maxDirect else { throw fail("\(at): direct_response body of \(body.utf8.count) bytes is over max_direct_response_body_size_bytes (\(maxDirect))") }
                    map["body"] = located(body, p)
                }
                d.directResponse = map
                d.directResponsePosition = p
            case .redirect(let r)?:
                var map: [String: Located<String>] = [:]
                switch r.schemeRewriteSpecifier {
                case .httpsRedirect(true)?: map["scheme"] = located("https", p)
                case .schemeRedirect(let s)?: map["scheme"] = located(s, p)
                default: break
                }
                if !r.hostRedirect.isEmpty { map["host"] = located(r.hostRedirect, p) }
                switch r.pathRewriteSpecifier {
                case .pathRedirect(let path)?: map["path"] = located(path, p)
                case .prefixRewrite(let prefix)?: map["prefix"] = located(prefix, p)
                default: break
                }
                switch r.responseCode {
                case .movedPermanently: map["status"] = located("301", p)
                case .found: map["status"] = located("302", p)
                case .seeOther: map["status"] = located("303", p)
                case .temporaryRedirect: map["status"] = located("307", p)
                case .permanentRedirect: map["status"] = located("308", p)
                default: break
                }
                d.redirect = map
                d.redirectPosition = p
            default:
                throw fail("\(at): needs route, direct_response or redirect")
            }
            func headerList(_ list: [Envoy_Config_Core_V3_HeaderValueOption]) -> [HeaderDocument] {
                list.map { o in
                    var h = HeaderDocument(position: p)
                    h.name = located(o.header.key, p)
                    h.value = located(o.header.value, p)
                    return h
                }
            }
            d.requestHeadersToAdd = headerList(route.requestHeadersToAdd)
            d.responseHeadersToAdd = headerList(route.responseHeadersToAdd)
            d.requestHeadersToRemove = route.requestHeadersToRemove.map { located($0, p) }
            d.responseHeadersToRemove = route.responseHeadersToRemove.map { located($0, p) }
            var routeRest = route
            routeRest.name = ""
            routeRest.clearMetadata()
            if route.hasDecorator { notes.ignore("route.decorator"); routeRest.clearDecorator() }
            routeRest.clearMatch()
            routeRest.action = nil
            routeRest.requestHeadersToAdd = []
            routeRest.responseHeadersToAdd = []
            routeRest.requestHeadersToRemove = []
            routeRest.responseHeadersToRemove = []
            if let extra = leftover(routeRest) { throw fail("\(at): unsupported field(s) \(extra)") }
            routesOf[vi].append(d)
        }
    }
    // Envoy picks one virtual host per request, by its best domain: exact, then the longest
    // suffix wildcard (*.a.com), then the longest prefix wildcard (a.*), then "*"; only that
    // host's routes are tried, and none matching is a 404. As one ordered list: each virtual
    // host's routes for its domains of one kind, in that order, each group closed by a 404 for
    // those domains (unless its last route takes every request), so nothing falls through to
    // another virtual host.
    var groups: [(vh: Int, domains: [String], rank: Int, length: Int)] = []
    var seen = Set<String>()
    for (vi, vh) in config.virtualHosts.enumerated() {
        var exact: [String] = []
        for domain in vh.domains {
            let key = domain.lowercased()
            guard seen.insert(key).inserted else { throw fail("virtual_host '\(vh.name)': domain '\(domain)' is also another virtual host's (Envoy refuses that)") }
            if domain == "*" { groups.append((vi, [], 3, 0)) }
            else if domain.hasPrefix("*") { groups.append((vi, [domain], 1, domain.count)) }
            else if domain.hasSuffix("*") { groups.append((vi, [domain], 2, domain.count)) }
            else { exact.append(domain) }
        }
        if !exact.isEmpty { groups.append((vi, exact, 0, 0)) }
    }
    let ordered = groups.enumerated().sorted { a, b in
        (a.element.rank, -a.element.length, a.offset) < (b.element.rank, -b.element.length, b.offset)
    }.map(\.element)
    for g in ordered {
        let host = g.domains.isEmpty ? nil : located(g.domains.joined(separator: ","), p)
        for var d in routesOf[g.vh] {
            if let host { d.match["host"] = host }
            out.append(d)
        }
        let last = routesOf[g.vh].last
        let catchesAll = last.map { $0.match.isEmpty && $0.matchHeaders.isEmpty } ?? false
        if !catchesAll {
            var none = RouteDocument(position: p)
            if let host { none.match["host"] = host }
            none.directResponse = ["status": located("404", p)]
            none.directResponsePosition = p
            out.append(none)
        }
    }
    return (out, uses, config.ignorePortInHostMatching)
}

/// A cluster's TLS waits for an SDS secret that has not come (the cluster warms on it).
struct WaitingForSecret: Error { let name: String }

/// The SDS names a cluster's transport sockets (default and per-endpoint matches) refer to.
func clusterSDSNames(_ c: EnvoyCluster) -> [String] {
    ((c.hasTransportSocket ? [c.transportSocket] : []) + c.transportSocketMatches.filter(\.hasTransportSocket).map(\.transportSocket))
        .flatMap { sdsNames(of: $0) }
}

/// `secrets`: the SDS secrets held. Without one its TLS needs, the cluster throws
/// WaitingForSecret, unless `activated` (initial_fetch_timeout passed): then its TLS endpoints
/// are left out (they cannot be reached as the control plane asked) and `incomplete` is set.
func translateCluster(_ c: EnvoyCluster, _ cla: EnvoyLoadAssignment?, secrets: [String: EnvoySecret] = [:], activated: Bool = false,
                      incomplete: UnsafeMutablePointer<Bool>? = nil, notes: Notes = Notes()) throws -> ClusterDocument {
    let what = "cluster '\(c.name)'"
    var involved: [XDSType: String] = [.cluster: c.name]
    if c.type == .eds { involved[.endpoint] = edsName(c) }
    func fail(_ m: String) -> XDSError { XDSError(resource: what, message: m, involved: involved) }
    notes.about(.cluster, c.name)
    let p = position("cluster", c.name)
    var d = ClusterDocument(position: p)
    d.name = located(c.name, p)
    if c.type == .originalDst {
        // Each connection goes to its own original destination (Istio's PassthroughCluster and
        // inbound clusters); there is nothing to balance.
        guard c.lbPolicy == .clusterProvided else { throw fail("type ORIGINAL_DST needs lb_policy CLUSTER_PROVIDED, not \(c.lbPolicy)") }
        d.originalDestination = located(true, p)
    }
    switch c.lbPolicy {
    case .clusterProvided where c.type == .originalDst: break
    case .roundRobin: d.balancer = located("round_robin", p)
    case .leastRequest: d.balancer = located("least_request", p)
    case .ringHash: d.balancer = located("ring_hash", p)
    case .maglev: d.balancer = located("maglev", p)
    case .random: d.balancer = located("random", p)
    case .clusterProvided: throw fail("lb_policy CLUSTER_PROVIDED needs type ORIGINAL_DST")
    case .loadBalancingPolicyConfig: throw fail("lb_policy LOAD_BALANCING_POLICY_CONFIG (load_balancing_policy) is not supported (ROUND_ROBIN, LEAST_REQUEST, RING_HASH, MAGLEV, RANDOM are)")
    default: throw fail("lb_policy \(c.lbPolicy) is not supported (ROUND_ROBIN, LEAST_REQUEST, RING_HASH, MAGLEV, RANDOM are)")
    }
    try translateLbConfig(c, into: &d, p, fail)
    if c.hasConnectTimeout { d.connectTimeout = located(seconds(c.connectTimeout), p) }
    var localityWeighted = false
    if c.hasCommonLbConfig {
        if c.commonLbConfig.hasHealthyPanicThreshold { d.panicThreshold = located(String(Int(c.commonLbConfig.healthyPanicThreshold.value)), p) }
        var rest = c.commonLbConfig
        rest.clearHealthyPanicThreshold()
        // Locality-weighted balancing picks a locality, then an endpoint in it: with one
        // locality per priority (what istiod sends for a service) it is plain balancing, which
        // translateEndpoints checks; several localities are refused there.
        if case .localityWeightedLbConfig? = c.commonLbConfig.localityConfigSpecifier {
            localityWeighted = true
            rest.localityConfigSpecifier = nil
        }
        if let extra = leftover(rest) { throw fail("common_lb_config: unsupported field(s) \(extra)") }
    }
    if c.hasOutlierDetection {
        let o = c.outlierDetection
        var map: [String: Located<String>] = [:]
        if o.hasConsecutive5Xx { map["consecutive_failures"] = located(String(o.consecutive5Xx.value), p) }
        if o.hasBaseEjectionTime { map["base_ejection_time"] = located("\(seconds(o.baseEjectionTime) / 1_000_000)ms", p) }
        if o.hasMaxEjectionPercent { map["max_ejection_percent"] = located(String(o.maxEjectionPercent.value), p) }
        d.outlierDetection = map
        d.outlierDetectionPosition = p
        var rest = o
        rest.clearConsecutive5Xx(); rest.clearBaseEjectionTime(); rest.clearMaxEjectionPercent()
        if let extra = leftover(rest) { throw fail("outlier_detection: unsupported field(s) \(extra)") }
    }
    if c.hasCircuitBreakers {
        // Weir's limit is the pool's max_connections (per shard, per endpoint). 4294967295 is
        // how istiod says "no limit". The other thresholds (pending requests, requests,
        // retries) only shed load with 503s; Weir has no such limit yet, so finite ones are
        // accepted and ignored, and listed.
        for t in c.circuitBreakers.thresholds {
            guard t.priority == .default else { throw fail("circuit_breakers: only DEFAULT priority thresholds are supported") }
            if t.hasMaxConnections && t.maxConnections.value != UInt32.max { d.pool = ["max_connections": located(String(t.maxConnections.value), p)] }
            var tRest = t
            tRest.clearMaxConnections()
            if t.hasMaxPendingRequests { if t.maxPendingRequests.value != UInt32.max { notes.ignore("circuit_breakers.max_pending_requests") }; tRest.clearMaxPendingRequests() }
            if t.hasMaxRequests { if t.maxRequests.value != UInt32.max { notes.ignore("circuit_breakers.max_requests") }; tRest.clearMaxRequests() }
            if t.hasMaxRetries { if t.maxRetries.value != UInt32.max { notes.ignore("circuit_breakers.max_retries") }; tRest.clearMaxRetries() }
            if t.trackRemaining { notes.ignore("circuit_breakers.track_remaining"); tRest.trackRemaining = false }
            if let extra = leftover(tRest) { throw fail("circuit_breakers.thresholds: unsupported field(s) \(extra)") }
        }
        var cbRest = c.circuitBreakers
        cbRest.thresholds = []
        if let extra = leftover(cbRest) { throw fail("circuit_breakers: unsupported field(s) \(extra)") }
    }
    if c.hasUpstreamBindConfig {
        // Istio's inbound clusters bind 127.0.0.6, so the pod's iptables rules let Weir's own
        // connections to the application through instead of redirecting them back.
        let b = c.upstreamBindConfig
        var bRest = b
        bRest.clearSourceAddress()
        if let extra = leftover(bRest) { throw fail("upstream_bind_config: unsupported field(s) \(extra) (source_address is supported)") }
        var aRest = b.sourceAddress
        aRest.address = ""
        aRest.portSpecifier = nil
        if let extra = leftover(aRest) { throw fail("upstream_bind_config.source_address: unsupported field(s) \(extra)") }
        guard b.hasSourceAddress, case .portValue(let port)? = b.sourceAddress.portSpecifier ?? .portValue(0) else {
            throw fail("upstream_bind_config: needs source_address with a port_value (0 for any)")
        }
        let host = b.sourceAddress.address.contains(":") ? "[\(b.sourceAddress.address)]" : b.sourceAddress.address
        d.sourceAddress = located("\(host):\(port)", p)
    }
    if c.hasCleanupInterval { notes.ignore("cleanup_interval (original-destination hosts are per connection)") }
    if let hc = c.healthChecks.first {
        guard c.healthChecks.count == 1 else { throw fail("health_checks: one health check is supported") }
        d.healthCheck = try translateHealthCheck(hc, p, fail)
        d.healthCheckPosition = p
    }
    var rest = c
    try translateProtocolOptions(c, into: &d, p, notes, fail)
    rest.typedExtensionProtocolOptions = [:]
    // Older Istio (1.9) writes the upstream protocol with the deprecated cluster fields: the
    // downstream's protocol (HTTP/1.1 is all Weir's clients speak), or HTTP/2, which Weir does
    // not speak upstream yet (as explicit_http_config above).
    if c.protocolSelection == .useDownstreamProtocol { rest.protocolSelection = .useConfiguredProtocol }
    if c.hasHTTP2ProtocolOptions {
        if c.protocolSelection != .useDownstreamProtocol { notes.ignore("http2_protocol_options (HTTP/2 upstream)") }
        rest.clearHTTP2ProtocolOptions()
    }
    for (i, f) in c.filters.enumerated() {
        let t = filterType(f.typedConfig)
        switch clusterFilterVerdict(t) {
        case .skip: notes.ignore("cluster filter \(t.name)")
        case .refuse(let why): throw fail("filters[\(i)] '\(f.name)' (\(t.name)): refused: \(why)")
        }
    }
    rest.filters = []
    // Which transport socket each endpoint uses is decided with the endpoints (below); each TLS
    // one is checked now, whether or not an endpoint uses it.
    let matches = c.transportSocketMatches
    rest.transportSocketMatches = []
    let defaultSocket: Envoy_Config_Core_V3_TransportSocket? = c.hasTransportSocket ? c.transportSocket : nil
    rest.clearTransportSocket()
    for (label, socket) in [("transport_socket", defaultSocket)] + matches.map({ ("transport_socket_matches '\($0.name)'", $0.hasTransportSocket ? $0.transportSocket : nil) }) {
        guard let socket, !isRawBuffer(socket) else { continue }
        _ = try translateUpstreamTLS(socket, at: label, secrets: [:], p, notes: Notes(), fail: fail)
        // Weir's probes are plaintext: to a TLS endpoint they would send requests in the clear
        // and fail (Envoy probes through the transport socket).
        if !c.healthChecks.isEmpty { throw fail("health_checks on a cluster with TLS endpoints (\(label)) are not supported: Weir's probes are plaintext") }
    }
    rest.name = ""
    rest.clearMetadata()  // labels for filters and subsets Weir does not have; they change nothing
    rest.altStatName = ""
    rest.clusterDiscoveryType = nil
    rest.clearEdsClusterConfig()
    rest.lbPolicy = .roundRobin
    rest.lbConfig = nil
    rest.clearConnectTimeout()
    rest.clearLoadAssignment()
    rest.clearCommonLbConfig()
    rest.clearOutlierDetection()
    rest.clearCircuitBreakers()
    rest.healthChecks = []
    rest.clearUpstreamBindConfig()
    rest.clearCleanupInterval()
    if let extra = leftover(rest) { throw fail("unsupported field(s) \(extra)") }
    let assignment: EnvoyLoadAssignment
    switch c.type {
    case .originalDst:
        guard c.loadAssignment.endpoints.isEmpty else { throw fail("type ORIGINAL_DST: load_assignment must be empty (each connection's destination is its endpoint)") }
        // The destination carries no metadata: the cluster's default transport socket applies.
        if try chosenSocket(for: Envoy_Config_Endpoint_V3_LbEndpoint(), matches, defaultSocket) != nil {
            throw fail("type ORIGINAL_DST: TLS to original destinations is not supported")
        }
        notes.about(.cluster, c.name)
        return d
    case .static:
        // A static cluster with no endpoints (Istio's BlackHoleCluster) answers 503 and closes
        // TCP connections.
        d.mayBeEmpty = true
        assignment = c.loadAssignment
    case .eds:
        d.mayBeEmpty = true
        guard let cla else { return d }  // warming, and kept only when the caller asked for it
        assignment = cla
    default: throw fail("type \(c.type) is not supported (STATIC and EDS are)")
    }
    if assignment.policy.hasOverprovisioningFactor {
        d.overprovisioningFactor = located(Int(assignment.policy.overprovisioningFactor.value), p)
    }
    // Endpoints with TLS share one transport socket (Istio's tlsMode istio); the others are
    // reached in plaintext (raw_buffer, or none).
    var tls: (socket: Envoy_Config_Core_V3_TransportSocket, label: String)? = nil
    d.endpoints = try translateEndpoints(assignment, cluster: c.name, p, localityWeighted: localityWeighted, notes: notes) { e in
        guard let (socket, label) = try chosenSocket(for: e, matches, defaultSocket) else { return true }
        if let t = tls, !t.socket.isEqualTo(message: socket) {
            throw fail("endpoints use two TLS transport sockets (\(t.label), \(label)); one per cluster is supported")
        }
        tls = (socket, label)
        return false
    }
    notes.about(.cluster, c.name)
    if let (socket, label) = tls {
        switch try translateUpstreamTLS(socket, at: label, secrets: secrets, p, notes: notes, fail: fail) {
        case .ready(let doc): d.upstreamTLS = doc
        case .waiting(let name):
            guard activated else { throw WaitingForSecret(name: name) }
            d.endpoints = d.endpoints.filter(\.plaintext)
            incomplete?.pointee = true
        }
    }
    return d
}

func isRawBuffer(_ socket: Envoy_Config_Core_V3_TransportSocket) -> Bool {
    let type = socket.typedConfig.typeURL.split(separator: "/").last.map(String.init) ?? ""
    return type == "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" || (type.isEmpty && socket.name == "envoy.transport_sockets.raw_buffer")
}

/// The transport socket an endpoint uses: the first of the cluster's transport_socket_matches
/// whose `match` the endpoint's `envoy.transport_socket_match` metadata holds, else the cluster's
/// transport_socket; nil for plaintext (none, or raw_buffer).
func chosenSocket(for e: Envoy_Config_Endpoint_V3_LbEndpoint, _ matches: [EnvoyCluster.TransportSocketMatch],
                  _ fallback: Envoy_Config_Core_V3_TransportSocket?) throws -> (Envoy_Config_Core_V3_TransportSocket, String)? {
    let labels = e.metadata.filterMetadata["envoy.transport_socket_match"]?.fields ?? [:]
    var chosen = fallback
    var chosenName = "transport_socket"
    for m in matches where m.match.fields.allSatisfy({ labels[$0.key] == $0.value }) {
        chosen = m.hasTransportSocket ? m.transportSocket : nil
        chosenName = "transport_socket_matches '\(m.name)'"
        break
    }
    guard let socket = chosen, !isRawBuffer(socket) else { return nil }
    return (socket, chosenName)
}

/// typed_extension_protocol_options: Envoy's upstream HTTP protocol options, read from the wire
/// (Weir does not carry their generated type). HTTP/1.1 explicitly, as downstream, or auto: what
/// Weir does (HTTP/1.1 to upstreams). An explicit HTTP/2 upstream is accepted and listed (Weir
/// speaks HTTP/1.1 to it and such requests fail; nothing goes elsewhere). idle_timeout is the
/// pool's. Anything else is refused.
func translateProtocolOptions(_ c: EnvoyCluster, into d: inout ClusterDocument, _ p: SourcePosition, _ notes: Notes,
                              _ fail: (String) -> XDSError) throws {
    for (key, any) in c.typedExtensionProtocolOptions.sorted(by: { $0.key < $1.key }) {
        let at = "typed_extension_protocol_options['\(key)']"
        guard key == "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
              any.typeURL.hasSuffix("/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"), let o = RawProto(any.value) else {
            throw fail("\(at): only envoy.extensions.upstreams.http.v3.HttpProtocolOptions is supported")
        }
        if let unknown = o.numbers.subtracting([1, 3, 4, 5]).min() {
            throw fail("\(at): field \(unknown) is not supported (common_http_protocol_options.idle_timeout, explicit_http_config, use_downstream_protocol_config and auto_config are)")
        }
        if let common = o.message(1) {
            if let extra = common.numbers.subtracting([1]).min() { throw fail("\(at).common_http_protocol_options: field \(extra) is not supported (idle_timeout is)") }
            if let t = common.message(1) {
                let ns = nanoseconds(seconds: Int64(truncatingIfNeeded: t.varint(1) ?? 0), nanos: Int64(Int32(truncatingIfNeeded: t.varint(2) ?? 0)))
                if ns > 0 { d.pool = (d.pool ?? [:]).merging(["idle_timeout": located("\(ns / 1_000_000)ms", p)]) { $1 } }
            }
        }
        // Each message once (protobuf merges repeats, which this reader does not), and the
        // HTTP/1 options empty: their fields change how requests are written.
        if o.fields.count != o.numbers.count { throw fail("\(at): a field given twice is not supported") }
        for n in [3, 4, 5] {
            guard let m = o.message(n) else { continue }
            if m.fields.count != m.numbers.count { throw fail("\(at): a field given twice is not supported") }
            if let h1 = m.bytes(1), !h1.isEmpty { throw fail("\(at): http_protocol_options with settings is not supported (only an empty one)") }
            if n == 3 && (m.numbers.contains(2) || m.numbers.contains(3)) {
                notes.ignore("typed_extension_protocol_options.explicit_http_config (HTTP/2 or HTTP/3 upstream)")
            }
        }
    }
}

/// A route's retry_policy as `retries:` keys. Conditions that cannot arise through an HTTP/1.1
/// proxy (HTTP/2's refused-stream, gRPC statuses: gRPC needs HTTP/2) are accepted and can never
/// fire, which is what they do in Envoy for such traffic. Envoy retries any method the policy
/// covers, so these retries are not limited to idempotent ones. Istio's default policy
/// (connect-failure, refused-stream, unavailable, cancelled, retriable-status-codes 503, two
/// retries, the previous_hosts predicate) translates whole: Weir never retries on an endpoint
/// that already failed the request.
func translateRetryPolicy(_ rp: Envoy_Config_Route_V3_RetryPolicy, _ at: String, _ p: SourcePosition,
                          _ fail: (String) -> XDSError) throws -> [String: Located<String>] {
    var on: [String] = []
    for cond in rp.retryOn.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !cond.isEmpty {
        switch cond {
        case "connect-failure": on.append("connect_failure")
        case "reset": on.append("reset")
        case "5xx": on += ["5xx", "reset"]  // Envoy's 5xx also covers no response at all
        case "gateway-error": on.append("502,503,504")
        case "retriable-status-codes": on += rp.retriableStatusCodes.map { String($0) }
        case "refused-stream", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable": break
        default: throw fail("\(at): retry_on '\(cond)' is not supported")
        }
    }
    if on.isEmpty { on = ["connect_failure"] }
    var map = ["on": located(on.joined(separator: ","), p),
               "attempts": located(String(rp.hasNumRetries ? Int(rp.numRetries.value) : 1), p),
               "non_idempotent": located("true", p)]
    if rp.hasRetryBackOff {
        let b = rp.retryBackOff
        if b.hasBaseInterval { map["backoff"] = located("\(seconds(b.baseInterval) / 1_000_000)ms", p) }
        var rest = b
        rest.clearBaseInterval(); rest.clearMaxInterval()  // Weir's backoff grows linearly from the base, with jitter
        if let extra = leftover(rest) { throw fail("\(at): retry_policy.retry_back_off: unsupported field(s) \(extra)") }
    }
    for pred in rp.retryHostPredicate where pred.name != "envoy.retry_host_predicates.previous_hosts" {
        throw fail("\(at): retry_policy.retry_host_predicate '\(pred.name)' is not supported (previous_hosts is what Weir always does)")
    }
    var rest = rp
    rest.retryOn = ""; rest.clearNumRetries(); rest.retriableStatusCodes = []; rest.clearRetryBackOff()
    rest.retryHostPredicate = []; rest.hostSelectionRetryMaxAttempts = 0
    if let extra = leftover(rest) { throw fail("\(at): retry_policy: unsupported field(s) \(extra)") }
    return map
}

/// One health check as `health_check:` keys. Envoy's TCP payloads are hex; Weir's are text, so a
/// payload that is not UTF-8 text is refused.
func translateHealthCheck(_ hc: Envoy_Config_Core_V3_HealthCheck, _ p: SourcePosition, _ fail: (String) -> XDSError) throws -> [String: Located<String>] {
    var map: [String: Located<String>] = [:]
    func ms(_ d: Google_Protobuf_Duration) -> Located<String> { located("\(seconds(d) / 1_000_000)ms", p) }
    if hc.hasInterval { map["interval"] = ms(hc.interval) }
    if hc.hasTimeout { map["timeout"] = ms(hc.timeout) }
    if hc.hasUnhealthyInterval { map["unhealthy_interval"] = ms(hc.unhealthyInterval) }
    if hc.intervalJitterPercent != 0 { map["jitter"] = located("\(hc.intervalJitterPercent)", p) }
    if hc.hasUnhealthyThreshold { map["unhealthy_threshold"] = located(String(hc.unhealthyThreshold.value), p) }
    if hc.hasHealthyThreshold { map["healthy_threshold"] = located(String(hc.healthyThreshold.value), p) }
    if hc.hasAltPort { map["port"] = located(String(hc.altPort.value), p) }
    func text(_ payload: Envoy_Config_Core_V3_HealthCheck.Payload, _ what: String) throws -> String {
        guard case .text(let hex)? = payload.payload else { throw fail("health_checks[0].\(what): only hex text payloads are supported") }
        var bytes: [UInt8] = []
        var chars = Array(hex.utf8)[...]
        while chars.count >= 2 {
            guard let b = UInt8(String(decoding: chars.prefix(2), as: UTF8.self), radix: 16) else { throw fail("health_checks[0].\(what): '\(hex)' is not hex") }
            bytes.append(b)
            chars = chars.dropFirst(2)
        }
        guard chars.isEmpty, let s = String(validating: bytes, as: UTF8.self), !s.contains("\0") else {
            throw fail("health_checks[0].\(what): the payload must be hex of UTF-8 text (binary payloads are not supported)")
        }
        return s
    }
    switch hc.healthChecker {
    case .httpHealthCheck(let h)?:
        map["type"] = located("http", p)
        if !h.path.isEmpty { map["path"] = located(h.path, p) }
        if !h.host.isEmpty { map["host"] = located(h.host, p) }
        if !h.expectedStatuses.isEmpty {
            // Envoy's ranges are half-open: [200, 300) is 200-299.
            map["expect_status"] = located(h.expectedStatuses.map { "\($0.start)-\($0.end - 1)" }.joined(separator: ","), p)
        }
        var rest = h
        rest.path = ""; rest.host = ""; rest.expectedStatuses = []
        if let extra = leftover(rest) { throw fail("health_checks[0].http_health_check: unsupported field(s) \(extra)") }
    case .tcpHealthCheck(let t)?:
        map["type"] = located("tcp", p)
        if t.hasSend { map["send"] = located(try text(t.send, "tcp_health_check.send"), p) }
        if let r = t.receive.first {
            guard t.receive.count == 1 else { throw fail("health_checks[0].tcp_health_check.receive: one payload is supported") }
            map["expect"] = located(try text(r, "tcp_health_check.receive"), p)
        }
        var rest = t
        rest.clearSend(); rest.receive = []
        if let extra = leftover(rest) { throw fail("health_checks[0].tcp_health_check: unsupported field(s) \(extra)") }
    default:
        throw fail("health_checks: only http_health_check and tcp_health_check are supported")
    }
    var rest = hc
    rest.clearInterval(); rest.clearTimeout(); rest.clearUnhealthyInterval(); rest.intervalJitterPercent = 0
    rest.clearUnhealthyThreshold(); rest.clearHealthyThreshold(); rest.clearAltPort(); rest.healthChecker = nil
    if let extra = leftover(rest) { throw fail("health_checks[0]: unsupported field(s) \(extra)") }
    return map
}

/// lb_policy and its config (ring_hash_lb_config, maglev_lb_config, least_request_lb_config,
/// round_robin_lb_config) as `balancer:`, `balancer_options:` and `slow_start:`.
func translateLbConfig(_ c: EnvoyCluster, into d: inout ClusterDocument, _ p: SourcePosition, _ fail: (String) -> XDSError) throws {
    func option(_ key: String, _ value: String) { d.balancerOptions[key] = located(value, p); d.balancerOptionsPosition = p }
    func slowStart(_ s: EnvoyCluster.SlowStartConfig, _ at: String) throws {
        var doc = SlowStartDocument(position: p)
        guard s.hasSlowStartWindow else { throw fail("\(at).slow_start_config: slow_start_window is required") }
        doc.window = located(seconds(s.slowStartWindow), p)
        if s.hasAggression { doc.aggression = located(String(s.aggression.defaultValue), p) }
        if s.hasMinWeightPercent { doc.minWeightPercent = located(String(s.minWeightPercent.value), p) }
        var rest = s
        rest.clearSlowStartWindow(); rest.clearMinWeightPercent()
        if s.hasAggression {
            var a = s.aggression
            a.defaultValue = 0; a.runtimeKey = ""
            if let extra = leftover(a) { throw fail("\(at).slow_start_config.aggression: unsupported field(s) \(extra)") }
            rest.clearAggression()
        }
        if let extra = leftover(rest) { throw fail("\(at).slow_start_config: unsupported field(s) \(extra)") }
        d.slowStart = doc
    }
    switch c.lbConfig {
    case nil: break
    case .ringHashLbConfig(let r)?:
        guard c.lbPolicy == .ringHash else { throw fail("ring_hash_lb_config needs lb_policy RING_HASH, not \(c.lbPolicy)") }
        // Weir's ring hashes with xxHash (Envoy's default); MURMUR_HASH_2 would place keys elsewhere.
        guard r.hashFunction == .xxHash else { throw fail("ring_hash_lb_config.hash_function: only XX_HASH is supported") }
        if r.hasMinimumRingSize { option("minimum_ring_size", String(r.minimumRingSize.value)) }
        if r.hasMaximumRingSize { option("maximum_ring_size", String(r.maximumRingSize.value)) }
    case .maglevLbConfig(let m)?:
        guard c.lbPolicy == .maglev else { throw fail("maglev_lb_config needs lb_policy MAGLEV, not \(c.lbPolicy)") }
        if m.hasTableSize { option("table_size", String(m.tableSize.value)) }
    case .leastRequestLbConfig(let l)?:
        guard c.lbPolicy == .leastRequest else { throw fail("least_request_lb_config needs lb_policy LEAST_REQUEST, not \(c.lbPolicy)") }
        if l.hasChoiceCount { option("choice_count", String(l.choiceCount.value)) }
        if l.hasActiveRequestBias {
            var a = l.activeRequestBias
            option("active_request_bias", String(a.defaultValue))
            a.defaultValue = 0; a.runtimeKey = ""
            if let extra = leftover(a) { throw fail("least_request_lb_config.active_request_bias: unsupported field(s) \(extra)") }
        }
        if l.hasSlowStartConfig { try slowStart(l.slowStartConfig, "least_request_lb_config") }
        var rest = l
        rest.clearChoiceCount(); rest.clearActiveRequestBias(); rest.clearSlowStartConfig()
        if let extra = leftover(rest) { throw fail("least_request_lb_config: unsupported field(s) \(extra)") }
    case .roundRobinLbConfig(let r)?:
        guard c.lbPolicy == .roundRobin else { throw fail("round_robin_lb_config needs lb_policy ROUND_ROBIN, not \(c.lbPolicy)") }
        if r.hasSlowStartConfig { try slowStart(r.slowStartConfig, "round_robin_lb_config") }
        var rest = r
        rest.clearSlowStartConfig()
        if let extra = leftover(rest) { throw fail("round_robin_lb_config: unsupported field(s) \(extra)") }
    case .originalDstLbConfig?:
        throw fail("original_dst_lb_config is not supported")
    }
}

/// Healthy and unknown endpoints with their priorities (UNHEALTHY, DRAINING and TIMEOUT ones are
/// left out); the compiled cluster spills from a priority to the next as Envoy does.
func translateEndpoints(_ cla: EnvoyLoadAssignment, cluster: String, _ p: SourcePosition, localityWeighted: Bool = false,
                        notes: Notes = Notes(), plaintext: (Envoy_Config_Endpoint_V3_LbEndpoint) throws -> Bool = { _ in true }) throws -> [EndpointDocument] {
    let name = cla.clusterName.isEmpty ? cluster : cla.clusterName
    func fail(_ m: String) -> XDSError { XDSError(resource: "cluster_load_assignment '\(name)'", message: m, involved: [.endpoint: name, .cluster: cluster]) }
    notes.about(.endpoint, name)
    var out: [EndpointDocument] = []
    if localityWeighted {
        let priorities = cla.endpoints.map(\.priority)
        if Set(priorities).count != priorities.count {
            throw fail("locality_weighted_lb_config with several localities in one priority is not supported (one locality per priority is)")
        }
    }
    for locality in cla.endpoints {
        // Locality (a label), its weight (used only by locality-weighted balancing, which with
        // one locality per priority changes nothing) and metadata inform nothing here.
        if locality.metadata.filterMetadata["envoy.transport_socket_match"] != nil {
            throw fail("endpoints (locality): metadata envoy.transport_socket_match is not supported (Weir picks the transport socket by each endpoint's own metadata)")
        }
        var lRest = locality
        lRest.clearLocality(); lRest.clearMetadata(); lRest.lbEndpoints = []; lRest.clearLoadBalancingWeight(); lRest.priority = 0
        if let extra = leftover(lRest) { throw fail("endpoints (locality): unsupported field(s) \(extra)") }
        for lb in locality.lbEndpoints {
            guard case .endpoint(let e)? = lb.hostIdentifier, case .socketAddress(let sa)? = e.address.address,
                  case .portValue(let port)? = sa.portSpecifier else { throw fail("an lb_endpoint needs endpoint.address.socket_address with port_value") }
            switch lb.healthStatus {
            case .unhealthy, .draining, .timeout: continue
            default: break
            }
            let inPlaintext: Bool
            do { inPlaintext = try plaintext(lb) } catch var err as XDSError {
                err.resource = "cluster_load_assignment '\(name)'"
                err.involved[.endpoint] = name
                throw err
            }
            var lbRest = lb
            lbRest.hostIdentifier = nil; lbRest.healthStatus = .unknown; lbRest.clearMetadata(); lbRest.clearLoadBalancingWeight()
            if let extra = leftover(lbRest) { throw fail("lb_endpoints: unsupported field(s) \(extra)") }
            var eRest = e
            eRest.clearAddress(); eRest.hostname = ""
            // An empty health_check_config (Envoy fills one in when it dumps its config) means
            // the endpoint's own address; anything in it is refused.
            if e.hasHealthCheckConfig && e.healthCheckConfig.isEqualTo(message: Envoy_Config_Endpoint_V3_Endpoint.HealthCheckConfig()) { eRest.clearHealthCheckConfig() }
            if let extra = leftover(eRest) { throw fail("lb_endpoints.endpoint: unsupported field(s) \(extra)") }
            var saRest = sa
            saRest.address = ""; saRest.portSpecifier = nil
            if let extra = leftover(saRest) { throw fail("lb_endpoints.endpoint.address.socket_address: unsupported field(s) \(extra)") }
            var ep = EndpointDocument(position: p)
            ep.plaintext = inPlaintext
            let host = sa.address.contains(":") ? "[\(sa.address)]" : sa.address
            ep.address = located("\(host):\(port)", p)
            if lb.hasLoadBalancingWeight { ep.weight = located(Int(lb.loadBalancingWeight.value), p) }
            if locality.priority != 0 { ep.priority = located(Int(locality.priority), p) }
            out.append(ep)
        }
    }
    var rest = cla
    rest.clusterName = ""
    rest.endpoints = []
    rest.clearPolicy()
    if let extra = leftover(rest) { throw fail("unsupported field(s) \(extra)") }
    var policy = cla.policy
    policy.clearOverprovisioningFactor()
    if let extra = leftover(policy) { throw fail("policy: unsupported field(s) \(extra) (overprovisioning_factor is supported)") }
    return out
}
