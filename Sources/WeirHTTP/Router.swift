// Route matching on a parsed head, in order, first match wins. Patterns are compiled to bytes
// when the snapshot compiles; matching compares bytes in place and allocates nothing.

public enum HostPattern: Equatable, Sendable {
    /// Lowercase host, no port.
    case exact([UInt8])
    /// "*.example.com" stored as ".example.com": matches any host ending in it (not the bare
    /// domain, as in Envoy and nginx).
    case suffix([UInt8])
    /// "example.com:*" stored as "example.com:": any host starting with it and longer (Envoy's
    /// prefix wildcard; Istio's gateways name a host on any port this way).
    case prefix([UInt8])

    public init(_ text: String) {
        let lower = Array(text.lowercased().utf8)
        if text.hasPrefix("*.") { self = .suffix(Array(lower.dropFirst())) }
        else if text.count > 1 && text.hasSuffix("*") { self = .prefix(Array(lower.dropLast())) }
        else { self = .exact(lower) }
    }

    /// As written.
    public var text: String {
        switch self {
        case .exact(let b): return String(decoding: b, as: UTF8.self)
        case .suffix(let b): return "*" + String(decoding: b, as: UTF8.self)
        case .prefix(let b): return String(decoding: b, as: UTF8.self) + "*"
        }
    }
}

extension HostPattern {
    /// Whether buf[range] (a host or server name, any case, no port) fits this pattern.
    public func matches(_ buf: UnsafeRawBufferPointer, _ range: ByteRange) -> Bool {
        RouteTable.hostMatches(self, buf, range)
    }
}

public enum PathPattern: Equatable, Sendable {
    case any
    case prefix([UInt8])
    case exact([UInt8])
    /// The whole path (without the query) matches this regular expression.
    case regex(PathRegex)
}

public struct HeaderMatch: Equatable, Sendable {
    public enum Test: Equatable, Sendable {
        case present
        case absent
        case exact([UInt8])
        case prefix([UInt8])
        case suffix([UInt8])
        case contains([UInt8])
        /// The whole value matches.
        case regex(PathRegex)
    }
    /// Lowercase field name.
    public var name: [UInt8]
    public var test: Test
    /// Compare exact, prefix, suffix and contains without case (ASCII).
    public var ignoreCase = false
    /// The result is inverted (but a missing field still fails a value test, as in Envoy).
    public var invert = false

    /// nil: the field must be present; else its value must equal this exactly.
    public init(name: String, value: String?) {
        self.name = Array(name.lowercased().utf8)
        self.test = value.map { .exact(Array($0.utf8)) } ?? .present
    }

    public init(name: String, test: Test, ignoreCase: Bool = false, invert: Bool = false) {
        self.name = Array(name.lowercased().utf8)
        self.test = test; self.ignoreCase = ignoreCase; self.invert = invert
    }
}

public struct RouteMatch: Equatable, Sendable {
    public var hosts: [HostPattern] = []
    public var path = PathPattern.any
    /// Empty: any method.
    public var methods: [Method] = []
    public var headers: [HeaderMatch] = []
    public init() {}
}

public struct RouteTable: Sendable {
    public let routes: [RouteMatch]
    /// Routes by host, so a table of thousands of virtual hosts is not scanned route by route:
    /// exact hosts and wildcard suffixes each map to the (ascending) routes that name them;
    /// routes without a host condition are always candidates.
    let exact: HostIndex
    let suffixes: HostIndex
    let anyHost: [Int32]
    /// Routes naming a prefix wildcard: few (Istio writes "host:*"), so checked one by one.
    let prefixed: [Int32]
    /// Match hosts without their port (Weir's default, and Envoy's strip_any_host_port), or with
    /// it, as Envoy does by default: there "example.com:8080" does not match "example.com".
    public let stripsPort: Bool

    public init(_ routes: [RouteMatch], stripsPort: Bool = true) {
        self.routes = routes
        self.stripsPort = stripsPort
        var exact: [UInt64: [Int32]] = [:], suffixes: [UInt64: [Int32]] = [:]
        var anyHost: [Int32] = [], prefixed: [Int32] = []
        for (i, r) in routes.enumerated() {
            if r.hosts.isEmpty { anyHost.append(Int32(i)); continue }
            for h in r.hosts {
                switch h {
                case .exact(let b): b.withUnsafeBytes { exact[HostIndex.hash($0, 0, b.count), default: []].append(Int32(i)) }
                case .suffix(let b): b.withUnsafeBytes { suffixes[HostIndex.hash($0, 0, b.count), default: []].append(Int32(i)) }
                case .prefix: if prefixed.last != Int32(i) { prefixed.append(Int32(i)) }
                }
            }
        }
        self.exact = HostIndex(exact)
        self.suffixes = HostIndex(suffixes)
        self.anyHost = anyHost
        self.prefixed = prefixed
    }

    /// The index of the first route that matches, or nil (the proxy answers 404). The first
    /// match overall is the smallest of each candidate list's first match.
    public func firstMatch(_ head: RequestHead, source: UnsafeRawBufferPointer, headers: HeaderTable) -> Int? {
        let (host, path) = Self.hostAndPath(head, source, stripPort: stripsPort)
        var best = Int32.max
        func scan(_ list: UnsafeBufferPointer<Int32>) {
            for i in list {
                if i >= best { return }
                if Self.matches(routes[Int(i)], head, source, headers, host: host, path: path) { best = i; return }
            }
        }
        anyHost.withUnsafeBufferPointer { scan($0) }
        if !prefixed.isEmpty { prefixed.withUnsafeBufferPointer { scan($0) } }
        if !exact.isEmpty || !suffixes.isEmpty {
            let start = Int(host.start), end = Int(host.end)
            exact.lookup(HostIndex.hash(source, start, end), scan)
            if !suffixes.isEmpty {
                // Every ".suffix" of the host: "a.b.example.com" tries ".b.example.com",
                // ".example.com", ".com".
                var k = start
                while k < end {
                    if source[k] == UInt8(ascii: ".") { suffixes.lookup(HostIndex.hash(source, k, end), scan) }
                    k += 1
                }
            }
        }
        return best == Int32.max ? nil : Int(best)
    }

    static func matches(_ r: RouteMatch, _ head: RequestHead, _ buf: UnsafeRawBufferPointer, _ headers: HeaderTable,
                        host: ByteRange, path: ByteRange) -> Bool {
        if !r.methods.isEmpty && !r.methods.contains(head.method) { return false }
        if !r.hosts.isEmpty && !r.hosts.contains(where: { hostMatches($0, buf, host) }) { return false }
        switch r.path {
        case .any: break
        case .prefix(let p): if path.count < p.count || !bytesEqual(buf, Int(path.start), p, caseInsensitive: false) { return false }
        case .exact(let p): if path.count != p.count || !bytesEqual(buf, Int(path.start), p, caseInsensitive: false) { return false }
        case .regex(let r): if !r.fullMatch(buf, Int(path.start), Int(path.end)) { return false }
        }
        for m in r.headers where !headerMatches(m, buf, headers) { return false }
        return true
    }

    /// Whether the head satisfies `m`: some field of that name passes the test, inverted when
    /// `m.invert`. As in Envoy, a missing field fails every value test, inverted or not.
    static func headerMatches(_ m: HeaderMatch, _ buf: UnsafeRawBufferPointer, _ headers: HeaderTable) -> Bool {
        var present = false, passed = false
        for i in 0..<headers.count {
            let name = headers.name(i)
            guard name.count == m.name.count, bytesEqual(buf, Int(name.start), m.name, caseInsensitive: true) else { continue }
            present = true
            let v = headers.value(i)
            let start = Int(v.start), count = Int(v.count)
            switch m.test {
            case .present, .absent: break
            case .exact(let w): if count == w.count && bytesEqual(buf, start, w, caseInsensitive: m.ignoreCase) { passed = true }
            case .prefix(let w): if count >= w.count && bytesEqual(buf, start, w, caseInsensitive: m.ignoreCase) { passed = true }
            case .suffix(let w): if count >= w.count && bytesEqual(buf, start + count - w.count, w, caseInsensitive: m.ignoreCase) { passed = true }
            case .contains(let w):
                var k = start
                while !passed && k + w.count <= start + count {
                    if bytesEqual(buf, k, w, caseInsensitive: m.ignoreCase) { passed = true }
                    k += 1
                }
            case .regex(let r): if r.fullMatch(buf, start, start + count) { passed = true }
            }
            if passed { break }
        }
        switch m.test {
        case .present: return present != m.invert
        case .absent: return present == m.invert
        default: return present && passed != m.invert
        }
    }

    static func hostMatches(_ p: HostPattern, _ buf: UnsafeRawBufferPointer, _ host: ByteRange) -> Bool {
        switch p {
        case .exact(let h): return host.count == h.count && bytesEqual(buf, Int(host.start), h, caseInsensitive: true)
        case .suffix(let s):
            return host.count > s.count && bytesEqual(buf, Int(host.end) - s.count, s, caseInsensitive: true)
        case .prefix(let p):
            return host.count > p.count && bytesEqual(buf, Int(host.start), p, caseInsensitive: true)
        }
    }

    static func bytesEqual(_ buf: UnsafeRawBufferPointer, _ at: Int, _ bytes: [UInt8], caseInsensitive: Bool) -> Bool {
        for k in 0..<bytes.count {
            let a = buf[at + k], b = bytes[k]
            if caseInsensitive ? (a | 0x20) != (b | 0x20) : a != b { return false }
        }
        return true
    }

    /// The host (Host field, or the authority of an absolute-form target), without port, and
    /// the path without the query.
    static func hostAndPath(_ head: RequestHead, _ buf: UnsafeRawBufferPointer, stripPort: Bool = true) -> (ByteRange, ByteRange) {
        let (authority, pathStart) = head.authorityAndPathStart(buf)
        let host = authority ?? head.host ?? ByteRange.empty
        let end = Int(head.target.end)
        // Strip a port, but not the colons inside an IPv6 literal ("[::1]:8080").
        var h = Int(host.end)
        var k = h - 1
        while k >= Int(host.start) && buf[k] >= UInt8(ascii: "0") && buf[k] <= UInt8(ascii: "9") { k -= 1 }
        if stripPort && k >= Int(host.start) && buf[k] == UInt8(ascii: ":") && k < h - 1 { h = k }
        var q = pathStart
        while q < end && buf[q] != UInt8(ascii: "?") { q += 1 }
        return (ByteRange(Int(host.start), h), ByteRange(pathStart, q))
    }
}

extension RequestHead {
    /// Where the target's path starts, and the authority of an absolute-form target
    /// ("scheme://authority/path"); an origin-form target is all path.
    public func authorityAndPathStart(_ buf: UnsafeRawBufferPointer) -> (authority: ByteRange?, pathStart: Int) {
        let start = Int(target.start), end = Int(target.end)
        guard start < end, buf[start] != UInt8(ascii: "/") && buf[start] != UInt8(ascii: "*") else { return (nil, start) }
        var i = start
        while i + 2 < end && !(buf[i] == UInt8(ascii: ":") && buf[i + 1] == UInt8(ascii: "/") && buf[i + 2] == UInt8(ascii: "/")) { i += 1 }
        let authorityStart = min(i + 3, end)
        var j = authorityStart
        while j < end && buf[j] != UInt8(ascii: "/") && buf[j] != UInt8(ascii: "?") { j += 1 }
        return (ByteRange(authorityStart, j), j)
    }
}

/// An open-addressing table from a host's hash (case-folded FNV-1a) to a list of route indices.
/// Lookups hash bytes in place and allocate nothing; a colliding hash only adds candidates, which
/// the full match then rejects.
struct HostIndex: Sendable {
    let keys: [UInt64]
    let starts: [Int32]
    let counts: [Int32]
    let postings: [Int32]
    let mask: Int

    init(_ map: [UInt64: [Int32]]) {
        var size = 1
        while size < map.count * 2 { size <<= 1 }
        var keys = [UInt64](repeating: 0, count: map.isEmpty ? 0 : size)
        var starts = [Int32](repeating: -1, count: keys.count), counts = [Int32](repeating: 0, count: keys.count)
        var postings: [Int32] = []
        for (hash, list) in map.sorted(by: { $0.key < $1.key }) {
            var slot = Int(truncatingIfNeeded: hash) & (size - 1)
            while starts[slot] >= 0 { slot = (slot + 1) & (size - 1) }
            keys[slot] = hash
            starts[slot] = Int32(postings.count)
            counts[slot] = Int32(list.count)
            postings += list
        }
        self.keys = keys; self.starts = starts; self.counts = counts; self.postings = postings
        self.mask = size - 1
    }

    var isEmpty: Bool { keys.isEmpty }

    @inlinable static func hash(_ buf: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in start..<end {
            var c = buf[i]
            if c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z") { c |= 0x20 }
            h = (h ^ UInt64(c)) &* 0x0000_0100_0000_01B3
        }
        return h
    }

    func lookup(_ hash: UInt64, _ body: (UnsafeBufferPointer<Int32>) -> Void) {
        guard !keys.isEmpty else { return }
        var slot = Int(truncatingIfNeeded: hash) & mask
        while starts[slot] >= 0 {
            if keys[slot] == hash {
                postings.withUnsafeBufferPointer { p in
                    body(UnsafeBufferPointer(rebasing: p[Int(starts[slot])..<Int(starts[slot] + counts[slot])]))
                }
                return
            }
            slot = (slot + 1) & mask
        }
    }
}
