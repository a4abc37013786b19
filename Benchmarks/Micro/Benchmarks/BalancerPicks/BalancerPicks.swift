// Pick cost for 3, 100 and 10,000 endpoints per balancer, and table build time at 10,000.
// Targets (issue: balancers): every pick under 100 ns at 10,000 endpoints, zero allocations per
// pick, a 10,000-endpoint ring or Maglev table built in under 50 ms.
import Benchmark
import WeirBalance

func endpointKeys(_ n: Int) -> [[UInt8]] {
    (0..<n).map { (i: Int) -> [UInt8] in
        let high = UInt8(truncatingIfNeeded: i >> 16), middle = UInt8(truncatingIfNeeded: i >> 8), low = UInt8(truncatingIfNeeded: i)
        return [10, high, middle, low, 0x1F, 0x90]
    }
}

/// Weights 1, 2, 3 repeating: unequal, as real clusters often are.
func endpointWeights(_ n: Int) -> [Int32] { (0..<n).map { Int32($0 % 3 + 1) } }

/// Picks with a fresh key each time (an LCG), as distinct clients would bring.
func hashedPicks<B: Balancer>(_ benchmark: Benchmark, _ balancer: B) {
    var b = balancer
    var context = PickContext(random: SplitMix64(seed: 1))
    var key: UInt64 = 0x12345
    benchmark.startMeasurement()
    for _ in benchmark.scaledIterations {
        key = key &* 6364136223846793005 &+ 1442695040888963407
        context.hash = key
        blackHole(b.pick(&context, excluding: Exclusions()))
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .instructions],
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000
    )

    for n in [3, 100, 10_000] {
        let weights = endpointWeights(n)
        let keys = endpointKeys(n)

        Benchmark("round_robin pick, \(n) endpoints") { benchmark in
            var b = RoundRobin(weights: weights)
            var context = PickContext(random: SplitMix64(seed: 1))
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { blackHole(b.pick(&context, excluding: Exclusions())) }
        }
        Benchmark("round_robin pick, \(n) endpoints, equal weights") { benchmark in
            var b = RoundRobin(weights: Array(repeating: 1, count: n))
            var context = PickContext(random: SplitMix64(seed: 1))
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { blackHole(b.pick(&context, excluding: Exclusions())) }
        }
        Benchmark("least_request pick, \(n) endpoints") { benchmark in
            var b = LeastRequest(weights: weights)
            var context = PickContext(random: SplitMix64(seed: 1))
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                let i = b.pick(&context, excluding: Exclusions())!
                b.started(i)
                b.ended(i)
            }
        }
        Benchmark("random pick, \(n) endpoints") { benchmark in
            var b = RandomBalancer(table: AliasTable(weights: weights.map(Double.init)))
            var context = PickContext(random: SplitMix64(seed: 1))
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { blackHole(b.pick(&context, excluding: Exclusions())) }
        }
        Benchmark("ring_hash pick, \(n) endpoints") { benchmark in
            hashedPicks(benchmark, RingHash(table: RingHashTable(keys: keys, weights: weights)))
        }
        Benchmark("maglev pick, \(n) endpoints") { benchmark in
            hashedPicks(benchmark, Maglev(table: MaglevTable(keys: keys, weights: weights)))
        }
    }

    let keys = endpointKeys(10_000)
    let weights = endpointWeights(10_000)
    let build = Benchmark.Configuration(metrics: [.wallClock], scalingFactor: .one, maxDuration: .seconds(5), maxIterations: 20)
    Benchmark("ring_hash table build, 10000 endpoints", configuration: build) { _ in
        blackHole(RingHashTable(keys: keys, weights: weights))
    }
    Benchmark("maglev table build, 10000 endpoints", configuration: build) { _ in
        blackHole(MaglevTable(keys: keys, weights: weights))
    }
    Benchmark("round_robin state build, 10000 endpoints", configuration: build) { _ in
        blackHole(RoundRobin(weights: weights))
    }
}
