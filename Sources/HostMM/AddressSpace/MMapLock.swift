#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The reader/writer lock of an address space (`mm->mmap_lock`, an rw_semaphore).
///
/// Read mode: CPU faults, `hmmRangeFault`, and the whole `migrateVMASetup` →
/// `migrateVMAFinalize` sequence (the caller takes it). Write mode: `mmap`, `munmap`,
/// `mprotect`, `fork` (they take it themselves). Built on `pthread_rwlock_t`, which
/// prefers readers, so a thread already holding it for read may take it for read again
/// (a `migrateToRAM` handler runs under the faulting thread's read lock).
/// Any thread may use it.
public final class MMapLock: @unchecked Sendable {
    private let rw: UnsafeMutablePointer<pthread_rwlock_t>
    private let readers = Atomic<Int>(0)
    private let writer = Atomic<Bool>(false)

    init() {
        rw = .allocate(capacity: 1)
        pthread_rwlock_init(rw, nil)
    }

    deinit {
        pthread_rwlock_destroy(rw)
        rw.deallocate()
    }

    /// `mmap_read_lock()`.
    public func readLock() {
        pthread_rwlock_rdlock(rw)
        readers.wrappingAdd(1, ordering: .relaxed)
    }

    /// `mmap_read_unlock()`.
    public func readUnlock() {
        readers.wrappingSubtract(1, ordering: .relaxed)
        pthread_rwlock_unlock(rw)
    }

    /// `mmap_write_lock()`.
    public func writeLock() {
        pthread_rwlock_wrlock(rw)
        writer.store(true, ordering: .relaxed)
    }

    /// `mmap_write_unlock()`.
    public func writeUnlock() {
        writer.store(false, ordering: .relaxed)
        pthread_rwlock_unlock(rw)
    }

    /// Runs `body` holding the lock in read mode.
    public func withReadLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        readLock()
        defer { readUnlock() }
        return try body()
    }

    /// Runs `body` holding the lock in write mode.
    public func withWriteLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        writeLock()
        defer { writeUnlock() }
        return try body()
    }

    /// True while some thread holds the lock in either mode (`mmap_assert_locked`;
    /// it cannot tell which thread).
    public var isLocked: Bool { readers.load(ordering: .relaxed) > 0 || writer.load(ordering: .relaxed) }
}
