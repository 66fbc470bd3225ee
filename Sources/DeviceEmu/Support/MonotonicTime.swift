import DMAEngine

/// The `Duration` conversion of observer events and residency times, on the engine's
/// clock (`CLOCK_MONOTONIC`, also `Fence.timestamp`'s and `dmem-bench`'s traces').
extension MonotonicTime {
    /// Nanoseconds of a `Duration`, clamped at zero.
    static func nanoseconds(_ d: Duration) -> UInt64 {
        let (s, atto) = d.components
        guard s >= 0 else { return 0 }
        return UInt64(s) &* 1_000_000_000 &+ UInt64(max(0, atto) / 1_000_000_000)
    }
}
