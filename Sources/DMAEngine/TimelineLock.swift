#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The lock of a channel's fence timeline and the condition its fence waiters sleep on:
/// one pthread mutex and one `CLOCK_MONOTONIC` condition variable per channel.
///
/// Models the fence context's lock (`dma_fence.lock`, which nouveau shares between all
/// fences of a channel) and the wait queue of `dma_fence_default_wait()`. Sharing them
/// is what lets a fence be created, signalled and waited on without allocating a lock
/// of its own: the per-fault fence of `migrateToRAM` is on a per-page hot path.
/// NIOConcurrencyHelpers' `ConditionLock` waits for one exact value of its own state,
/// and its `NIOLock` does not expose the mutex a condition variable needs; hence this
/// small wrapper over the same pthread primitives.
///
/// Threads: any.
final class TimelineLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    /// Threads sleeping in `wait`; read and written under the mutex.
    private var sleepers = 0

    init() {
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        cond.deallocate()
    }

    @inline(__always) func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) func unlock() { pthread_mutex_unlock(mutex) }

    @inline(__always)
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// With the mutex held: sleeps until `done()` (checked under the mutex) holds, or until
    /// `deadline` (`MonotonicTime` nanoseconds) passes; returns `done()`.
    func wait(until done: () -> Bool, deadline: UInt64? = nil) -> Bool {
        while !done() {
            sleepers += 1
            defer { sleepers -= 1 }
            if let deadline {
                guard MonotonicTime.now() < deadline else { return false }
                var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                _ = pthread_cond_timedwait(cond, mutex, &ts)
            } else {
                pthread_cond_wait(cond, mutex)
            }
        }
        return true
    }

    /// With the mutex held: wakes every sleeper, if there is one (`wake_up_all`).
    @inline(__always)
    func wakeAll() {
        if sleepers > 0 { pthread_cond_broadcast(cond) }
    }
}
