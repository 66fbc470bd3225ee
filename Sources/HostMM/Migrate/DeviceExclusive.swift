/// Device-exclusive access: a device takes a page away from the CPU for atomics; the
/// CPU entry becomes a device-exclusive entry until the next CPU access restores it
/// (`make_device_exclusive`, `remove_device_exclusive_entry`).
extension AddressSpace {
    /// Makes the page at `address` exclusive to the device of `owner` and returns its PFN
    /// with an extra reference and the page lock held, as `make_device_exclusive` does;
    /// the driver maps it, then calls `unlockPage` and `putPage`. Notifiers see
    /// `.exclusive` with `owner`. The caller holds the mmap lock (read).
    /// - Throws: `.invalidArgument` for an unaligned address or a non-anonymous VMA;
    ///   fault errors from making the page present and writable; `.busy` if the entry
    ///   changed underneath; `.mmapLockNotHeld`.
    public func makeDeviceExclusive(_ address: UInt64, owner: PgmapOwner) throws(HostMMError) -> PFN {
        guard address.isPageAligned else { throw .invalidArgument }
        guard mmapLock.isLocked else { throw .mmapLockNotHeld }
        guard let vma = findVMA(address) else { throw .fault }
        guard vma.isAnonymous, vma.flags.contains(.write) else { throw .invalidArgument }
        // GUP with FOLL_WRITE: a present, writable, exclusive page.
        var pte = pageTable.entry(address)
        var attempts = 0
        while !(pte.isPresent && pte.isWritable && !pte.isSpecial) {
            try handleMMFault(vma, address, write: true)
            pte = pageTable.entry(address)
            attempts += 1
            if attempts > 16 { throw .busy }
        }
        let page = pte.pfn
        guard memory.getPageUnlessZero(page) else { throw .busy }
        memory.lockPage(page)
        let installed: Bool = notifiers.invalidating(address, address + UInt64(pageSize), .exclusive, owner: owner) {
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
        guard installed else {
            memory.unlockPage(page)
            memory.putPage(page)
            throw .busy
        }
        return page
    }
}
