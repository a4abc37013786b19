import Testing
@testable import WeirBalance

@Suite struct RoundRobinTests {
    func picks(_ rr: inout RoundRobin, _ n: Int, excluding: Exclusions = Exclusions()) -> [Int] {
        (0..<n).map { _ in rr.pick(excluding: excluding)! }
    }

    @Test func smoothOrderInterleavesHeavyEndpoints() {
        // Weights a=5, b=1, c=1. Smooth WRR yields: a a b a c a a (not a a a a a b c).
        var rr = RoundRobin(weights: [5, 1, 1])
        #expect(picks(&rr, 7) == [0, 0, 1, 0, 2, 0, 0])
        // And the next cycle repeats it exactly.
        #expect(picks(&rr, 7) == [0, 0, 1, 0, 2, 0, 0])
    }

    @Test func equalWeightsRotate() {
        var rr = RoundRobin(weights: [1, 1, 1])
        #expect(picks(&rr, 6) == [0, 1, 2, 0, 1, 2])
    }

    @Test func weightsAreHonouredExactlyOverCycles() {
        var rr = RoundRobin(weights: [1, 2, 3])
        var counts = [0, 0, 0]
        for p in picks(&rr, 60_000) { counts[p] += 1 }
        #expect(counts == [10_000, 20_000, 30_000])
    }

    @Test func excludedEndpointsAreSkippedAndTheRestKeepTheirRatio() {
        var rr = RoundRobin(weights: [1, 1, 2])
        var ex = Exclusions()
        ex.insert(2)
        var counts = [0, 0, 0]
        for p in picks(&rr, 100, excluding: ex) { counts[p] += 1 }
        #expect(counts == [50, 50, 0])
        ex.insert(0); ex.insert(1)
        #expect(rr.pick(excluding: ex) == nil)
    }

    @Test func shardsStartAtDifferentOffsets() {
        let w: [Int32] = [1, 1, 1, 1]
        let firsts = (0..<4).map { shard -> Int in
            var rr = RoundRobin(weights: w, startOffset: RoundRobin.startOffset(shard: shard, of: 4, weights: w))
            return rr.pick(excluding: Exclusions())!
        }
        #expect(Set(firsts).count == 4)
    }

    @Test func exclusionsForgetTheOldestBeyondCapacity() {
        var ex = Exclusions()
        for i in 0..<5 { ex.insert(i) }
        #expect(!ex.contains(0))
        #expect((1..<5).allSatisfy { ex.contains($0) })
    }
}
