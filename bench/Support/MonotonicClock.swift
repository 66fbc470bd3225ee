import DMAEngine

/// Nanoseconds of `CLOCK_MONOTONIC` (the engine's `MonotonicTime`, which also stamps
/// fences): the one clock for timings, latency samples and trace timestamps.
///
/// Threads: any; no state.
enum MonotonicClock {
    @inline(__always)
    static func now() -> UInt64 { MonotonicTime.now() }

    /// Seconds elapsed since `start` (a value of `now()`).
    static func seconds(since start: UInt64) -> Double {
        Double(now() &- start) / 1e9
    }

    /// Sleeps without spinning (used only off the hot path).
    static func sleep(nanoseconds: UInt64) { MonotonicTime.sleep(nanoseconds: nanoseconds) }
}
