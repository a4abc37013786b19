// What a completion is about, packed into the 64-bit user_data of its submission:
// operation (8 bits) | flow or side (8) | slot index (24) | slot generation (24).
// The generation catches a completion that arrives for a slot already reused.

public struct UserData: Equatable, Sendable {
    public var raw: UInt64

    @inlinable public init(raw: UInt64) { self.raw = raw }

    @inlinable public init(op: UInt8, sub: UInt8 = 0, slot: Int, generation: UInt32) {
        raw = UInt64(op) << 56 | UInt64(sub) << 48 | UInt64(UInt32(slot) & 0xFF_FFFF) << 24 | UInt64(generation & 0xFF_FFFF)
    }

    @inlinable public var op: UInt8 { UInt8(truncatingIfNeeded: raw >> 56) }
    @inlinable public var sub: UInt8 { UInt8(truncatingIfNeeded: raw >> 48) }
    @inlinable public var slot: Int { Int((raw >> 24) & 0xFF_FFFF) }
    @inlinable public var generation: UInt32 { UInt32(raw & 0xFF_FFFF) }

    /// Completions a backend asks for itself (a failed close or shutdown on the ring); callers
    /// ignore the operation 0xFF.
    public static let backendInternal = UserData(op: 0xFF, slot: 0, generation: 0)

    /// Slot generations wrap at 24 bits.
    public static let generationMask: UInt32 = 0xFF_FFFF
}
