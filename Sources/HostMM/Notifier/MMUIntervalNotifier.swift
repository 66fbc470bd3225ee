import NIOConcurrencyHelpers
import Synchronization

/// A driver's callback for invalidations overlapping its interval
/// (`struct mmu_interval_notifier_ops`).
///
/// Called on the invalidating thread, with that thread's mmap lock held and no
/// page-table or page lock held. The driver takes its own lock, calls
/// `notifier.setSequence(currentSequence)`, tears down its mirror of the range, and
/// returns true (blocking is always allowed in this model).
public protocol MMUIntervalNotifierOps: AnyObject, Sendable {
    func invalidate(_ notifier: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool
}

/// A subscription to invalidations of `[start, end)` in one address space
/// (`struct mmu_interval_notifier`), with the sequence protocol drivers use to detect
/// that a snapshot (e.g. from `hmmRangeFault`) went stale.
///
/// Driver pattern: `seq = readBegin()`; take a snapshot; take the driver lock; if
/// `readRetry(seq)` start over; else program the device; unlock.
/// Thread-safe.
public final class MMUIntervalNotifier: @unchecked Sendable {
    public let start: UInt64
    public let end: UInt64
    let ops: any MMUIntervalNotifierOps
    /// Not retained: a notifier does not keep its address space alive. The subscriptions
    /// live as long as the address space or any VMA of it (rmap walkers reach them through
    /// the VMA, as the kernel's reach `vma->vm_mm`); once all are gone the notifier is inert.
    weak let subscriptions: MMUNotifierSubscriptions?
    /// `mni->invalidate_seq`: written by `insert` under `subscriptions.lock` and by
    /// `setSequence` from inside `invalidate` (`WRITE_ONCE` in the kernel), read by
    /// `readRetry` under the driver's lock (`READ_ONCE`). No lock of its own: `setSequence`
    /// runs once per invalidated page on eviction and unmap paths.
    let invalidateSeq: Synchronization.Atomic<UInt64>
    var isInserted = true

    init(start: UInt64, end: UInt64, ops: any MMUIntervalNotifierOps,
         subscriptions: MMUNotifierSubscriptions, seq: UInt64) {
        self.start = start
        self.end = end
        self.ops = ops
        self.subscriptions = subscriptions
        self.invalidateSeq = Synchronization.Atomic(seq)
    }

    /// The address space watched; nil once it has been deallocated (a driver that kept
    /// the notifier past the process's end must not walk it: `hmmRangeFault` then fails
    /// with `.fault`).
    public var mm: AddressSpace? { subscriptions?.mm }

    /// `mmu_interval_read_begin()`: a sequence number for a new snapshot; waits first if
    /// an invalidation of this interval is in progress.
    public func readBegin() -> UInt64 { subscriptions?.readBegin(self) ?? invalidateSeq.load(ordering: .acquiring) }

    /// `mmu_interval_read_retry()`: true when an invalidation ran since `readBegin`
    /// returned `sequence` (call under the driver lock that `invalidate` also takes).
    public func readRetry(_ sequence: UInt64) -> Bool { invalidateSeq.load(ordering: .acquiring) != sequence }

    /// `mmu_interval_check_retry()`: the same test, usable without the driver lock as an
    /// early-out (`hmm_range_fault` calls it).
    public func checkRetry(_ sequence: UInt64) -> Bool { readRetry(sequence) }

    /// `mmu_interval_set_seq()`: called by `invalidate` with `currentSequence`.
    public func setSequence(_ sequence: UInt64) { invalidateSeq.store(sequence, ordering: .releasing) }

    /// `mmu_interval_notifier_remove()`: after it returns, `invalidate` is not running
    /// and will not be called again. Must not be called from `invalidate`. A no-op once
    /// the subscriptions are gone.
    public func remove() { subscriptions?.remove(self) }
}
