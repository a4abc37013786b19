// Slow start: a new endpoint's weight ramps from a floor to its full value over a window, so a
// cold cache or JIT is not handed its full share at once (as Envoy's slow_start_config).

public struct SlowStart: Sendable, Equatable {
    public var windowNanoseconds: Int64
    /// 1.0 ramps linearly; larger values ramp faster at first.
    public var aggression: Double
    /// The share of its weight an endpoint gets at the start of its window.
    public var minimumWeightFraction: Double

    public init(windowNanoseconds: Int64, aggression: Double = 1.0, minimumWeightFraction: Double = 0.1) {
        self.windowNanoseconds = windowNanoseconds; self.aggression = aggression
        self.minimumWeightFraction = minimumWeightFraction
    }

    /// The fraction of its weight an endpoint added at `addedAt` gets at `now` (1 once out of the
    /// window, or when it was never added during this process's life).
    @inlinable
    public func factor(addedAt: Int64?, now: Int64) -> Double {
        guard let addedAt, windowNanoseconds > 0 else { return 1 }
        let elapsed = now - addedAt
        if elapsed >= windowNanoseconds { return 1 }
        let t = Double(max(0, elapsed)) / Double(windowNanoseconds)
        return max(minimumWeightFraction, pow(t, 1 / aggression))
    }
}

#if canImport(Glibc)
import Glibc
#endif
