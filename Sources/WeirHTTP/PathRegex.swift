// Regular expressions for route paths (path_regex, and xDS safe_regex), compiled when the
// snapshot compiles into a DFA: a table of states x 256 bytes. Matching is one table lookup per
// byte, allocates nothing, and cannot backtrack, so a request cannot make a shard spin.
//
// The syntax is RE2's common subset, matched against the whole path (as Envoy's safe_regex is):
// literals, `.`, classes `[a-z0-9_-]` and `[^...]`, escapes `\d \w \s \D \W \S` and escaped
// punctuation, groups `(...)` and `(?:...)`, alternation `|`, and `* + ? {m} {m,} {m,n}` (lazy
// forms match the same whole strings). `^` may open and `$` close the pattern. Anything else
// (backreferences, lookaround, flags, \b, Unicode classes) is an error naming it: a DFA cannot
// do some of them, and guessing would route requests where the author did not mean.

public struct RegexError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}

/// 256 bits: which bytes a step accepts.
struct ByteSet: Hashable {
    var w: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    static func == (a: ByteSet, b: ByteSet) -> Bool { a.w == b.w }
    func hash(into h: inout Hasher) { h.combine(w.0); h.combine(w.1); h.combine(w.2); h.combine(w.3) }

    mutating func insert(_ b: UInt8) {
        let bit = UInt64(1) << UInt64(b & 63)
        switch b >> 6 { case 0: w.0 |= bit; case 1: w.1 |= bit; case 2: w.2 |= bit; default: w.3 |= bit }
    }
    mutating func insert(_ r: ClosedRange<UInt8>) { for b in r { insert(b) } }
    mutating func formUnion(_ o: ByteSet) { w.0 |= o.w.0; w.1 |= o.w.1; w.2 |= o.w.2; w.3 |= o.w.3 }
    var inverted: ByteSet { ByteSet(w: (~w.0, ~w.1, ~w.2, ~w.3)) }
    func contains(_ b: UInt8) -> Bool {
        let bit = UInt64(1) << UInt64(b & 63)
        switch b >> 6 { case 0: return w.0 & bit != 0; case 1: return w.1 & bit != 0; case 2: return w.2 & bit != 0; default: return w.3 & bit != 0 }
    }
}

public struct PathRegex: Sendable, Equatable {
    public let pattern: String
    /// transitions[state * 256 + byte]: the next state, or -1 (no match possible).
    @usableFromInline let transitions: [Int32]
    @usableFromInline let accepting: [Bool]

    /// Limits that keep a compiled pattern small: NFA steps, and DFA states (each 1 KiB).
    public static let maxSteps = 2000
    public static let maxStates = 1024

    public static func == (a: PathRegex, b: PathRegex) -> Bool { a.pattern == b.pattern }

    public init(_ pattern: String) throws {
        self.pattern = pattern
        var parser = RegexParser(Array(pattern.utf8))
        let ast = try parser.parse()
        var nfa = NFA()
        let accept = nfa.add(.accept)
        let start = try nfa.build(ast, next: accept)
        (transitions, accepting) = try nfa.determinize(start: start)
    }

    /// Whether buf[start..<end] matches the whole pattern.
    @inlinable
    public func fullMatch(_ buf: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> Bool {
        transitions.withUnsafeBufferPointer { t in
            var s: Int32 = 0
            var i = start
            while i < end {
                s = t[Int(s) &* 256 &+ Int(buf[i])]
                if s < 0 { return false }
                i += 1
            }
            return accepting[Int(s)]
        }
    }

    /// For tests and tools: does `text` match?
    public func matches(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { fullMatch($0, 0, bytes.count) }
    }
}

indirect enum RegexNode {
    case bytes(ByteSet)
    case concat([RegexNode])
    case alternation([RegexNode])
    case repetition(RegexNode, min: Int, max: Int?)
}

struct RegexParser {
    let p: [UInt8]
    var i = 0
    init(_ p: [UInt8]) { self.p = p }

    func fail(_ m: String) -> RegexError { RegexError(message: "regex: \(m) (at offset \(i))") }

    mutating func parse() throws -> RegexNode {
        var body = p[...]
        if body.first == UInt8(ascii: "^") { body = body.dropFirst(); i = 1 }
        var end = p.count
        if body.last == UInt8(ascii: "$") && !(body.count >= 2 && body[body.endIndex - 2] == UInt8(ascii: "\\")) { end -= 1 }
        let node = try alternation(until: end)
        if i != end { throw fail(p[i] == UInt8(ascii: ")") ? "unbalanced ')'" : "unexpected '\(Character(Unicode.Scalar(p[i])))'") }
        return node
    }

    mutating func alternation(until end: Int) throws -> RegexNode {
        var branches = [try concat(until: end)]
        while i < end && p[i] == UInt8(ascii: "|") {
            i += 1
            branches.append(try concat(until: end))
        }
        return branches.count == 1 ? branches[0] : .alternation(branches)
    }

    mutating func concat(until end: Int) throws -> RegexNode {
        var items: [RegexNode] = []
        while i < end && p[i] != UInt8(ascii: "|") && p[i] != UInt8(ascii: ")") {
            var atom = try self.atom(until: end)
            while i < end {
                let c = p[i]
                var range: (Int, Int?)? = nil
                if c == UInt8(ascii: "*") { range = (0, nil); i += 1 }
                else if c == UInt8(ascii: "+") { range = (1, nil); i += 1 }
                else if c == UInt8(ascii: "?") { range = (0, 1); i += 1 }
                else if c == UInt8(ascii: "{") { range = try braces(until: end) }
                guard let (lo, hi) = range else { break }
                if i < end && p[i] == UInt8(ascii: "?") { i += 1 }  // lazy: the same whole-string matches
                if i < end && p[i] == UInt8(ascii: "+") { throw fail("possessive quantifiers are not supported") }
                atom = .repetition(atom, min: lo, max: hi)
            }
            items.append(atom)
        }
        return items.count == 1 ? items[0] : .concat(items)
    }

    /// `{m}`, `{m,}`, `{m,n}` with i at '{'.
    mutating func braces(until end: Int) throws -> (Int, Int?) {
        i += 1
        func number() -> Int? {
            var n = 0, digits = 0
            while i < end, p[i] >= 48, p[i] <= 57 { n = n * 10 + Int(p[i] - 48); i += 1; digits += 1; if n > 1000 { return nil } }
            return digits > 0 ? n : nil
        }
        guard let lo = number() else { throw fail("a repetition needs {m}, {m,} or {m,n} with counts up to 1000") }
        var hi: Int? = lo
        if i < end && p[i] == UInt8(ascii: ",") {
            i += 1
            hi = (i < end && p[i] == UInt8(ascii: "}")) ? nil : number()
            if hi == nil && !(i < end && p[i] == UInt8(ascii: "}")) { throw fail("a repetition needs {m}, {m,} or {m,n} with counts up to 1000") }
        }
        guard i < end && p[i] == UInt8(ascii: "}") else { throw fail("unclosed '{'") }
        i += 1
        if let hi, hi < lo { throw fail("{\(lo),\(hi)}: the maximum is below the minimum") }
        return (lo, hi)
    }

    mutating func atom(until end: Int) throws -> RegexNode {
        let c = p[i]
        switch c {
        case UInt8(ascii: "("):
            i += 1
            if i < end && p[i] == UInt8(ascii: "?") {
                guard i + 1 < end && p[i + 1] == UInt8(ascii: ":") else { throw fail("only (?:...) groups are supported (no flags, lookaround or named groups)") }
                i += 2
            }
            let inner = try alternation(until: end)
            guard i < end && p[i] == UInt8(ascii: ")") else { throw fail("unclosed '('") }
            i += 1
            return inner
        case UInt8(ascii: "["):
            return .bytes(try bracket(until: end))
        case UInt8(ascii: "."):
            i += 1
            var s = ByteSet()
            s.insert(0...255)
            var nl = ByteSet(); nl.insert(10)
            return .bytes(ByteSet(w: (s.w.0 & ~nl.w.0, s.w.1, s.w.2, s.w.3)))
        case UInt8(ascii: "\\"):
            i += 1
            return .bytes(try escape(until: end, inClass: false))
        case UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "?"), UInt8(ascii: "{"):
            throw fail("nothing to repeat")
        case UInt8(ascii: "^"), UInt8(ascii: "$"):
            throw fail("'^' and '$' are supported only at the start and end of the pattern")
        default:
            i += 1
            var s = ByteSet(); s.insert(c)
            return .bytes(s)
        }
    }

    /// After a backslash.
    mutating func escape(until end: Int, inClass: Bool) throws -> ByteSet {
        guard i < end else { throw fail("a trailing backslash") }
        let c = p[i]
        i += 1
        var s = ByteSet()
        switch c {
        case UInt8(ascii: "d"), UInt8(ascii: "D"): s.insert(48...57)
        case UInt8(ascii: "w"), UInt8(ascii: "W"): s.insert(48...57); s.insert(65...90); s.insert(97...122); s.insert(95)
        case UInt8(ascii: "s"), UInt8(ascii: "S"): for b: UInt8 in [9, 10, 11, 12, 13, 32] { s.insert(b) }
        case UInt8(ascii: "n"): s.insert(10); return s
        case UInt8(ascii: "t"): s.insert(9); return s
        case UInt8(ascii: "r"): s.insert(13); return s
        default:
            // Escaped punctuation stands for itself; escaped letters and digits mean things this
            // engine does not do (\b, \A, \pL, backreferences).
            let isAlnum = (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122)
            if isAlnum || c >= 128 { throw fail("'\\\(Character(Unicode.Scalar(c)))' is not supported") }
            s.insert(c)
            return s
        }
        return c >= 65 && c <= 90 ? s.inverted : s
    }

    /// `[...]` with i at '['.
    mutating func bracket(until end: Int) throws -> ByteSet {
        i += 1
        var negate = false
        if i < end && p[i] == UInt8(ascii: "^") { negate = true; i += 1 }
        var s = ByteSet()
        var first = true
        while i < end && (p[i] != UInt8(ascii: "]") || first) {
            first = false
            if p[i] == UInt8(ascii: "[") && i + 1 < end && p[i + 1] == UInt8(ascii: ":") { throw fail("POSIX classes like [:alpha:] are not supported") }
            var lo: UInt8
            var single = true
            if p[i] == UInt8(ascii: "\\") {
                i += 1
                let e = try escape(until: end, inClass: true)
                // A class escape (\d, \w, \s and their negations) joins as a set; others are one byte.
                var count = 0, only: UInt8 = 0
                for b in 0...255 where e.contains(UInt8(b)) { count += 1; only = UInt8(b); if count > 1 { break } }
                if count != 1 { s.formUnion(e); continue }
                lo = only
            } else {
                lo = p[i]
                i += 1
            }
            if i + 1 < end && p[i] == UInt8(ascii: "-") && p[i + 1] != UInt8(ascii: "]") {
                i += 1
                var hi = p[i]
                if hi == UInt8(ascii: "\\") {
                    i += 1
                    guard i < end else { throw fail("a trailing backslash") }
                    hi = p[i]
                }
                i += 1
                guard lo <= hi else { throw fail("class range out of order") }
                s.insert(lo...hi)
                single = false
            }
            if single { s.insert(lo) }
        }
        guard i < end else { throw fail("unclosed '['") }
        i += 1
        return negate ? s.inverted : s
    }
}

/// Thompson's construction, then subset construction into the DFA.
struct NFA {
    enum Step {
        case bytes(ByteSet, Int)
        case split([Int])
        case accept
    }
    var steps: [Step] = []

    mutating func add(_ s: Step) -> Int { steps.append(s); return steps.count - 1 }

    /// States for `node` that continue to `next`; returns the entry state.
    mutating func build(_ node: RegexNode, next: Int) throws -> Int {
        if steps.count > PathRegex.maxSteps { throw RegexError(message: "regex: too large (over \(PathRegex.maxSteps) steps); simplify it or split it into several routes") }
        switch node {
        case .bytes(let set): return add(.bytes(set, next))
        case .concat(let items):
            var n = next
            for item in items.reversed() { n = try build(item, next: n) }
            return n
        case .alternation(let branches):
            return add(.split(try branches.map { try build($0, next: next) }))
        case .repetition(let inner, let min, let max):
            var n = next
            if let max {
                for _ in 0..<(max - min) {
                    let body = try build(inner, next: n)
                    n = add(.split([body, n]))
                }
            } else {
                let loop = add(.split([]))
                let body = try build(inner, next: loop)
                steps[loop] = .split([body, n])
                n = loop
            }
            for _ in 0..<min { n = try build(inner, next: n) }
            return n
        }
    }

    /// The states reachable from `states` without consuming a byte, sorted.
    func closure(_ states: [Int]) -> [Int] {
        var seen = Set<Int>(), stack = states, out: [Int] = []
        while let s = stack.popLast() {
            guard seen.insert(s).inserted else { continue }
            if case .split(let next) = steps[s] { stack.append(contentsOf: next) } else { out.append(s) }
        }
        return out.sorted()
    }

    func determinize(start: Int) throws -> ([Int32], [Bool]) {
        var index: [[Int]: Int32] = [:]
        var sets: [[Int]] = []
        var transitions: [Int32] = []
        var accepting: [Bool] = []
        func intern(_ set: [Int]) throws -> Int32 {
            if let i = index[set] { return i }
            guard sets.count < PathRegex.maxStates else {
                throw RegexError(message: "regex: too complex (over \(PathRegex.maxStates) DFA states); simplify it or split it into several routes")
            }
            let i = Int32(sets.count)
            index[set] = i
            sets.append(set)
            accepting.append(set.contains { if case .accept = steps[$0] { return true } else { return false } })
            transitions.append(contentsOf: repeatElement(-1, count: 256))
            return i
        }
        // Bytes no step tells apart behave alike: group them into classes (usually a handful) and
        // work out each DFA state's moves once per class instead of once per byte.
        var representatives: [UInt8] = []
        var members: [[UInt8]] = []
        var bySignature: [[Int]: Int] = [:]
        for b in 0...255 {
            let byte = UInt8(b)
            var signature: [Int] = []
            for (i, step) in steps.enumerated() { if case .bytes(let bs, _) = step, bs.contains(byte) { signature.append(i) } }
            if let c = bySignature[signature] { members[c].append(byte); continue }
            bySignature[signature] = representatives.count
            representatives.append(byte)
            members.append([byte])
        }
        _ = try intern(closure([start]))
        var k = 0
        while k < sets.count {
            let set = sets[k]
            // Group the classes by where they lead, so each target set is closed once.
            var byTarget: [[Int]: [Int]] = [:]
            for (c, byte) in representatives.enumerated() {
                var targets: [Int] = []
                for s in set { if case .bytes(let bs, let next) = steps[s], bs.contains(byte) { targets.append(next) } }
                if !targets.isEmpty { byTarget[targets, default: []].append(c) }
            }
            for (targets, classes) in byTarget {
                let t = try intern(closure(targets))
                for c in classes { for b in members[c] { transitions[k * 256 + Int(b)] = t } }
            }
            k += 1
        }
        return (transitions, accepting)
    }
}
