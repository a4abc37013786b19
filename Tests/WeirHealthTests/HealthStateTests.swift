import Testing
@testable import WeirHealth

@Suite struct HealthStateTests {
    var policy: HealthPolicy {
        var p = HealthPolicy()
        p.unhealthyThreshold = 3; p.healthyThreshold = 2; p.baseEjectionNanoseconds = 100
        return p
    }

    @Test func thresholdsCountConsecutiveResults() {
        var h = EndpointHealth(startHealthy: true)
        #expect(h.probed(success: false, policy: policy) == .none)
        #expect(h.probed(success: false, policy: policy) == .none)
        #expect(h.probed(success: true, policy: policy) == .none)   // resets the failures
        #expect(h.probed(success: false, policy: policy) == .none)
        #expect(h.probed(success: false, policy: policy) == .none)
        #expect(h.probed(success: false, policy: policy) == .becameUnhealthy)
        #expect(!h.available)
        #expect(h.probed(success: false, policy: policy) == .none)  // logged once, not again
        #expect(h.probed(success: true, policy: policy) == .none)
        #expect(h.probed(success: true, policy: policy) == .becameHealthy)
        #expect(h.available)
    }

    @Test func endpointsMayStartUnhealthy() {
        var h = EndpointHealth(startHealthy: false)
        #expect(!h.available)
        _ = h.probed(success: true, policy: policy)
        #expect(h.probed(success: true, policy: policy) == .becameHealthy)
    }

    @Test func ejectionTimeGrowsWithEachEjectionAndExpires() {
        var h = EndpointHealth(startHealthy: true)
        h.eject(now: 1_000, policy: policy)
        #expect(!h.available)
        #expect(h.expire(now: 1_099) == .none)
        #expect(h.expire(now: 1_100) == .returned)
        h.eject(now: 2_000, policy: policy)
        #expect(h.ejectedUntil == 2_200)
        #expect(h.probed(success: true, policy: policy) == .returned, "a passing active check ends the ejection")
        #expect(h.available)
    }

    @Test func jitterStaysWithinItsBounds() {
        var p = HealthPolicy()
        p.intervalNanoseconds = 1_000; p.jitterFraction = 0.1; p.unhealthyIntervalNanoseconds = 4_000
        #expect(p.nextWait(healthy: true, random: 0) == 900)
        #expect(p.nextWait(healthy: true, random: 0.5) == 1_000)
        #expect(p.nextWait(healthy: true, random: 0.999_999) <= 1_100)
        #expect(p.nextWait(healthy: false, random: 0.5) == 4_000)
    }

    @Test func maxEjectionPercentCapsEjections() {
        #expect(Eligibility.mayEject(ejected: 0, total: 4, maxPercent: 50))
        #expect(Eligibility.mayEject(ejected: 1, total: 4, maxPercent: 50))
        #expect(!Eligibility.mayEject(ejected: 2, total: 4, maxPercent: 50))
        #expect(!Eligibility.mayEject(ejected: 0, total: 1, maxPercent: 50))
    }

    @Test func panicBalancesAcrossEveryEndpoint() {
        let ok = Eligibility(available: [true, true, false, true], panicThresholdPercent: 50)
        #expect(ok.eligible == [true, true, false, true] && !ok.panic)
        let panic = Eligibility(available: [true, false, false, false], panicThresholdPercent: 50)
        #expect(panic.eligible == [true, true, true, true] && panic.panic)
        let none = Eligibility(available: [false, false], panicThresholdPercent: 0)
        #expect(none.eligible == [true, true] && none.panic)
        let exactlyHalf = Eligibility(available: [true, false], panicThresholdPercent: 50)
        #expect(!exactlyHalf.panic)
    }

    @Test func priorityLevelsSpillOnlyWhatTheHigherLevelCannotCarry() {
        // Two levels of five: all up, level 0 takes everything and level 1 is not eligible.
        let levels: [UInt8] = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
        let all = Eligibility(available: Array(repeating: true, count: 10), panicThresholdPercent: 50, levelOf: levels)
        #expect(all.cumulativeLoad == [10000, 10000] && !all.panic)
        #expect(all.eligible == levels.map { $0 == 0 })
        // 4 of 5 up: 80% x 1.4 is still over 100%, so nothing spills (the overprovisioning factor).
        var up = Array(repeating: true, count: 10); up[0] = false
        let most = Eligibility(available: up, panicThresholdPercent: 50, levelOf: levels)
        #expect(most.cumulativeLoad == [10000, 10000])
        // 2 of 5 up: level 0 carries 40% x 1.4 = 56%, level 1 the other 44%.
        up = [true, true, false, false, false, true, true, true, true, true]
        let half = Eligibility(available: up, panicThresholdPercent: 50, levelOf: levels)
        #expect(half.cumulativeLoad == [5600, 10000])
        #expect(half.eligible == up, "both levels take traffic, each on its available endpoints")
        // Level 0 entirely down: everything goes to level 1.
        up = [false, false, false, false, false, true, true, true, true, true]
        #expect(Eligibility(available: up, panicThresholdPercent: 50, levelOf: levels).cumulativeLoad == [0, 10000])
        // Both levels short: 1 of 5 and 2 of 5 up is 28% + 56% = 84%, scaled up to fill 100%.
        up = [true, false, false, false, false, true, true, false, false, false]
        let short = Eligibility(available: up, panicThresholdPercent: 50, levelOf: levels)
        #expect(short.cumulativeLoad == [3333, 10000] && !short.panic)
        // Below the panic threshold in total: every endpoint, levels by their available counts.
        up = [true, false, false, false, false, false, false, false, false, false]
        let panic = Eligibility(available: up, panicThresholdPercent: 50, levelOf: levels)
        #expect(panic.panic && panic.eligible == Array(repeating: true, count: 10) && panic.cumulativeLoad == [10000, 10000])
        // A higher overprovisioning factor keeps more on level 0: 2 of 5 x 2.0 = 80%.
        up = [true, true, false, false, false, true, true, true, true, true]
        #expect(Eligibility(available: up, panicThresholdPercent: 50, levelOf: levels, overprovisioningPercent: 200).cumulativeLoad == [8000, 10000])
    }
}
