/// The advice values of `madvise` this model acts on (`MADV_*`).
public enum MadviseAdvice: Sendable, Equatable {
    /// `MADV_NORMAL`: accepted, no effect.
    case normal
    /// `MADV_DONTNEED`: drop the range's pages now; private memory reads back as zeros
    /// (anonymous) or as the file (file-backed) on the next fault.
    case dontNeed
    /// `MADV_FREE`: the range's anonymous pages become lazily freeable: clean, off the
    /// swap-backed list, discarded by reclaim unless written again (reclaim is not
    /// modelled, so the data stays readable).
    case free
    /// `MADV_HUGEPAGE`: accepted, no effect (transparent huge pages are not modelled).
    case hugePage
    /// `MADV_NOHUGEPAGE`: accepted, no effect.
    case noHugePage
}

/// `madvise()` (`do_madvise`, `madvise_dontneed_free`, `madvise_free_pte_range`).
extension AddressSpace {
    /// Applies `advice` to `[address, address + length)`, VMA by VMA. An empty length
    /// does nothing. Takes the mmap lock for read, as the kernel does for these advices
    /// (`madvise_need_mmap_write`): a `.dontNeed` may meet a migration between its setup
    /// and its finalize, and zap the migration entries it installed.
    ///
    /// `.dontNeed` zaps the entries under a `.clear` invalidation: pages lose the
    /// mapping's reference, device pages go back to their driver's `pageFree` when it was
    /// the last. `.free` (under `.clear` too) marks each anonymous page mapped only here
    /// clean and lazily freeable; device pages and entries that are not present
    /// (device-private, migration) are left alone, as in the kernel.
    /// - Throws: `.invalidArgument` (`EINVAL`) for an unaligned address, a range that
    ///   wraps around, `.dontNeed`/`.free` on a `VM_LOCKED`, `VM_PFNMAP` or
    ///   hugetlb VMA, or `.free` on a VMA that is not private anonymous memory;
    ///   `.outOfMemory` (`ENOMEM`) when part of the range is not mapped — after applying
    ///   the advice to the mapped parts, as the kernel does.
    public func madvise(_ address: UInt64, length: Int, advice: MadviseAdvice) throws(HostMMError) {
        guard address.isPageAligned else { throw .invalidArgument(reason: "address \(address.hex) is not page-aligned") }
        guard length >= 0 else { throw .invalidArgument(reason: "negative length \(length)") }
        let len = (UInt64(length) + pageOffsetMask) & ~pageOffsetMask
        guard address <= UInt64.max - len else { throw .invalidArgument(reason: "\(len) bytes at \(address.hex) wrap around") }
        guard len > 0 else { return }
        let end = address + len
        try mmapLock.withReadLock { () throws(HostMMError) in
            var covered = address
            var hole = false
            for vma in vmas where vma.end > address && vma.start < end {
                if vma.start > covered { hole = true }
                let s = max(address, vma.start), e = min(end, vma.end)
                try apply(advice, vma, s, e)
                covered = e
            }
            if hole || covered < end { throw .outOfMemory }
        }
    }

    private func apply(_ advice: MadviseAdvice, _ vma: VMA, _ start: UInt64, _ end: UInt64) throws(HostMMError) {
        switch advice {
        case .normal, .hugePage, .noHugePage:
            return
        case .dontNeed, .free:
            // madvise_dontneed_free_valid_vma / can_madv_lru_vma.
            guard vma.flags.isDisjoint(with: [.locked, .pfnMap, .hugetlb]) else {
                throw .invalidArgument(reason: "\(advice == .free ? "MADV_FREE" : "MADV_DONTNEED") on VM_LOCKED, VM_PFNMAP or hugetlb \(vma)")
            }
        }
        if advice == .dontNeed {
            notifiers.invalidating(start, end, .clear) { zapRange(vma, start, end) }
            return
        }
        guard vma.isAnonymous else { throw .invalidArgument(reason: "MADV_FREE on \(vma), which is not private anonymous memory") }
        notifiers.invalidating(start, end, .clear) { markLazyFree(vma, start, end) }
    }

    /// `madvise_free_pte_range` for small pages.
    private func markLazyFree(_ vma: VMA, _ start: UInt64, _ end: UInt64) {
        forEachLeaf(start, end) { leaf, i, _ in
            let pte = leaf[i]
            guard pte.isPresent, !pte.isSpecial else { return }
            let page = pte.pfn
            // Device pages, and pages other processes map too, keep their state.
            guard memory.isRAM(page), memory.isAnon(page), memory.mapcount(page) == 1 else { return }
            if memory.flags(page).contains(.dirty) {
                guard memory.trylockPage(page) else { return }
                memory.clearFlags(page, .dirty)
                memory.unlockPage(page)
            }
            if pte.isDirty || pte.isYoung { leaf.set(i, pte.with(dirty: false).with(young: false)) }
            memory.clearFlags(page, .swapBacked)   // folio_mark_lazyfree
        }
    }
}
