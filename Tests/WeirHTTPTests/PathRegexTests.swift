// Route path regular expressions: RE2's common subset compiled to a DFA, matched against the
// whole path.
import Testing
@testable import WeirHTTP

@Suite struct PathRegexTests {
    @Test(arguments: [
        ("/api/v[0-9]+/users", "/api/v12/users", true), ("/api/v[0-9]+/users", "/api/v/users", false),
        ("/api/v[0-9]+/users", "/api/v1/users/x", false),
        ("/(a|b)*c", "/ababc", true), ("/(a|b)*c", "/c", true), ("/(a|b)*c", "/abd", false),
        ("^/x/\\d{2,3}$", "/x/12", true), ("^/x/\\d{2,3}$", "/x/123", true), ("^/x/\\d{2,3}$", "/x/1234", false), ("^/x/\\d{2,3}$", "/x/1", false),
        ("/files/.*\\.png", "/files/a/b.png", true), ("/files/.*\\.png", "/files/a.jpg", false), ("/files/.*\\.png", "/files/apng", false),
        ("[^/]+", "abc", true), ("[^/]+", "a/b", false), ("[^/]+", "", false),
        ("/a{0}b", "/b", true), ("/a{2,}", "/aaaa", true), ("/a{2,}", "/a", false),
        ("(?:/v1)?/health", "/health", true), ("(?:/v1)?/health", "/v1/health", true), ("(?:/v1)?/health", "/v2/health", false),
        ("/a.*?b", "/axxb", true), ("[\\w.-]+", "a.b-c_d", true), ("[\\w.-]+", "a b", false),
        ("/[a-c\\d]x", "/bx", true), ("/[a-c\\d]x", "/7x", true), ("/[a-c\\d]x", "/dx", false),
        ("/\\S+", "/a b", false), ("/\\(\\)", "/()", true), ("a|", "", true), ("", "", true), ("", "/", false),
    ])
    func matchesTheWholePath(_ pattern: String, _ path: String, _ expected: Bool) throws {
        #expect(try PathRegex(pattern).matches(path) == expected, "\(pattern) on \(path)")
    }

    @Test(arguments: [
        ("(a", "unclosed '('"), ("a)", "unbalanced ')'"), ("*a", "nothing to repeat"), ("\\bword", "'\\b' is not supported"),
        ("(?i)abc", "only (?:...) groups"), ("a{3,2}", "below the minimum"), ("[z-a]", "out of order"), ("a^b", "only at the start and end"),
        ("[abc", "unclosed '['"), ("a{1001}", "counts up to 1000"), ("[[:alpha:]]", "POSIX classes"), ("(a)\\1", "'\\1' is not supported"),
        ("(x{100}){100}", "too large"), ("(a|b)*a(a|b){12}", "too complex"),
    ])
    func unsupportedOrBrokenPatternsAreErrorsThatSayWhy(_ pattern: String, _ why: String) {
        do {
            _ = try PathRegex(pattern)
            Issue.record("\(pattern) compiled")
        } catch {
            #expect("\(error)".contains(why), "\(pattern): \(error)")
        }
    }

    @Test func aRouteMatchesOnTheRegexWithoutTheQuery() throws {
        var m = RouteMatch()
        m.path = .regex(try PathRegex("/items/[0-9]+"))
        let table = RouteTable([m])
        for (target, expected) in [("/items/42", true), ("/items/42?x=1", true), ("/items/42/x", false), ("/items/", false)] {
            #expect((route(table, req("GET", target)) == 0) == expected, "\(target)")
        }
        // Hosts keep or lose their port as the table says (Envoy keeps it by default).
        var h = RouteMatch(); h.hosts = [HostPattern("a.example")]
        #expect(route(RouteTable([h]), req("GET", "/", host: "a.example:8080")) == 0)
        #expect(route(RouteTable([h], stripsPort: false), req("GET", "/", host: "a.example:8080")) == nil)
        #expect(route(RouteTable([h], stripsPort: false), req("GET", "/", host: "a.example")) == 0)
    }
}
