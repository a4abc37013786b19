// normalize_path's canonical form: dot segments, unreserved escapes, backslashes, the query kept.
import Testing
@testable import WeirHTTP

func normalized(_ target: String) -> String? {
    var bytes = Array(target.utf8)
    let outcome = bytes.withUnsafeMutableBufferPointer { PathNormalizer.normalize($0.baseAddress!, count: $0.count) }
    switch outcome {
    case .unchanged: return target
    case .normalized(let n): return String(decoding: bytes[0..<n], as: UTF8.self)
    }
}

@Suite struct PathNormalizerTests {
    @Test func dotSegmentsAreRemoved() {
        #expect(normalized("/a/../admin") == "/admin")
        #expect(normalized("/a/./b") == "/a/b")
        #expect(normalized("/../../admin") == "/admin", "'..' at the root stays at the root")
        #expect(normalized("/a/b/..") == "/a/")
        #expect(normalized("/a/.") == "/a/")
        #expect(normalized("/.") == "/")
        #expect(normalized("/..") == "/")
        #expect(normalized("/a/b/../../c/./d/") == "/c/d/")
        #expect(normalized("/a..b/.c/..d") == "/a..b/.c/..d", "dots inside names are names")
        #expect(normalized("//a//b") == "//a//b", "empty segments stay (merge_slashes is another option)")
    }

    @Test func escapesOfUnreservedBytesAreDecodedBeforeDots() {
        #expect(normalized("/%2e%2e/admin") == "/admin")
        #expect(normalized("/a/%2E%2e/admin") == "/admin")
        #expect(normalized("/%61dmin") == "/admin")
        #expect(normalized("/a%2fb") == "/a%2fb", "an escaped slash stays escaped, as written")
        #expect(normalized("/a%20b") == "/a%20b")
        #expect(normalized("/a%zzb") == "/a%zzb" && normalized("/a%2") == "/a%2" && normalized("/a%") == "/a%", "a malformed escape stays as written (as in Envoy)")
    }

    @Test func backslashesAreSlashesAndTheQueryStays() {
        #expect(normalized("/a\\..\\admin") == "/admin")
        #expect(normalized("/a/../b?x=/../y&%2e") == "/b?x=/../y&%2e")
        #expect(normalized("/ok?q") == "/ok?q")
        #expect(normalized("http://h/a/../b") == "http://h/a/../b", "only paths (the proxy finds the path of an absolute-form target)")
        #expect(normalized("*") == "*")
    }

    @Test func escapesThatDecodingBuildsAreDecodedToo() {
        #expect(normalized("/%2%65%2%65/admin") == "/admin", "a fixpoint, not one pass")
        #expect(normalized("/%252e") == "/%252e", "%25 is not unreserved: a double-encoded dot stays")
    }

    /// The result is never longer, is already canonical, and never starts with "..".
    @Test func normalizingIsIdempotentOnRandomPaths() {
        var rng = SystemRandomNumberGenerator()
        let pieces = ["/", ".", "..", "a", "%2e", "%2E", "%2f", "\\", "b", "%41", "?", "x", "%", "%2", "%6", "5", "e", "1"]
        for _ in 0..<3000 {
            let path = "/" + (0..<Int.random(in: 0...10, using: &rng)).map { _ in pieces.randomElement(using: &rng)! }.joined()
            let once = normalized(path)!
            #expect(once.utf8.count <= path.utf8.count)
            #expect(normalized(once) == once, "\(path) -> \(once)")
            let p = once.prefix { $0 != "?" }
            #expect(!p.split(separator: "/", omittingEmptySubsequences: false).contains { $0 == ".." || $0 == "." }, "\(path) -> \(once)")
        }
    }
}
