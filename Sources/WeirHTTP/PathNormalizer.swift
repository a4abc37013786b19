// normalize_path: a request path in its canonical form before routing and forwarding, so a route
// that guards /admin cannot be walked around with /a/../admin, /%2e%2e/admin or \admin. In
// place (the result is never longer), allocation-free:
//   1. percent-encoded unreserved bytes (ALPHA DIGIT - . _ ~) are decoded (RFC 3986 section
//      6.2.2.2); other escapes stay as written (%2f stays an escaped slash: decoding it would
//      change where the path splits), and so does a '%' not followed by two hex digits;
//   2. a backslash becomes a slash (several servers read it as one);
//   3. dot segments are removed (RFC 3986 section 5.2.4); ".." at the root stays at the root.
// The query is left as it is. Envoy 1.40 with normalize_path gives the same paths for the cases
// in EnvoyOracleTests.weirAndEnvoyNormalizePathsAlike. Unlike a single pass, `normalize` runs to
// a fixpoint: "/%2%65%2%65/admin" decodes to "/%2e%2e/admin" and then to "/admin", so an
// upstream that decodes once more cannot be handed a path the routes did not see.

public enum PathNormalizer {
    public enum Outcome: Equatable {
        /// The path was already canonical.
        case unchanged
        /// The normalized path (and the query after it) now fill [start, start + length).
        case normalized(length: Int)
    }

    @inline(__always) static func hex(_ b: UInt8) -> UInt8? {
        switch b {
        case 0x30...0x39: return b - 0x30
        case 0x41...0x46: return b - 0x41 + 10
        case 0x61...0x66: return b - 0x61 + 10
        default: return nil
        }
    }

    @inline(__always) static func unreserved(_ b: UInt8) -> Bool {
        (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x2D || b == 0x2E || b == 0x5F || b == 0x7E
    }

    /// Normalizes the path in p[0..<count] (starting with "/", then maybe "?query"), to a
    /// fixpoint. Anything not starting with "/" (an authority or "*") is left unchanged.
    public static func normalize(_ p: UnsafeMutablePointer<UInt8>, count: Int) -> Outcome {
        var length = count
        var changed = false
        // Each pass that changes something is no longer than the one before, and a decode can
        // only make a new escape out of an old one, so a few passes settle.
        for _ in 0..<8 {
            switch pass(p, count: length) {
            case .unchanged: return changed ? .normalized(length: length) : .unchanged
            case .normalized(let n): length = n; changed = true
            }
        }
        return .normalized(length: length)
    }

    static func pass(_ p: UnsafeMutablePointer<UInt8>, count: Int) -> Outcome {
        guard count > 0, p[0] == UInt8(ascii: "/") else { return .unchanged }
        var pathEnd = 0
        while pathEnd < count && p[pathEnd] != UInt8(ascii: "?") { pathEnd += 1 }
        // 1 and 2: escapes and backslashes, left to right; w never passes r.
        var w = 0, r = 0
        var changed = false
        while r < pathEnd {
            let b = p[r]
            if b == UInt8(ascii: "%"), r + 2 < pathEnd, let hi = hex(p[r + 1]), let lo = hex(p[r + 2]), unreserved(hi << 4 | lo) {
                p[w] = hi << 4 | lo; w += 1; r += 3; changed = true
                continue
            }
            if b == UInt8(ascii: "\\") { p[w] = UInt8(ascii: "/"); changed = true } else { p[w] = b }
            w += 1; r += 1
        }
        // 3: dot segments over p[0..<w], written again from the start.
        let decodedEnd = w
        var out = 0
        var i = 0
        while i < decodedEnd {
            // p[i] is "/": the segment runs to the next "/" or the end.
            var e = i + 1
            while e < decodedEnd && p[e] != UInt8(ascii: "/") { e += 1 }
            let len = e - (i + 1)
            let last = e >= decodedEnd
            if len == 1 && p[i + 1] == UInt8(ascii: ".") {
                changed = true
                if last { p[out] = UInt8(ascii: "/"); out += 1 }
            } else if len == 2 && p[i + 1] == UInt8(ascii: ".") && p[i + 2] == UInt8(ascii: ".") {
                changed = true
                // Back to the slash before the last output segment (or the root).
                while out > 0 { out -= 1; if p[out] == UInt8(ascii: "/") { break } }
                if last { p[out] = UInt8(ascii: "/"); out += 1 }
            } else {
                // Copy "/segment" (out <= i always, so a forward copy is safe).
                for k in i..<e { p[out] = p[k]; out += 1 }
            }
            i = e
        }
        if out == 0 { p[0] = UInt8(ascii: "/"); out = 1 }
        guard changed || out != pathEnd else { return .unchanged }
        // The query follows the path again.
        let query = count - pathEnd
        // out < pathEnd here, so a forward copy never reads what it wrote.
        if out != pathEnd { for k in 0..<query { p[out + k] = p[pathEnd + k] } }
        return .normalized(length: out + query)
    }
}
