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
}
