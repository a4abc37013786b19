// A listener's filter chains: which chain serves a connection, chosen from what is known when it
// is accepted (its addresses) and what listener inspectors read from its first bytes (TLS or not,
// the ClientHello's server name and ALPN, an HTTP/1 request line or the h2c preface). The chain is
// chosen the way Envoy chooses one, criterion by criterion, most specific match first; selection
// does no I/O, reads no clock and allocates nothing for up to 64 chains.
import WeirCore
import WeirHTTP

/// One chain's `filter_chain_match`; an empty criterion matches every connection but loses to a
/// chain whose criterion matches specifically.
public struct ChainMatch: Sendable, Equatable, Hashable {
    public var destinationPort: UInt16? = nil
    public var destinationPrefixes: [AddressPrefix] = []
    /// Lowercase; "*.example.com" for any name under example.com.
    public var serverNames: [String] = []
    /// "raw_buffer" or "tls".
    public var transportProtocol: String? = nil
    public var applicationProtocols: [String] = []
    public var sourcePrefixes: [AddressPrefix] = []
    public var sourcePorts: [UInt16] = []
    public init() {}

    /// Criteria that need a listener inspector to read the connection's first bytes.
    public var needsTLSInspection: Bool { !serverNames.isEmpty || transportProtocol == "tls" || !applicationProtocols.isEmpty }
}

/// What is known about a connection when its chain is chosen. `serverName` and `alpn` point into
/// the ClientHello (ALPN in its wire form: a length byte before each name); both empty when the
/// connection is not TLS or sent none. An HTTP inspector's finding arrives as `alpn` too.
public struct ConnectionFacts {
    public var destination: AddressKey
    public var source: AddressKey
    public var isTLS = false
    public var serverName = UnsafeRawBufferPointer(start: nil, count: 0)
    public var alpn = UnsafeRawBufferPointer(start: nil, count: 0)
    public init(destination: AddressKey, source: AddressKey) { self.destination = destination; self.source = source }
}

public struct FilterChains: Sendable {
    public var matches: [ChainMatch]
    /// Per chain: the listener (in `Snapshot.listeners`) that serves it, or -1 for a chain
    /// Weir refused to serve: a connection it would get is closed, never given to another chain.
    public var targets: [Int]
    /// Used when no chain matches; nil: such a connection is closed.
    public var defaultTarget: Int?
    /// Listener inspectors: tls_inspector (TLS or not, server name, ALPN) and http_inspector
    /// (http/1.0, http/1.1 or h2c on plaintext).
    public var inspectTLS: Bool
    public var inspectHTTP: Bool
    /// How long inspectors wait for bytes (0: no limit beyond the listener's idle timeout), and
    /// whether a connection that ran out of time is still given a chain (with what is known).
    public var inspectTimeoutNanoseconds: Int64
    public var continueOnTimeout: Bool
    /// Destination ports an inspector does not run for (xDS filter_disabled; Istio turns the
    /// HTTP inspector off for ports it knows are server-first).
    public var tlsOffPorts: [ClosedRange<UInt16>] = []
    /// Chains match a NAT-redirected connection by where it was going (SO_ORIGINAL_DST; Envoy's
    /// original_dst listener filter), not by the address it reached. A connection handed over
    /// by use_original_destination is matched by its original destination either way.
    public var matchOriginalDestination = false
    public var httpOffPorts: [ClosedRange<UInt16>] = []

    public init(matches: [ChainMatch], targets: [Int], defaultTarget: Int?, inspectTLS: Bool, inspectHTTP: Bool,
                inspectTimeoutNanoseconds: Int64 = 0, continueOnTimeout: Bool = false) {
        self.matches = matches; self.targets = targets; self.defaultTarget = defaultTarget
        self.inspectTLS = inspectTLS; self.inspectHTTP = inspectHTTP
        self.inspectTimeoutNanoseconds = inspectTimeoutNanoseconds; self.continueOnTimeout = continueOnTimeout
    }

    /// The inspectors that run for a connection to `port`.
    @inlinable public func inspectors(port: UInt16) -> (tls: Bool, http: Bool) {
        (inspectTLS && !tlsOffPorts.contains { $0.contains(port) }, inspectHTTP && !httpOffPorts.contains { $0.contains(port) })
    }

    /// Whether a connection to `port` is read before its chain is chosen: only when a chain
    /// could depend on its first bytes (a server-first protocol on a plain port is not held up).
    public func readsFirstBytes(port: UInt16) -> Bool {
        let (tls, http) = inspectors(port: port)
        return (tls || http) && matches.contains { $0.needsTLSInspection }
    }

    /// The listener that serves a connection: its chain's, the default chain's, or nil (close it).
    public func target(_ facts: ConnectionFacts) -> Int? {
        guard let i = select(facts) else { return defaultTarget }
        let t = targets[i]
        return t >= 0 ? t : nil
    }

    /// The chain a connection goes to, in Envoy's order of criteria: destination port, destination
    /// prefix, server name, transport protocol, application protocols, source prefix, source port.
    /// At each step the chains whose criterion matches most specifically stay; if none matches,
    /// the chains without that criterion stay; if there are none, no chain matches.
    public func select(_ facts: ConnectionFacts) -> Int? {
        let n = matches.count
        if n == 0 { return nil }
        return withUnsafeTemporaryAllocation(of: Bool.self, capacity: n) { alive -> Int? in
            alive.initialize(repeating: true)
            // Each step scores the alive chains: nil for "no criterion", -1 for "criterion fails",
            // else a specificity (higher wins).
            func step(_ score: (ChainMatch) -> Int?) -> Bool {
                var best = -1, anyEmpty = false
                for i in 0..<n where alive[i] {
                    if let s = score(matches[i]) { best = max(best, s) } else { anyEmpty = true }
                }
                for i in 0..<n where alive[i] {
                    let s = score(matches[i])
                    alive[i] = best >= 0 ? s == best : s == nil
                }
                return best >= 0 || anyEmpty
            }
            guard step({ m in m.destinationPort.map { $0 == facts.destination.port ? 0 : -1 } }),
                  step({ m in m.destinationPrefixes.isEmpty ? nil : ChainMatch.longest(m.destinationPrefixes, facts.destination) }),
                  step({ m in m.serverNames.isEmpty ? nil : ChainMatch.serverNameScore(m.serverNames, facts.serverName) }),
                  step({ m in m.transportProtocol.map { $0 == (facts.isTLS ? "tls" : "raw_buffer") ? 0 : -1 } }),
                  step({ m in m.applicationProtocols.isEmpty ? nil : ChainMatch.alpnScore(m.applicationProtocols, facts.alpn) }),
                  step({ m in m.sourcePrefixes.isEmpty ? nil : ChainMatch.longest(m.sourcePrefixes, facts.source) }),
                  step({ m in m.sourcePorts.isEmpty ? nil : (m.sourcePorts.contains(facts.source.port) ? 0 : -1) })
            else { return nil }
            return (0..<n).first { alive[$0] }
        }
    }
}

extension ChainMatch {
    /// The longest prefix containing `a`, or -1.
    static func longest(_ prefixes: [AddressPrefix], _ a: AddressKey) -> Int {
        var best = -1
        for p in prefixes where p.length > best && p.contains(a) { best = p.length }
        return best
    }

    /// An exact name scores above any wildcard; a longer wildcard suffix above a shorter one.
    static func serverNameScore(_ names: [String], _ sni: UnsafeRawBufferPointer) -> Int {
        guard sni.count > 0 else { return -1 }
        var best = -1
        for name in names {
            var u = name.utf8[...]
            let wildcard = u.first == UInt8(ascii: "*")
            if wildcard { u = u.dropFirst() }   // ".example.com"
            if wildcard ? (sni.count > u.count && endsWith(sni, u)) : (sni.count == u.count && endsWith(sni, u)) {
                best = max(best, wildcard ? u.count : Int.max)
            }
        }
        return best
    }

    static func endsWith(_ s: UnsafeRawBufferPointer, _ suffix: Substring.UTF8View) -> Bool {
        var i = s.count - suffix.count
        for b in suffix {
            var c = s[i]
            if c >= 0x41 && c <= 0x5A { c |= 0x20 }
            if c != b { return false }
            i += 1
        }
        return true
    }

    /// How early in the client's ALPN list (wire form, in its order of preference) the first
    /// protocol this chain lists comes, higher for earlier; -1 when it lists none of them. As in
    /// Envoy, the client's first protocol that any chain lists decides.
    static func alpnScore(_ protocols: [String], _ alpn: UnsafeRawBufferPointer) -> Int {
        var p = 0, position = 0
        while p < alpn.count {
            let length = Int(alpn[p])
            p += 1
            guard p + length <= alpn.count else { return -1 }
            let offeredName = UnsafeRawBufferPointer(rebasing: alpn[p..<(p + length)])
            if protocols.contains(where: { $0.utf8.elementsEqual(offeredName) }) { return Int(UInt16.max) - position }
            p += length
            position += 1
        }
        return -1
    }
}

extension Snapshot {
    /// The match of the chain listener `li` serves (nil for the default chain, or a listener
    /// that is no chain): a keep-alive connection moves to a new snapshot's chain of the same
    /// name only if it still matches the same way.
    public func chainMatch(of li: Int) -> ChainMatch?? {
        guard let parent = listeners[li].chainOf, let chains = listeners[parent].chains else { return .none }
        guard let i = chains.targets.firstIndex(of: li) else { return .some(nil) }
        return .some(chains.matches[i])
    }
}
