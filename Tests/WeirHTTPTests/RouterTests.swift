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
