#if canImport(Glibc)
import Glibc
#endif

/// Nanoseconds of `CLOCK_MONOTONIC`, the clock of `Fence.timestamp` (the kernel stamps
/// `dma_fence.timestamp` with `ktime_get()`, the same clock).
///
/// DeviceEmu's observer events and `dmem-bench` traces use it too, so all of them line up.
///
/// Threads: any; no state.
public enum MonotonicTime {
    /// The current time.
    @inline(__always)
    public static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Sleeps `nanoseconds` without spinning (off hot paths: backoff, residency waits).
    public static func sleep(nanoseconds: UInt64) {
        var request = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }
}
