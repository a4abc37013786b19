// Compiling a listener's filter chains: each chain becomes a listener of its own (named
// LISTENER/CHAIN, never bound) and the listener itself a selector that hands each connection to
// the chain its match picks (FilterChains.swift).
import WeirCore

extension Compiler {
    public static let defaultInspectTimeoutNanoseconds: Int64 = 15_000_000_000

    static func compileChains(_ l: ListenerDocument, name: Located<String>, address: SocketAddress, bindToPort: Bool,
                              useOriginalDestination: Bool, into listeners: inout [Listener],
                              body: (ListenerDocument, Located<String>, SocketAddress) -> Listener?,
                              fail: (SourcePosition, String) -> Void) {
        let own: [(String, SourcePosition?)] = [("protocol", l.proto?.position), ("cluster", l.cluster?.position),
                                                ("weighted_clusters", l.weightedClusters.map { _ in l.weightedClustersPosition ?? l.position }),
                                                ("routes", l.routes.isEmpty ? nil : l.routesPosition ?? l.position),
                                                ("tls", l.tls?.position), ("http", l.http.map { _ in l.httpPosition ?? l.position })]
        if let (key, at) = own.first(where: { $0.1 != nil }) {
            return fail(at!, "listener '\(name.value)' has chains: '\(key)' belongs in each chain, not on the listener")
        }
        if let b = l.backlog, !(1...65535).contains(b.value) { fail(b.position, "backlog must be 1 to 65535") }
        let selector = listeners.count
        var this = Listener(name: name.value, address: address, proto: .tcp, clusterIndex: -1,
                            idleTimeoutNanoseconds: l.idleTimeout?.value ?? defaultIdleTimeoutNanoseconds,
                            backlog: Int32(l.backlog?.value ?? 4096))
        this.bindToPort = bindToPort
        this.useOriginalDestination = useOriginalDestination
        listeners.append(this)
        var matches: [ChainMatch] = [], targets: [Int] = []
        var defaultTarget: Int? = nil, haveDefault = false
        var seen: [ChainMatch: String] = [:], names = Set<String>()
        for (i, c) in l.chains.enumerated() {
            let chainName = c.name?.value ?? (c.match == nil ? "default" : String(i))
            guard names.insert(chainName).inserted else {
                fail(c.name?.position ?? c.position, "listener '\(name.value)': two chains are named '\(chainName)'"); continue
            }
            var target = -1
            if c.refused == nil {
                if let n = c.body.name { fail(n.position, "a chain has no name of its own inside; name it beside 'match'"); continue }
                if let a = c.body.address { fail(a.position, "a chain takes its listener's address"); continue }
                guard var served = body(c.body, Located("\(name.value)/\(chainName)", at: c.position), address) else { continue }
                served.bindToPort = false
                served.chainOf = selector
                target = listeners.count
                listeners.append(served)
            }
            guard let m = c.match else {
                if haveDefault { fail(c.position, "listener '\(name.value)' has two default chains"); continue }
                haveDefault = true
                defaultTarget = target >= 0 ? target : nil
                continue
            }
            guard let compiled = compileMatch(m, listener: name.value, fail: fail) else { continue }
            if let other = seen[compiled] {
                fail(m.position, "listener '\(name.value)': chains '\(other)' and '\(chainName)' have the same match (a connection could not tell them apart)")
                continue
            }
            seen[compiled] = chainName
            matches.append(compiled)
            targets.append(target)
        }
        // Without `inspectors:` (YAML), whatever the matches need, and the original destination.
        var inspectTLS = matches.contains { $0.needsTLSInspection }
        var inspectHTTP = matches.contains { !$0.applicationProtocols.isEmpty }
        var original = true
        if let list = l.inspectors {
            inspectTLS = false; inspectHTTP = false; original = false
            for n in list {
                switch n.value {
                case "tls": inspectTLS = true
                case "http": inspectHTTP = true
                case "original_dst": original = true
                default: fail(n.position, "inspectors are 'tls', 'http' and 'original_dst', not '\(n.value)'")
                }
            }
        }
        let timeout = l.inspectTimeout?.value ?? defaultInspectTimeoutNanoseconds
        if let t = l.inspectTimeout, !(0...300_000_000_000).contains(t.value) { fail(t.position, "inspect_timeout must be 0 (no limit) to 5m") }
        var chains = FilterChains(matches: matches, targets: targets, defaultTarget: defaultTarget,
                                  inspectTLS: inspectTLS, inspectHTTP: inspectHTTP, inspectTimeoutNanoseconds: timeout,
                                  continueOnTimeout: l.continueOnInspectTimeout?.value ?? false)
        func ports(_ ranges: [ClosedRange<Int>]) -> [ClosedRange<UInt16>] {
            ranges.map { UInt16(clamping: $0.lowerBound)...UInt16(clamping: $0.upperBound) }
        }
        chains.matchOriginalDestination = original
        chains.tlsOffPorts = ports(l.tlsInspectorOffPorts)
        chains.httpOffPorts = ports(l.httpInspectorOffPorts)
        listeners[selector].chains = chains
    }

    static func compileMatch(_ m: ChainMatchDocument, listener: String, fail: (SourcePosition, String) -> Void) -> ChainMatch? {
        var out = ChainMatch()
        var ok = true
        func bad(_ p: SourcePosition, _ text: String) { fail(p, "listener '\(listener)': \(text)"); ok = false }
        if let p = m.destinationPort {
            if (1...65535).contains(p.value) { out.destinationPort = UInt16(p.value) } else { bad(p.position, "destination_port must be 1 to 65535") }
        }
        func prefixes(_ list: [Located<String>], _ key: String) -> [AddressPrefix] {
            list.compactMap { t in
                let parts = t.value.split(separator: "/", omittingEmptySubsequences: false)
                let host = String(parts[0])
                let length = parts.count == 2 ? Int(parts[1]) : (host.contains(":") ? 128 : 32)
                guard parts.count <= 2, let length, let p = AddressPrefix(address: host, length: length) else {
                    bad(t.position, "\(key): '\(t.value)' is not an address prefix such as 10.0.0.0/8 or ::/0"); return nil
                }
                return p
            }
        }
        out.destinationPrefixes = prefixes(m.destinationPrefixes, "prefix_ranges")
        out.sourcePrefixes = prefixes(m.sourcePrefixes, "source_prefix_ranges")
        for n in m.serverNames {
            let lower = n.value.lowercased()
            let rest = lower.hasPrefix("*.") ? String(lower.dropFirst(2)) : lower
            if rest.isEmpty || rest.contains("*") || rest.contains(" ") { bad(n.position, "server_names: '\(n.value)' is not a name or *.suffix"); continue }
            out.serverNames.append(lower)
        }
        if let t = m.transportProtocol {
            if t.value == "tls" || t.value == "raw_buffer" { out.transportProtocol = t.value }
            else { bad(t.position, "transport_protocol must be 'tls' or 'raw_buffer', not '\(t.value)'") }
        }
        for a in m.applicationProtocols {
            if a.value.isEmpty || a.value.utf8.count > 255 { bad(a.position, "application_protocols: a protocol name is 1 to 255 bytes") }
            else { out.applicationProtocols.append(a.value) }
        }
        for p in m.sourcePorts {
            if (1...65535).contains(p.value) { out.sourcePorts.append(UInt16(p.value)) } else { bad(p.position, "source_ports must be 1 to 65535") }
        }
        return ok ? out : nil
    }
}
