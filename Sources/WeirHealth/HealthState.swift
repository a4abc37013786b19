// Health of one endpoint as a pure state machine: active probe results with thresholds, passive
// ejections with growing ejection times. No I/O and no clock: the prober passes results and time.

/// How one cluster checks its endpoints (the compiled `health_check:` and `outlier_detection:`).
public struct HealthPolicy: Sendable, Equatable {
    public enum ProbeKind: Sendable, Equatable {
        case tcp(send: [UInt8], expect: [UInt8])
        case http(path: String, host: String?, expectStatus: [ClosedRange<Int>])
    }
    public var probe: ProbeKind? = nil
    public var intervalNanoseconds: Int64 = 5_000_000_000
    public var timeoutNanoseconds: Int64 = 1_000_000_000
    /// Each wait is interval x (1 +- jitter), so probes from one process do not line up.
    public var jitterFraction = 0.1
    public var unhealthyThreshold = 3
    public var healthyThreshold = 2
    /// Probe a down endpoint this often instead (nil: `interval`).
    public var unhealthyIntervalNanoseconds: Int64? = nil
    public var startHealthy = true
    public var portOverride: UInt16? = nil
    /// Passive: consecutive connect failures (and resets, and 5xx once HTTP exists) that eject.
    public var consecutiveFailures: Int? = nil
    public var baseEjectionNanoseconds: Int64 = 30_000_000_000
    public var maxEjectionPercent = 50
    /// Below this share of healthy endpoints, balance across all of them (percent).
    public var panicThresholdPercent = 50
    public init() {}

    /// The wait before the next probe: interval (or unhealthy_interval) scaled by a jitter drawn
    /// from `random` in [0, 1).
    public func nextWait(healthy: Bool, random: Double) -> Int64 {
        let base = Double(healthy ? intervalNanoseconds : (unhealthyIntervalNanoseconds ?? intervalNanoseconds))
        let factor = 1 + jitterFraction * (2 * random - 1)
        return Int64(base * factor)
    }
}

public struct EndpointHealth: Sendable, Equatable {
    public enum Change: Sendable, Equatable { case none, becameHealthy, becameUnhealthy, ejected, returned }

    /// The active checks' verdict.
    public private(set) var probeHealthy: Bool
    public private(set) var consecutiveSuccesses = 0
    public private(set) var consecutiveFailures = 0
    /// Passive ejection: until when (monotonic ns), and how many times so far.
    public private(set) var ejectedUntil: Int64? = nil
    public private(set) var ejections = 0

    public init(startHealthy: Bool) { probeHealthy = startHealthy }

    /// Usable for new traffic: probes say healthy and not ejected.
    public var available: Bool { probeHealthy && ejectedUntil == nil }

    /// Records one probe result.
    public mutating func probed(success: Bool, policy: HealthPolicy) -> Change {
        if success {
            consecutiveFailures = 0
            consecutiveSuccesses += 1
            var change = Change.none
            if !probeHealthy && consecutiveSuccesses >= policy.healthyThreshold { probeHealthy = true; change = .becameHealthy }
            // A passing active check also ends an ejection early.
            if ejectedUntil != nil { ejectedUntil = nil; if change == .none { change = .returned } }
            return change
        }
        consecutiveSuccesses = 0
        consecutiveFailures += 1
        if probeHealthy && consecutiveFailures >= policy.unhealthyThreshold { probeHealthy = false; return .becameUnhealthy }
        return .none
    }

    /// Ejects the endpoint for base x (number of ejections), as Envoy does.
    public mutating func eject(now: Int64, policy: HealthPolicy) {
        ejections += 1
        ejectedUntil = now + policy.baseEjectionNanoseconds * Int64(ejections)
    }

    /// Ends an ejection whose time has passed.
    public mutating func expire(now: Int64) -> Change {
        guard let until = ejectedUntil, now >= until else { return .none }
        ejectedUntil = nil
        return .returned
    }
}

/// Which endpoints of a cluster new traffic may use, and whether the cluster is in panic. With
/// priority levels, also how traffic splits across them.
public struct Eligibility: Sendable, Equatable {
    public let eligible: [Bool]
    public let panic: Bool
    /// Per priority level, the cumulative share of new traffic in 1/10000: level l takes
    /// `cumulativeLoad[l] - cumulativeLoad[l-1]`. Empty for a cluster with one level.
    public let cumulativeLoad: [UInt32]

    /// Available endpoints, unless fewer than `panicThresholdPercent` of them are: then all.
    ///
    /// With more than one level (`levelOf` gives each endpoint's level, 0 the highest), Envoy's
    /// rule: a level's health is its available share stretched by `overprovisioningPercent`
    /// (140: a level with 5 of 7 endpoints up still takes everything), capped at 100%; level 0
    /// takes its health, each next level what the ones above left, up to its own health, and
    /// when the levels together are short of 100% the shares are scaled up to fill it. Below the
    /// panic threshold (of that total) every endpoint is eligible and the levels share traffic
    /// by their available endpoints.
    public init(available: [Bool], panicThresholdPercent: Int, levelOf: [UInt8] = [], overprovisioningPercent: Int = 140) {
        let levelCount = (levelOf.max().map { Int($0) + 1 }) ?? 1
        let up = available.filter { $0 }.count
        guard levelCount > 1 && levelOf.count == available.count else {
            cumulativeLoad = []
            if available.isEmpty || up * 100 < panicThresholdPercent * available.count || up == 0 {
                eligible = Array(repeating: true, count: available.count)
                panic = !available.isEmpty
            } else {
                eligible = available
                panic = false
            }
            return
        }
        var total = [Int](repeating: 0, count: levelCount), upIn = total
        for (i, l) in levelOf.enumerated() {
            total[Int(l)] += 1
            if available[i] { upIn[Int(l)] += 1 }
        }
        let health = (0..<levelCount).map { l in total[l] == 0 ? 0 : min(10000, upIn[l] * overprovisioningPercent * 100 / total[l]) }
        let sum = min(10000, health.reduce(0, +))
        var load = [Int](repeating: 0, count: levelCount)
        if up == 0 || sum < panicThresholdPercent * 100 {
            panic = true
            eligible = Array(repeating: true, count: available.count)
            if up == 0 { load[0] = 10000 } else { for l in 0..<levelCount { load[l] = upIn[l] * 10000 / up } }
        } else {
            panic = false
            var left = 10000
            for l in 0..<levelCount { load[l] = min(health[l], left); left -= load[l] }
            if sum < 10000 { for l in 0..<levelCount { load[l] = load[l] * 10000 / sum } }
            eligible = available.indices.map { available[$0] && load[Int(levelOf[$0])] > 0 }
        }
        var cumulative: [UInt32] = []
        var running = 0
        for l in 0..<levelCount { running += load[l]; cumulative.append(UInt32(min(running, 10000))) }
        // Rounding: the last level taking traffic ends at 10000.
        if let last = (0..<levelCount).last(where: { load[$0] > 0 }) {
            for l in last..<levelCount { cumulative[l] = 10000 }
        }
        cumulativeLoad = cumulative
    }

    /// May one more endpoint be ejected, given how many already are?
    public static func mayEject(ejected: Int, total: Int, maxPercent: Int) -> Bool {
        (ejected + 1) * 100 <= maxPercent * total
    }
}
