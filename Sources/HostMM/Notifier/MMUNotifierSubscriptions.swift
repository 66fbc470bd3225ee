import NIOConcurrencyHelpers

/// The per-mm notifier state (`struct mmu_notifier_subscriptions`): the intervals, the
/// mm-wide `invalidate_seq` (odd while an invalidation touching some interval runs), and
/// the wait queue for `readBegin`.
///
/// Thread-safe; callbacks run without the internal lock held.
public final class MMUNotifierSubscriptions: @unchecked Sendable {
    /// The owning address space; not retained (it owns these subscriptions), nil once
    /// it is deallocated.
    weak let mm: AddressSpace?
    private let lock = NIOLock()
    private var intervals: [MMUIntervalNotifier] = []
    private var invalidateSeq: UInt64 = 2
    private var activeInvalidations = 0
    private let waiters = WaitQueue()
    private var invalidations = 0
    /// Invalidations started so far, for tests and traces.
    public var invalidationCount: Int { lock.withLock { invalidations } }

    init(mm: AddressSpace) { self.mm = mm }

    /// Subscribes `ops` to invalidations of `[start, start + length)`
    /// (`mmu_interval_notifier_insert`).
    /// - Throws: `.invalidArgument` for an empty or overflowing range.
    public func insert(start: UInt64, length: UInt64, ops: any MMUIntervalNotifierOps) throws(HostMMError) -> MMUIntervalNotifier {
        guard length > 0 else { throw .invalidArgument(reason: "empty range: length 0 at \(start.hex)") }
        guard start <= UInt64.max - length else { throw .invalidArgument(reason: "\(length) bytes at \(start.hex) wrap around") }
        return lock.withLock {
            // No invalidation running: an odd seq different from the mm's (never "busy").
            // Any invalidation running, even one that hit no interval (it may be tearing
            // down this range and will not call the new interval): the mm's seq made odd,
            // so readBegin waits for the last one to end.
            let seq: UInt64
            if activeInvalidations > 0 {
                invalidateSeq |= 1
                seq = invalidateSeq
            } else {
                seq = invalidateSeq - 1
            }
            let n = MMUIntervalNotifier(start: start, end: start + length, ops: ops, subscriptions: self, seq: seq)
            intervals.append(n)
            return n
        }
    }

    func readBegin(_ n: MMUIntervalNotifier) -> UInt64 {
        let (seq, busy) = lock.withLock { () -> (UInt64, Bool) in
            let seq = n.invalidateSeq.load(ordering: .acquiring)
            return (seq, seq == invalidateSeq)
        }
        if busy {
            waiters.wait(until: { lock.withLock { invalidateSeq != seq } })
        }
        return seq
    }

    func remove(_ n: MMUIntervalNotifier) {
        let waitFor: UInt64? = lock.withLock {
            intervals.removeAll { $0 === n }
            n.isInserted = false
            return invalidateSeq & 1 == 1 ? invalidateSeq : nil
        }
        if let seq = waitFor {
            waiters.wait(until: { lock.withLock { invalidateSeq != seq } })
        }
    }

    /// `mmu_notifier_invalidate_range_start()` for interval subscribers.
    ///
    /// Runs once per page on eviction and unmap paths, so it allocates nothing: the hit
    /// intervals are gathered unretained on the stack. That is safe because `remove` of an
    /// interval this invalidation hit waits for the sequence to move on, which it does only
    /// after `invalidateEnd` (the kernel's interval tree walk relies on the same).
    func invalidateStart(_ range: MMUNotifierRange) {
        lock.lock()
        activeInvalidations += 1
        invalidations += 1
        let count = intervals.count
        guard count > 0 else {
            lock.unlock()
            return
        }
        withUnsafeTemporaryAllocation(of: Unmanaged<MMUIntervalNotifier>.self, capacity: count) { hits in
            var n = 0
            for k in 0..<count {
                let interval = intervals[k]
                if interval.start < range.end && range.start < interval.end {
                    hits.initializeElement(at: n, to: .passUnretained(interval))
                    n += 1
                }
            }
            if n > 0 { invalidateSeq |= 1 }
            let seq = invalidateSeq
            lock.unlock()
            for k in 0..<n {
                hits[k]._withUnsafeGuaranteedRef { _ = $0.ops.invalidate($0, range: range, currentSequence: seq) }
            }
        }
    }

    /// `mmu_notifier_invalidate_range_end()`.
    func invalidateEnd(_ range: MMUNotifierRange) {
        let wake: Bool = lock.withLock {
            activeInvalidations -= 1
            guard activeInvalidations == 0, invalidateSeq & 1 == 1 else { return false }
            invalidateSeq += 1
            return true
        }
        if wake { waiters.wakeAll() }
    }

    /// Runs `body` between invalidate start and end for `[start, end)`.
    func invalidating<T, E: Error>(_ start: UInt64, _ end: UInt64, _ event: MMUNotifyEvent,
                                   owner: PgmapOwner? = nil, _ body: () throws(E) -> T) throws(E) -> T {
        let range = MMUNotifierRange(start: start, end: end, event: event, owner: owner)
        invalidateStart(range)
        defer { invalidateEnd(range) }
        return try body()
    }
}
