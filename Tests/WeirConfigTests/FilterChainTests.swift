import Testing
@testable import WeirConfig
import WeirCore
import WeirHTTP

func key(_ text: String) -> AddressKey { AddressKey(try! SocketAddress.parse(text)) }
func prefix(_ text: String) -> AddressPrefix {
    let parts = text.split(separator: "/")
    return AddressPrefix(address: String(parts[0]), length: Int(parts[1])!)!
}

/// Chooses with the given facts; the ALPN names are turned into their wire form here.
func choose(_ chains: FilterChains, to destination: String, from source: String = "10.1.1.1:40000", tls: Bool = false,
            sni: String? = nil, alpn: [String] = []) -> Int? {
    var facts = ConnectionFacts(destination: key(destination), source: key(source))
    facts.isTLS = tls
    let sniBytes = Array((sni ?? "").utf8)
    let alpnBytes = alpn.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
    return sniBytes.withUnsafeBytes { s in
        alpnBytes.withUnsafeBytes { a in
            facts.serverName = s
            facts.alpn = a
            return chains.select(facts)
        }
    }
}

func chains(_ matches: [ChainMatch]) -> FilterChains {
    FilterChains(matches: matches, targets: Array(matches.indices), defaultTarget: nil, inspectTLS: true, inspectHTTP: true)
}

@Suite struct FilterChainTests {
    @Test func aDestinationPortBeatsEveryLaterCriterion() {
        var port = ChainMatch(); port.destinationPort = 9080
        var tls = ChainMatch(); tls.transportProtocol = "tls"
        let c = chains([tls, port])
        // Port 9080 keeps only the port chain, and it has no transport criterion: it serves TLS too.
        #expect(choose(c, to: "10.0.0.1:9080", tls: true) == 1)
        #expect(choose(c, to: "10.0.0.1:9081", tls: true) == 0)
        // Another port, plaintext: the tls chain fails and there is no chain without the criterion.
        #expect(choose(c, to: "10.0.0.1:9081") == nil)
    }

    @Test func aNarrowerMatchAtOneStepExcludesTheCatchAllEvenWhenALaterStepFails() {
        // Envoy's order: the port step keeps only chain 0, so the TLS step fails there and the
        // catch-all (chain 1) is never reached; the default chain serves.
        var port = ChainMatch(); port.destinationPort = 80; port.transportProtocol = "tls"
        var c = chains([port, ChainMatch()])
        c.defaultTarget = 7
        #expect(choose(c, to: "10.0.0.1:80") == nil)
        #expect(c.target(ConnectionFacts(destination: key("10.0.0.1:80"), source: key("10.1.1.1:1"))) == 7)
        #expect(choose(c, to: "10.0.0.1:81") == 1)
    }

    @Test func theLongestDestinationPrefixWins() {
        var wide = ChainMatch(); wide.destinationPrefixes = [prefix("10.0.0.0/8")]
        var narrow = ChainMatch(); narrow.destinationPrefixes = [prefix("10.1.0.0/16"), prefix("192.168.0.0/16")]
        let c = chains([wide, narrow, ChainMatch()])
        #expect(choose(c, to: "10.1.2.3:80") == 1)
        #expect(choose(c, to: "10.2.2.3:80") == 0)
        #expect(choose(c, to: "11.0.0.1:80") == 2)
        // An IPv4 prefix never matches IPv6, and ::/0 matches every IPv6 address.
        var v6 = ChainMatch(); v6.destinationPrefixes = [prefix("::/0")]
        let d = chains([wide, v6])
        #expect(choose(d, to: "[2001:db8::1]:80", from: "[2001:db8::2]:1") == 1)
        #expect(choose(d, to: "127.0.0.1:80") == nil)
    }

    @Test func anExactServerNameBeatsTheLongestWildcardWhichBeatsAShorterOne() {
        var exact = ChainMatch(); exact.serverNames = ["api.example.com"]
        var wild = ChainMatch(); wild.serverNames = ["*.example.com"]
        var wider = ChainMatch(); wider.serverNames = ["*.com"]
        let c = chains([wider, wild, exact, ChainMatch()])
        #expect(choose(c, to: "10.0.0.1:443", tls: true, sni: "API.example.com") == 2)
        #expect(choose(c, to: "10.0.0.1:443", tls: true, sni: "www.example.com") == 1)
        #expect(choose(c, to: "10.0.0.1:443", tls: true, sni: "a.b.example.com") == 1)
        #expect(choose(c, to: "10.0.0.1:443", tls: true, sni: "other.com") == 0)
        // A wildcard does not match the bare domain; no SNI goes to the chain without names.
        #expect(choose(c, to: "10.0.0.1:443", tls: true, sni: "example.com") == 0)
        #expect(choose(c, to: "10.0.0.1:443", tls: true) == 3)
    }

    @Test func istiosInboundChainsChooseByTransportAndApplicationProtocol() {
        // virtualInbound's shape: mTLS chains (refused here, target -1), plaintext HTTP, plaintext TCP.
        var mtls = ChainMatch(); mtls.destinationPrefixes = [prefix("0.0.0.0/0")]; mtls.transportProtocol = "tls"; mtls.applicationProtocols = ["istio-peer-exchange", "istio"]
        var tcp = ChainMatch(); tcp.destinationPrefixes = [prefix("0.0.0.0/0")]; tcp.transportProtocol = "raw_buffer"
        var http = ChainMatch(); http.destinationPrefixes = [prefix("0.0.0.0/0")]; http.transportProtocol = "raw_buffer"; http.applicationProtocols = ["http/1.0", "http/1.1", "h2c"]
        var port = ChainMatch(); port.destinationPort = 9080; port.transportProtocol = "raw_buffer"
        let c = FilterChains(matches: [mtls, tcp, http, port], targets: [-1, 11, 12, 13], defaultTarget: nil, inspectTLS: true, inspectHTTP: true)
        #expect(choose(c, to: "10.0.0.5:8080", alpn: ["http/1.1"]) == 2)
        #expect(choose(c, to: "10.0.0.5:8080") == 1)
        #expect(choose(c, to: "10.0.0.5:9080", alpn: ["http/1.1"]) == 3)
        #expect(choose(c, to: "10.0.0.5:8080", tls: true, alpn: ["istio"]) == 0)
        // The refused chain closes its connections: they never fall through to another chain.
        var f = ConnectionFacts(destination: key("10.0.0.5:8080"), source: key("10.1.1.1:1"))
        f.isTLS = true
        #expect(c.target(f) == nil)
    }

    @Test func sourcePrefixAndPortComeLast() {
        var a = ChainMatch(); a.sourcePrefixes = [prefix("10.1.0.0/16")]
        var b = ChainMatch(); b.sourcePrefixes = [prefix("10.1.0.0/16")]; b.sourcePorts = [5000]
        let c = chains([a, b])
        #expect(choose(c, to: "10.0.0.1:80", from: "10.1.9.9:5000") == 1)
        #expect(choose(c, to: "10.0.0.1:80", from: "10.1.9.9:5001") == 0)
        #expect(choose(c, to: "10.0.0.1:80", from: "10.2.9.9:5000") == nil)
    }

    @Test func theHTTPInspectorTellsHTTP1FromH2cAndFromOtherBytes() {
        func sniff(_ s: String) -> SniffedProtocol { Array(s.utf8).withUnsafeBytes { HTTPSniffer.sniff($0) } }
        #expect(sniff("GET / HTTP/1.1\r\nHost: a\r\n") == .http11)
        #expect(sniff("POST /x?y HTTP/1.0\r\n") == .http10)
        #expect(sniff("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == .h2c)
        #expect(sniff("PRI * HTTP/2") == .incomplete)
        #expect(sniff("GET /index") == .incomplete)
        #expect(sniff("GET / HTTP/1.") == .incomplete)
        #expect(sniff("") == .incomplete)
        #expect(sniff("\u{16}\u{3}\u{1}") == .unknown)
        #expect(sniff("SSH-2.0-OpenSSH_9.2\r\n") == .unknown)
        #expect(sniff("GET / HTTP/2.0\r\n") == .unknown)
        #expect(sniff("GET  / HTTP/1.1\r\n") == .unknown)
    }

    @Test func theClientHellosALPNListIsRead() {
        let hello = ClientHello.sample
        guard case .hello(_, let alpn?) = hello.withUnsafeBytes({ ClientHello.parse($0) }) else {
            Issue.record("the sample ClientHello offers ALPN"); return
        }
        let list = Array(hello[Int(alpn.start)..<Int(alpn.end)])
        var names: [String] = [], p = 0
        while p < list.count { let n = Int(list[p]); names.append(String(decoding: list[(p + 1)..<(p + 1 + n)], as: UTF8.self)); p += 1 + n }
        #expect(names.contains("http/1.1"))
    }
}

@Suite struct FilterChainConfigTests {
    static let base = """
    listeners:
      - name: edge
        address: 127.0.0.1:8000
        chains:
          - name: web
            match: { transport_protocol: raw_buffer, application_protocols: [http/1.1, h2c] }
            protocol: http
            routes: [{ cluster: web }]
          - name: secure
            match: { server_names: ["*.example.com"] }
            cluster: tcp
        default_chain:
          cluster: tcp
    clusters:
      - name: web
        endpoints: [{ address: 127.0.0.1:9001 }]
      - name: tcp
        endpoints: [{ address: 127.0.0.1:9002 }]
    """

    @Test func chainsCompileToListenersOfTheirOwnAndASelector() throws {
        let s = try Compiler.compile(YAMLLoader.parse(Self.base, file: "t.yaml"))
        #expect(s.listeners.map(\.name) == ["edge", "edge/web", "edge/secure", "edge/default"])
        let chains = try #require(s.listeners[0].chains)
        #expect(chains.targets == [1, 2])
        #expect(chains.defaultTarget == 3)
        #expect(chains.inspectTLS && chains.inspectHTTP && chains.readsFirstBytes(port: 8000))
        #expect(s.listeners[1].proto == .http && !s.listeners[1].binds && s.listeners[1].chainOf == 0)
        #expect(s.listeners[0].binds)
        #expect(s.listenerByAddress.count == 1)
    }

    @Test func badChainsAreNamedWhereTheyAreWritten() {
        let own = Self.base.replacingOccurrences(of: "    chains:\n", with: "    cluster: tcp\n    chains:\n")
        #expect(errors(own).contains { $0.contains("has chains: 'cluster' belongs in each chain") })
        let twice = Self.base.replacingOccurrences(of: "match: { server_names: [\"*.example.com\"] }",
                                                   with: "match: { transport_protocol: raw_buffer, application_protocols: [http/1.1, h2c] }")
        #expect(errors(twice).contains { $0.contains("chains 'web' and 'secure' have the same match") })
        let badMatch = Self.base.replacingOccurrences(of: "transport_protocol: raw_buffer,", with: "transport_protocol: quic, prefix_ranges: [10.0.0.0/33],")
        let e = errors(badMatch)
        #expect(e.contains { $0.contains("transport_protocol must be 'tls' or 'raw_buffer', not 'quic'") })
        #expect(e.contains { $0.contains("'10.0.0.0/33' is not an address prefix") })
        let badInspector = Self.base.replacingOccurrences(of: "    chains:\n", with: "    inspectors: [tls, quic]\n    chains:\n")
        #expect(errors(badInspector).contains { $0.contains("inspectors are 'tls', 'http' and 'original_dst', not 'quic'") })
    }

    @Test func anOriginalDestinationClusterListsNoEndpoints() {
        let yaml = """
        listeners:
          - { name: out, address: 127.0.0.1:15001, use_original_destination: true, cluster: passthrough }
        clusters:
          - { name: passthrough, original_destination: true, source_address: 127.0.0.6 }
        """
        #expect(errors(yaml) == [])
        let listed = yaml.replacingOccurrences(of: "source_address: 127.0.0.6", with: "endpoints: [{ address: 127.0.0.1:1 }]")
        #expect(errors(listed).contains { $0.contains("is original_destination: it lists no endpoints") })
        let badSource = yaml.replacingOccurrences(of: "127.0.0.6", with: "localhost")
        #expect(errors(badSource).contains { $0.contains("source_address 'localhost' is not an IP") })
    }
}
