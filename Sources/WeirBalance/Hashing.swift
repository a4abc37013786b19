// xxHash64 (Yann Collet's algorithm, written here from its specification) and SplitMix64, the
// hash and the random source balancers use. No I/O, no global state.

public enum XXHash64 {
    @usableFromInline static let p1: UInt64 = 0x9E3779B185EBCA87
    @usableFromInline static let p2: UInt64 = 0xC2B2AE3D27D4EB4F
    @usableFromInline static let p3: UInt64 = 0x165667B19E3779F9
    @usableFromInline static let p4: UInt64 = 0x85EBCA77C2B2AE63
    @usableFromInline static let p5: UInt64 = 0x27D4EB2F165667C5

    @inlinable static func rotl(_ x: UInt64, _ r: UInt64) -> UInt64 { (x << r) | (x >> (64 - r)) }
    @inlinable static func round(_ acc: UInt64, _ input: UInt64) -> UInt64 {
        rotl(acc &+ input &* p2, 31) &* p1
    }
    @inlinable static func merge(_ acc: UInt64, _ val: UInt64) -> UInt64 {
        (acc ^ round(0, val)) &* p1 &+ p4
    }

    /// The 64-bit hash of `bytes` with `seed`.
    @inlinable
    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        let n = bytes.count
        var i = 0
        var h: UInt64
        @inline(__always) func u64(_ at: Int) -> UInt64 { bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self).littleEndian }
        @inline(__always) func u32(_ at: Int) -> UInt64 { UInt64(bytes.loadUnaligned(fromByteOffset: at, as: UInt32.self).littleEndian) }
        if n >= 32 {
            var v1 = seed &+ p1 &+ p2, v2 = seed &+ p2, v3 = seed, v4 = seed &- p1
            while i + 32 <= n {
                v1 = round(v1, u64(i)); v2 = round(v2, u64(i + 8)); v3 = round(v3, u64(i + 16)); v4 = round(v4, u64(i + 24))
                i += 32
            }
            h = rotl(v1, 1) &+ rotl(v2, 7) &+ rotl(v3, 12) &+ rotl(v4, 18)
            h = merge(h, v1); h = merge(h, v2); h = merge(h, v3); h = merge(h, v4)
        } else {
            h = seed &+ p5
        }
        h = h &+ UInt64(n)
        while i + 8 <= n { h ^= round(0, u64(i)); h = rotl(h, 27) &* p1 &+ p4; i += 8 }
        if i + 4 <= n { h ^= u32(i) &* p1; h = rotl(h, 23) &* p2 &+ p3; i += 4 }
        while i < n { h ^= UInt64(bytes[i]) &* p5; h = rotl(h, 11) &* p1; i += 1 }
        h ^= h >> 33; h = h &* p2; h ^= h >> 29; h = h &* p3; h ^= h >> 32
        return h
    }

    public static func hash(_ bytes: [UInt8], seed: UInt64 = 0) -> UInt64 {
        bytes.withUnsafeBytes { hash($0, seed: seed) }
    }
}

/// A small, fast, seedable random source; each shard owns one.
public struct SplitMix64: Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    @inlinable public mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
    /// A uniform double in [0, 1).
    @inlinable public mutating func nextDouble() -> Double { Double(next() >> 11) / Double(UInt64(1) << 53) }

    /// A uniform integer in 0..<n (Lemire's multiply-shift; the bias is below 2^-32 for n < 2^32).
    @inlinable public mutating func below(_ n: Int) -> Int {
        Int(truncatingIfNeeded: (UInt64(UInt32(truncatingIfNeeded: next() >> 32)) &* UInt64(n)) >> 32)
    }
}
