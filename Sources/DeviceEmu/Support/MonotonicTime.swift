import DMAEngine

/// The `Duration` conversion of observer events and residency times, on the engine's
/// clock (`CLOCK_MONOTONIC`, also `Fence.timestamp`'s and `dmem-bench`'s traces').
extension MonotonicTime {
    /// Nanoseconds of a `Duration`, clamped to `0 ... UInt64.max / 2` (so that adding one
    /// to a clock reading cannot overflow).
    static func nanoseconds(_ d: Duration) -> UInt64 {
        let (s, atto) = d.components
        guard s >= 0 else { return 0 }
        let (n, overflow) = UInt64(s).multipliedReportingOverflow(by: 1_000_000_000)
        // Above `.max / 2` already: clamp before adding the fraction, which could overflow.
        guard !overflow, n <= .max / 2 else { return .max / 2 }
        return min(n + UInt64(max(0, atto) / 1_000_000_000), .max / 2)
    }
}
