import Testing
@testable import WeirHTTP

func route(_ table: RouteTable, _ text: String) -> Int? {
    let headers = HeaderTable(capacity: 64)
    return Array(text.utf8).withUnsafeBytes { buf -> Int? in
        guard case .complete(let head) = HTTPParser.parseRequest(buf, limits: HTTPLimits(), headers: headers) else { return -1 }
        return table.firstMatch(head, source: buf, headers: headers)
    }
}

func req(_ method: String = "GET", _ target: String, host: String = "example.com", extra: String = "") -> String {
    "\(method) \(target) HTTP/1.1\r\nHost: \(host)\r\n\(extra)\r\n"
}

@Suite struct RouterTests {
    let table: RouteTable = {
        var api = RouteMatch(); api.hosts = [HostPattern("api.example.com")]; api.path = .prefix(Array("/v1/".utf8))
        var exact = RouteMatch(); exact.path = .exact(Array("/healthz".utf8))
        var wild = RouteMatch(); wild.hosts = [HostPattern("*.example.org")]
        var canary = RouteMatch(); canary.headers = [HeaderMatch(name: "X-Canary", value: "yes")]; canary.path = .prefix(Array("/".utf8))
        var posts = RouteMatch(); posts.methods = [.post, .put]
        var debug = RouteMatch(); debug.headers = [HeaderMatch(name: "x-debug", value: nil)]
        return RouteTable([api, exact, wild, canary, posts, debug])
    }()

    @Test func firstMatchWinsInOrder() {
        #expect(route(table, req("GET", "/v1/users", host: "api.example.com")) == 0)
        #expect(route(table, req("GET", "/v1/users?x=1", host: "API.Example.com:8443")) == 0)
        #expect(route(table, req("GET", "/v2/users", host: "api.example.com")) == nil)
        #expect(route(table, req("GET", "/healthz")) == 1)
        #expect(route(table, req("GET", "/healthz/more")) == nil)
        #expect(route(table, req("GET", "/healthz?verbose")) == 1)
    }

    @Test func wildcardHostsMatchSubdomainsOnly() {
        #expect(route(table, req("GET", "/", host: "a.example.org")) == 2)
        #expect(route(table, req("GET", "/", host: "a.b.example.org")) == 2)
        #expect(route(table, req("GET", "/", host: "example.org")) == nil)
        #expect(route(table, req("GET", "http://x.example.org/p", host: "other")) == 2)
    }

    @Test func aPrefixWildcardMatchesTheHostOnAnyPort() {
        // Istio's gateways write "a.example.com" and "a.example.com:*" and match with the port.
        var a = RouteMatch(); a.hosts = [HostPattern("a.example.com"), HostPattern("a.example.com:*")]
        var other = RouteMatch(); other.hosts = [HostPattern("b.*")]
        let t = RouteTable([a, other], stripsPort: false)
        #expect(route(t, req("GET", "/", host: "a.example.com")) == 0)
        #expect(route(t, req("GET", "/", host: "A.Example.com:8443")) == 0)
        #expect(route(t, req("GET", "/", host: "a.example.com:")) == nil, "the wildcard matches at least one byte")
        #expect(route(t, req("GET", "/", host: "a.example.comm")) == nil)
        #expect(route(t, req("GET", "/", host: "b.anything")) == 1)
        #expect(HostPattern("a.example.com:*").text == "a.example.com:*" && HostPattern("*.x.com").text == "*.x.com")
    }

    @Test func headersAndMethods() {
        #expect(route(table, req("GET", "/x", extra: "X-Canary: yes\r\n")) == 3)
        #expect(route(table, req("GET", "/x", extra: "X-Canary: no\r\n")) == nil)
        #expect(route(table, req("POST", "/x", extra: "Content-Length: 0\r\n")) == 4)
        #expect(route(table, req("DELETE", "/x")) == nil)
        #expect(route(table, req("DELETE", "/x", extra: "x-DEBUG: \r\n")) == 5)
    }

    @Test func anIPv6HostKeepsItsColons() {
        var r = RouteMatch(); r.hosts = [HostPattern("[::1]")]
        #expect(route(RouteTable([r]), req("GET", "/", host: "[::1]:8080")) == 0)
        #expect(route(RouteTable([r]), req("GET", "/", host: "[::1]")) == 0)
    }
}

@Suite struct RouteIndexTests {
    /// The host index must pick exactly what a route-by-route scan picks: random tables of
    /// exact, wildcard and host-less routes against random requests.
    @Test func theIndexAgreesWithAScanInOrder() {
        var rng = SystemRandomNumberGenerator()
        let hosts = ["a.example.com", "b.example.com", "example.com", "x.y.example.com", "other.net", "A.EXAMPLE.COM"]
        let patterns = ["a.example.com", "*.example.com", "example.com", "*.y.example.com", "other.net", "*.net"]
        let paths = ["/", "/api", "/api/v1", "/static"]
        for _ in 0..<20 {
            var routes: [RouteMatch] = []
            for _ in 0..<60 {
                var r = RouteMatch()
                let k = Int.random(in: 0...2, using: &rng)
                for _ in 0..<k { r.hosts.append(HostPattern(patterns.randomElement(using: &rng)!)) }
                if Bool.random(using: &rng) { r.path = .prefix(Array(paths.randomElement(using: &rng)!.utf8)) }
                routes.append(r)
            }
            let table = RouteTable(routes)
            for _ in 0..<100 {
                let text = req("GET", paths.randomElement(using: &rng)! + "/x", host: hosts.randomElement(using: &rng)!)
                let headers = HeaderTable(capacity: 16)
                let (indexed, scanned) = Array(text.utf8).withUnsafeBytes { buf -> (Int?, Int?) in
                    guard case .complete(let head) = HTTPParser.parseRequest(buf, limits: HTTPLimits(), headers: headers) else { return (-1, -2) }
                    let (host, path) = RouteTable.hostAndPath(head, buf)
                    let scan = routes.indices.first { RouteTable.matches(routes[$0], head, buf, headers, host: host, path: path) }
                    return (table.firstMatch(head, source: buf, headers: headers), scan)
                }
                #expect(indexed == scanned, "\(text.debugDescription)")
            }
        }
    }

    @Test func headerTestsPrefixSuffixContainsRegexAbsentAndInverted() throws {
        func table(_ m: HeaderMatch) -> RouteTable { var r = RouteMatch(); r.headers = [m]; return RouteTable([r]) }
        let prefix = table(HeaderMatch(name: "X-User", test: .prefix(Array("adm".utf8))))
        #expect(route(prefix, req("GET", "/", extra: "x-user: admin\r\n")) == 0)
        #expect(route(prefix, req("GET", "/", extra: "x-user: ADMIN\r\n")) == nil)
        #expect(route(prefix, req("GET", "/")) == nil)
        let suffix = table(HeaderMatch(name: "x-user", test: .suffix(Array("@corp".utf8)), ignoreCase: true))
        #expect(route(suffix, req("GET", "/", extra: "x-user: bob@CORP\r\n")) == 0)
        #expect(route(suffix, req("GET", "/", extra: "x-user: bob@corp.net\r\n")) == nil)
        let contains = table(HeaderMatch(name: "x-note", test: .contains(Array("urgent".utf8))))
        #expect(route(contains, req("GET", "/", extra: "x-note: very urgent!\r\n")) == 0)
        #expect(route(contains, req("GET", "/", extra: "x-note: urgen\r\n")) == nil)
        let regex = table(HeaderMatch(name: "x-tier", test: .regex(try PathRegex("gold|silver"))))
        #expect(route(regex, req("GET", "/", extra: "x-tier: silver\r\n")) == 0)
        #expect(route(regex, req("GET", "/", extra: "x-tier: golden\r\n")) == nil, "the whole value must match")
        let absent = table(HeaderMatch(name: "x-debug", test: .absent))
        #expect(route(absent, req("GET", "/")) == 0)
        #expect(route(absent, req("GET", "/", extra: "x-debug: 1\r\n")) == nil)
        let notProd = table(HeaderMatch(name: "x-env", test: .exact(Array("prod".utf8)), invert: true))
        #expect(route(notProd, req("GET", "/", extra: "x-env: dev\r\n")) == 0)
        #expect(route(notProd, req("GET", "/", extra: "x-env: prod\r\n")) == nil)
        #expect(route(notProd, req("GET", "/")) == nil, "a missing header fails a value test even inverted (as in Envoy)")
        let notPresent = table(HeaderMatch(name: "x-debug", test: .present, invert: true))
        #expect(route(notPresent, req("GET", "/")) == 0)
    }
}
