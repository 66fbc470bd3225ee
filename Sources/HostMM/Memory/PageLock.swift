import Synchronization

/// The page lock (`PG_locked`), with sleeping waiters on hashed wait queues
/// (`folio_lock`, `folio_trylock`, `folio_unlock`, `folio_wait_locked`).
///
/// The fast paths are one atomic operation; contended lockers set `PG_waiters` and
/// sleep on one of 128 queues chosen by PFN, and `unlockPage` wakes that queue only
/// when `PG_waiters` was set — the kernel's scheme. Any thread may call these.
extension PhysicalMemory {
    private func queue(_ pfn: PFN) -> WaitQueue {
        waitQueues[Int(truncatingIfNeeded: (pfn.rawValue &* 0x9E37_79B9_7F4A_7C15) >> 57)]
    }

    /// `folio_trylock()`: takes the lock if free; never sleeps.
    public func trylockPage(_ pfn: PFN) -> Bool {
        guard checked(pfn) else { return false }
        let old = meta[Int(pfn.rawValue)].flags.bitwiseOr(PageFlags.locked.rawValue, ordering: .sequentiallyConsistent).oldValue
        return old & PageFlags.locked.rawValue == 0
    }

    /// `folio_lock()`: takes the lock, sleeping until it is free.
    public func lockPage(_ pfn: PFN) {
        guard checked(pfn) else { return }
        if trylockPage(pfn) { return }
        let q = queue(pfn)
        q.wait(prepare: { setWaiters(pfn) }, until: {
            guard trylockPage(pfn) else { return false }
            if q.sleepers == 0 { clearFlags(pfn, .waiters) }
            return true
        })
    }

    /// `folio_unlock()`: releases the lock and wakes sleepers if `PG_waiters` is set.
    /// Unlocking a page that is not locked is counted in `diagnostics` (and reported with
    /// `fileID`/`line` in checked mode).
    ///
    /// The waker clears `PG_waiters` under the queue's mutex before the wake, as
    /// `folio_wake_bit` does once no waiter of the page is left: every sleeper of the
    /// queue wakes, and each one still waiting sets it again before it checks. Without
    /// this a sleeper that may not touch the page after its wake (`putPageAndWaitOnUnlocked`)
    /// left the bit set, and every later unlock of the page took the mutex to wake no one.
    public func unlockPage(_ pfn: PFN, fileID: StaticString = #fileID, line: UInt = #line) {
        guard checked(pfn) else { return }
        let old = meta[Int(pfn.rawValue)].flags.bitwiseAnd(~PageFlags.locked.rawValue, ordering: .sequentiallyConsistent).oldValue
        if old & PageFlags.locked.rawValue == 0 { unlockedUnlocked(pfn, CallSite(fileID: fileID, line: line)) }
        if old & PageFlags.waiters.rawValue != 0 { wakeWaiters(pfn) }
    }

    /// The contended half of `unlockPage`: clears `PG_waiters` and wakes the page's queue.
    @inline(never)
    private func wakeWaiters(_ pfn: PFN) {
        queue(pfn).wakeAll(before: { clearFlags(pfn, .waiters) })
    }

    /// True while the page lock is held (`folio_test_locked`).
    public func isPageLocked(_ pfn: PFN) -> Bool { flags(pfn).contains(.locked) }

    /// `folio_wait_locked()`: sleeps until the page is unlocked, without taking the lock.
    ///
    /// The caller must hold a reference to the page for the whole wait (the kernel never
    /// waits "against a page without get_page()"): a page freed meanwhile has its flags
    /// reset — `PG_waiters` with them — so once reused and locked again, its unlock would
    /// not wake this thread. To wait without keeping the reference while asleep, use
    /// `putPageAndWaitOnUnlocked`.
    public func waitOnPageUnlocked(_ pfn: PFN) {
        guard checked(pfn), isPageLocked(pfn) else { return }
        let q = queue(pfn)
        q.wait(prepare: { setWaiters(pfn) }, until: {
            let done = !isPageLocked(pfn)
            if done && q.sleepers == 0 { clearFlags(pfn, .waiters) }
            return done
        })
    }

    /// `put_and_wait_on_page_locked()` (`folio_put_wait_locked`): drops a reference the
    /// caller took to reach the page (`get_page_unless_zero` under the page-table lock, as
    /// `__migration_entry_wait` does) and sleeps until the page is unlocked — or until any
    /// wake of its hashed queue: the caller retries whatever it was doing either way.
    ///
    /// The reference goes only after `PG_waiters` is set and the lock seen held: whoever
    /// holds the lock holds a reference too and unlocks before dropping it, so the page
    /// cannot be freed (its flags reset) and reused before that unlock wakes this thread.
    /// Once the reference is gone the page is not looked at again: it may have been freed
    /// and locked anew by another owner, who would not wake a sleeper whose `PG_waiters`
    /// the free erased. The sleeper holds no reference that would make `migrateMapping`
    /// refuse the very migration it waits for. Frees the page if that reference was the last.
    public func putPageAndWaitOnUnlocked(_ pfn: PFN, fileID: StaticString = #fileID, line: UInt = #line) {
        guard checked(pfn) else { return }
        let site = CallSite(fileID: fileID, line: line)
        let q = queue(pfn)
        var last = false
        q.waitOnce(prepare: { setWaiters(pfn) }, until: {
            let unlocked = !isPageLocked(pfn)
            if unlocked && q.sleepers == 0 { clearFlags(pfn, .waiters) }
            last = dropReference(pfn, count: 1, site: site)
            return unlocked
        })
        if last { freePage(pfn, site: site) }
    }

    /// The cold path of unlocking a page that was not locked: count and report it.
    @inline(never)
    private func unlockedUnlocked(_ pfn: PFN, _ site: CallSite) {
        diagnostics.badUnlocks.wrappingAdd(1, ordering: .relaxed)
        checker?.report(.unlockOfUnlockedPage, pfn: pfn, site: site, "unlock_page on a page that is not locked")
    }

    private func setWaiters(_ pfn: PFN) {
        meta[Int(pfn.rawValue)].flags.bitwiseOr(PageFlags.waiters.rawValue, ordering: .sequentiallyConsistent)
    }
}
