#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A pthread mutex and condition variable: the sleep/wake primitive behind page-lock
/// waiters and MMU-notifier `read_begin` waiters (`wait_queue_head_t`).
///
/// NIOConcurrencyHelpers' `ConditionLock` waits for one exact value; these waiters
/// need "wait until a predicate holds", so this small wrapper over the same pthread
/// primitives is used instead. Any thread may use it.
final class WaitQueue: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    /// Number of threads currently sleeping in `wait(until:)`; read under the mutex.
    private(set) var sleepers = 0

    init() {
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        cond.deallocate()
    }

    /// Runs `body` with the queue's mutex held.
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Sleeps until `done()` returns true; `prepare` runs under the mutex before each
    /// check (e.g. to set `PG_waiters`). `done` is evaluated with the mutex held.
    func wait(prepare: () -> Void = {}, until done: () -> Bool) {
        pthread_mutex_lock(mutex)
        while true {
            prepare()
            if done() { break }
            sleepers += 1
            pthread_cond_wait(cond, mutex)
            sleepers -= 1
        }
        pthread_mutex_unlock(mutex)
    }

    /// Sleeps at most once: `prepare` then `done` run under the mutex, and unless `done`
    /// returned true, waits for the next wake (or a spurious one) and returns without
    /// checking again — a waiter that may no longer touch what it waited on (the `DROP`
    /// behaviour of `folio_wait_bit_common`).
    func waitOnce(prepare: () -> Void, until done: () -> Bool) {
        pthread_mutex_lock(mutex)
        prepare()
        if !done() {
            sleepers += 1
            pthread_cond_wait(cond, mutex)
            sleepers -= 1
        }
        pthread_mutex_unlock(mutex)
    }

    /// Wakes every sleeper (`wake_up_all`); `before` runs under the mutex first (e.g. to
    /// clear `PG_waiters`: every sleeper is woken, and those still waiting set it again).
    func wakeAll(before: () -> Void = {}) {
        pthread_mutex_lock(mutex)
        before()
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
    }
}
