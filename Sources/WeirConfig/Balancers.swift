// Balancer choice and knobs in the config, the tables each needs (built at compile time), and the
// per-shard balancer made from them.
import WeirBalance
import WeirCore

public enum BalancerKind: String, Sendable, CaseIterable {
    case roundRobin = "round_robin"
    case leastRequest = "least_request"
    case ringHash = "ring_hash"
    case maglev
    case random

    /// The `balancer_options` keys each balancer accepts.
    var optionKeys: [String] {
        switch self {
        case .roundRobin, .random: return []
        case .leastRequest: return ["choice_count", "active_request_bias"]
        case .ringHash: return ["hash_key", "minimum_ring_size", "maximum_ring_size"]
        case .maglev: return ["hash_key", "table_size"]
        }
    }

    var supportsSlowStart: Bool { self == .roundRobin || self == .leastRequest }
    public var usesHash: Bool { self == .ringHash || self == .maglev }
}

public enum HashKey: Sendable, Equatable {
    case sourceIP
    /// HTTP only: the value of this header (lowercase name); requests without it hash as empty.
    case header([UInt8])
    /// HTTP only: the value of this cookie in the Cookie header.
    case cookie([UInt8])
    /// HTTP only: the request path, without the query.
    case path

    public var isHTTP: Bool { self != .sourceIP }

    /// What `hash_key:` accepts, for errors.
    static let forms = "source_ip (or, for HTTP, header:NAME, cookie:NAME, path)"

    /// `source_ip`, `path`, `header:NAME` or `cookie:NAME`; nil for anything else.
    init?(parsing text: String) {
        if text == "source_ip" { self = .sourceIP; return }
        if text == "path" { self = .path; return }
        guard text.hasPrefix("header:") || text.hasPrefix("cookie:"), text.count > 7,
              text.utf8.dropFirst(7).allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: ":") }) else { return nil }
        let key = Array(text.dropFirst(7).utf8)
        self = text.hasPrefix("header:") ? .header(key.map { $0 | ($0 >= 65 && $0 <= 90 ? 0x20 : 0) }) : .cookie(key)
    }

    /// As written in the config.
    public var text: String {
        switch self {
        case .sourceIP: return "source_ip"
        case .header(let n): return "header:" + String(decoding: n, as: UTF8.self)
        case .cookie(let n): return "cookie:" + String(decoding: n, as: UTF8.self)
        case .path: return "path"
        }
    }
}

public struct BalancerOptions: Sendable, Equatable {
    public var choiceCount = 2
    public var activeRequestBias = 1.0
    public var hashKey = HashKey.sourceIP
    public var minimumRingSize = 1024
    public var maximumRingSize = 8 << 20
    public var maglevTableSize = 65537
    public init() {}
}

/// Read-only tables shared by every shard.
public enum BalancerTable: Sendable {
    case none
    case alias(AliasTable)
    case ring(RingHashTable)
    case maglev(MaglevTable)

    init(_ kind: BalancerKind, options: BalancerOptions, endpoints: [Endpoint]) {
        if endpoints.isEmpty { self = .none; return }
        let keys = endpoints.map { $0.address.bytes + [UInt8(truncatingIfNeeded: $0.address.port >> 8), UInt8(truncatingIfNeeded: $0.address.port)] }
        let weights = endpoints.map(\.weight)
        switch kind {
        case .roundRobin, .leastRequest: self = .none
        case .random: self = .alias(AliasTable(weights: weights.map(Double.init)))
        case .ringHash:
            self = .ring(RingHashTable(keys: keys, weights: weights, minimumRingSize: options.minimumRingSize,
                                       maximumRingSize: options.maximumRingSize))
        case .maglev: self = .maglev(MaglevTable(keys: keys, weights: weights, size: options.maglevTableSize))
        }
    }
}

extension Cluster {
    /// The balancer shard `shard` of `shards` uses for this cluster, fresh state over the shared table.
    public func makeBalancer(shard: Int, of shards: Int, now: Int64) -> any Balancer {
        if endpoints.isEmpty { return NoEndpoints() }
        let e = eligibility
        guard hasLevels else { return makeBalancer(eligible: e.eligible, shard: shard, of: shards, now: now) }
        let levelOf = endpoints.map(\.priority)
        var levels: [(any Balancer)?] = []
        for l in e.cumulativeLoad.indices {
            let share = e.cumulativeLoad[l] - (l == 0 ? 0 : e.cumulativeLoad[l - 1])
            let mask = e.eligible.indices.map { e.eligible[$0] && Int(levelOf[$0]) == l }
            levels.append(share > 0 && mask.contains(true) ? makeBalancer(eligible: mask, shard: shard, of: shards, now: now) : nil)
        }
        return Priorities(levelOf: levelOf, cumulative: e.cumulativeLoad, levels: levels, byHash: balancer.usesHash)
    }

    /// The cluster's balancer over the endpoints `eligible` marks (at least one).
    func makeBalancer(eligible: [Bool], shard: Int, of shards: Int, now: Int64) -> any Balancer {
        let ages = endpoints.map(\.addedAt)
        let allEligible = !eligible.contains(false)
        switch table {
        case .ring(let t): return RingHash(table: t, eligible: allEligible ? nil : eligible)
        case .maglev(let t): return Maglev(table: t, eligible: allEligible ? nil : eligible)
        case .alias(let t):
            if allEligible { return RandomBalancer(table: t) }
            return Subset(eligible: eligible) { m in RandomBalancer(table: AliasTable(weights: m.map { Double(weights[$0]) })) }
        case .none:
            if balancer == .leastRequest {
                return Subset(eligible: eligible) { m in
                    LeastRequest(weights: m.map { weights[$0] }, choiceCount: options.choiceCount, activeRequestBias: options.activeRequestBias,
                                 slowStart: slowStart, addedAt: m.map { ages[$0] }, now: now)
                }
            }
            return Subset(eligible: eligible) { m in
                let w = m.map { weights[$0] }
                return RoundRobin(weights: w, startOffset: RoundRobin.startOffset(shard: shard, of: shards, weights: w),
                                  slowStart: slowStart, addedAt: m.map { ages[$0] }, now: now)
            }
        }
    }
}

extension Compiler {
    static func compileBalancer(_ c: ClusterDocument, name: String, fail: (SourcePosition, String) -> Void)
        -> (BalancerKind, BalancerOptions, SlowStart?)? {
        var ok = true
        var kind = BalancerKind.roundRobin
        if let b = c.balancer {
            if let k = BalancerKind(rawValue: b.value) { kind = k } else {
                fail(b.position, "cluster '\(name)': balancer must be one of \(BalancerKind.allCases.map(\.rawValue).joined(separator: ", ")), not '\(b.value)'")
                return nil
            }
        }
        var o = BalancerOptions()
        for (key, v) in c.balancerOptions.sorted(by: { $0.key < $1.key }) {
            guard kind.optionKeys.contains(key) else {
                let fits = BalancerKind.allCases.filter { $0.optionKeys.contains(key) }.map(\.rawValue)
                let hint = fits.isEmpty ? "" : " (it applies to \(fits.joined(separator: ", ")))"
                let accepted = kind.optionKeys.isEmpty ? "takes no options" : "takes \(kind.optionKeys.joined(separator: ", "))"
                fail(v.position, "cluster '\(name)': balancer_options '\(key)' does not fit balancer \(kind.rawValue)\(hint); \(kind.rawValue) \(accepted)")
                ok = false; continue
            }
            func integer(_ range: ClosedRange<Int>) -> Int? {
                if let n = parseCount(v.value), range.contains(n) { return n }
                fail(v.position, "cluster '\(name)': \(key) must be a whole number from \(range.lowerBound) to \(range.upperBound), not '\(v.value)'")
                ok = false
                return nil
            }
            switch key {
            case "choice_count": if let n = integer(2...100) { o.choiceCount = n }
            case "active_request_bias":
                if let d = Double(v.value), (0...10).contains(d) { o.activeRequestBias = d } else {
                    fail(v.position, "cluster '\(name)': active_request_bias must be a number from 0 to 10, not '\(v.value)'"); ok = false
                }
            case "minimum_ring_size": if let n = integer(1...(8 << 20)) { o.minimumRingSize = n }
            case "maximum_ring_size": if let n = integer(1...(8 << 20)) { o.maximumRingSize = n }
            case "table_size":
                if let n = integer(101...5_000_011) {
                    if isPrime(n) { o.maglevTableSize = n } else {
                        fail(v.position, "cluster '\(name)': table_size must be prime (65537 and 5000011 are), not \(n)"); ok = false
                    }
                }
            case "hash_key":
                if let k = HashKey(parsing: v.value) { o.hashKey = k } else {
                    fail(v.position, "cluster '\(name)': hash_key must be \(HashKey.forms), not '\(v.value)'")
                    ok = false
                }
            default: break
            }
        }
        if o.minimumRingSize > o.maximumRingSize {
            fail(c.balancerOptionsPosition ?? c.position, "cluster '\(name)': minimum_ring_size must not exceed maximum_ring_size"); ok = false
        }
        if kind == .maglev && o.maglevTableSize <= c.endpoints.count {
            fail(c.balancerOptionsPosition ?? c.position, "cluster '\(name)': table_size must be larger than the endpoint count"); ok = false
        }
        var slow: SlowStart? = nil
        if let s = c.slowStart {
            if !kind.supportsSlowStart {
                fail(s.position, "cluster '\(name)': slow_start works with round_robin and least_request, not \(kind.rawValue)"); ok = false
            }
            guard let w = s.window else { fail(s.position, "cluster '\(name)': slow_start needs a 'window'"); return nil }
            if !(1_000_000...3_600_000_000_000).contains(w.value) { fail(w.position, "cluster '\(name)': slow_start window must be 1ms to 1h"); ok = false }
            var aggression = 1.0, minPercent = 10.0
            if let a = s.aggression {
                if let d = Double(a.value), d > 0, d <= 100 { aggression = d } else {
                    fail(a.position, "cluster '\(name)': aggression must be a number above 0 and at most 100"); ok = false
                }
            }
            if let m = s.minWeightPercent {
                if let d = Double(m.value.hasSuffix("%") ? String(m.value.dropLast()) : m.value), (0...100).contains(d) { minPercent = d } else {
                    fail(m.position, "cluster '\(name)': min_weight_percent must be 0 to 100"); ok = false
                }
            }
            slow = SlowStart(windowNanoseconds: w.value, aggression: aggression, minimumWeightFraction: minPercent / 100)
        }
        return ok ? (kind, o, slow) : nil
    }

    /// "65537", "64K" (x1024), "8M" (x1048576): ring and table sizes as operators write them.
    static func parseCount(_ s: String) -> Int? {
        if let n = Int(s) { return n }
        if s.hasSuffix("K"), let n = Int(s.dropLast()) { return n << 10 }
        if s.hasSuffix("M"), let n = Int(s.dropLast()) { return n << 20 }
        return nil
    }

    static func isPrime(_ n: Int) -> Bool {
        if n < 2 { return false }
        var d = 2
        while d * d <= n { if n % d == 0 { return false }; d += 1 }
        return true
    }
}
