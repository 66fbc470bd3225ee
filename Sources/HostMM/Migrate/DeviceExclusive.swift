#if canImport(Glibc)
import Glibc
#endif

/// Device-exclusive access: a device takes a page away from the CPU for atomics; the
/// CPU entry becomes a device-exclusive entry until the next CPU access restores it
/// (`make_device_exclusive`, `remove_device_exclusive_entry`). `fork` restores such
/// entries in the parent before sharing the page copy-on-write (`copy_nonpresent_pte`).
extension AddressSpace {
    /// Makes the page at `address` exclusive to a device and returns its PFN with an
    /// extra reference and the page lock held, as `make_device_exclusive` does; the
    /// driver maps it, then calls `unlockPage` and `putPage`.
    ///
    /// The page is first faulted in for write (GUP with `FOLL_WRITE`: a hole gets a new
    /// page, a shared or zero page is copied, a device-private page comes back through
    /// `migrateToRAM`, an older device-exclusive entry is restored). Notifiers then see
    /// `.exclusive` with `owner` over the page — the kernel passes no owner since 6.15,
    /// so every mirror, the caller's included, drops its entry. The caller holds the mmap
    /// lock (read).
    /// - Throws: `.invalidArgument` for an unaligned address; `.fault` where GUP fails —
    ///   no VMA, no write permission (including `PROT_NONE`), a `VM_IO`/`VM_PFNMAP`
    ///   mapping, or a fault that cannot be resolved; `.notSupported` (`EOPNOTSUPP`) when
    ///   the page is not anonymous (shmem, page cache) or the VMA is hugetlb;
    ///   `.outOfMemory`; `.mmapLockNotHeld`. Never `EBUSY`: a fault that makes no progress
    ///   (another fault holds the page) is retried until it does, as GUP retries, and an
    ///   entry that changed between the fault and the page lock (a racing `MADV_DONTNEED`,
    ///   a migration) starts it over, as `make_device_exclusive` does (`goto retry`).
    public func makeDeviceExclusive(_ address: UInt64, owner: PgmapOwner? = nil) throws(HostMMError) -> PFN {
        guard address.isPageAligned else { throw .invalidArgument(reason: "address \(address.hex) is not page-aligned") }
        guard mmapLock.isLocked else { throw .mmapLockNotHeld }
        // check_vma_flags for a write GUP.
        guard let vma = findVMA(address), vma.flags.contains(.write),
              vma.flags.isDisjoint(with: [.io, .pfnMap]) else { throw .fault }
        if vma.flags.contains(.hugetlb) { throw .notSupported }
        var attempts = 0
        while true {
            let page = try faultInWritable(vma, address)
            guard memory.isAnon(page) else {
                memory.putPage(page)
                throw .notSupported
            }
            memory.lockPage(page)
            if installExclusiveEntry(address, page, owner) { return page }
            // The entry changed between the GUP and the lock: start over, as the kernel does.
            memory.unlockPage(page)
            memory.putPage(page)
            attempts += 1
            if attempts > 3 { sched_yield() }
        }
    }

    /// GUP's fault loop: resolves faults until `address` maps a present, writable page, and
    /// returns it with a reference taken under the page-table lock (`followWritablePage`).
    /// Like `__get_user_pages` (`faultin_page` returning 0: `goto retry`) it retries for as
    /// long as the fault makes no progress — a device-private page whose lock another
    /// fault holds (`do_swap_page`'s trylock fails: nothing to do but retry) comes back
    /// once that fault finishes; it never gives up with `EBUSY`. Yields after a few
    /// attempts, as a CPU access does (`cond_resched`).
    private func faultInWritable(_ vma: VMA, _ address: UInt64) throws(HostMMError) -> PFN {
        var attempts = 0
        while true {
            if let page = followWritablePage(address) { return page }
            do throws(HostMMError) {
                try handleMMFault(vma, address, write: true)
            } catch {
                switch error {
                case .outOfMemory, .notSupported: throw error
                default: throw .fault
                }
            }
            attempts += 1
            if attempts > 3 { sched_yield() }
        }
    }

    /// `follow_page_pte` with `FOLL_GET | FOLL_WRITE`: the page mapped present and writable
    /// at `address`, with a reference taken under the page-table lock — read before the
    /// reference, the entry may be zapped and its frame freed and handed to another user
    /// (a racing `MADV_DONTNEED` holds the mmap lock for read too) — or nil.
    private func followWritablePage(_ address: UInt64) -> PFN? {
        guard let leaf = pageTable.leaf(address, create: false) else { return nil }
        let i = PTETable.index(address)
        return leaf.lock.withLock { () -> PFN? in
            let pte = leaf[i]
            guard pte.isPresent, pte.isWritable, !pte.isSpecial else { return nil }
            memory.getPage(pte.pfn)   // mapped: the mapping holds a reference
            return pte.pfn
        }
    }

    /// Replaces the writable mapping of `page` by a device-exclusive entry under an
    /// `.exclusive` invalidation; false if the entry no longer maps it writable.
    private func installExclusiveEntry(_ address: UInt64, _ page: PFN, _ owner: PgmapOwner?) -> Bool {
        notifiers.invalidating(address, address + UInt64(pageSize), .exclusive, owner: owner) {
            guard let leaf = pageTable.leaf(address, create: false) else { return false }
            let i = PTETable.index(address)
            return leaf.lock.withLock {
                let now = leaf[i]
                guard now.isPresent, now.pfn == page, now.isWritable else { return false }
                if now.isDirty { memory.setFlags(page, .dirty) }
                leaf.set(i, PageTableEntry(kind: .deviceExclusive, pfn: page, write: true))
                return true
            }
        }
    }
}
