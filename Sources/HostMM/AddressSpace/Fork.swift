#if canImport(Glibc)
import Glibc
#endif

/// `fork()`: duplicate an address space with copy-on-write (`dup_mmap`, `copy_page_range`).
extension AddressSpace {
    /// Creates a child address space with the same VMAs. Private mappings share their
    /// pages copy-on-write: writable entries become read-only in both (notifiers see
    /// `.protectionPage`), device-private entries are shared the same way, writable and
    /// readable-exclusive migration entries become plainly readable. A DMA-pinned
    /// exclusive anonymous page is copied for the child at once (`copy_present_page`).
    /// Shared file mappings are not copied; the child faults them from the page cache.
    /// - Throws: `.outOfMemory` if a pinned page cannot be copied; `.invalidArgument` after `exit`.
    public func fork() throws(HostMMError) -> AddressSpace {
        let child = AddressSpace(memory: memory)
        try mmapLock.withWriteLock { () throws(HostMMError) in
            guard !hasExited else { throw .invalidArgument(reason: "the address space has exited") }
            child.mmapBase = mmapBase
            for vma in vmas {
                let copy = VMA(mm: child, start: vma.start, end: vma.end, pgoff: vma.pgoff,
                               flags: vma.flags, anonRoot: vma.anonRoot, file: vma.file)
                for root in copy.roots { root.link(copy) }
                child.vmas.append(copy)
                // vma_needs_copy: private anonymous state or raw PFN mappings (a special
                // VMA holds entries only as VM_PFNMAP / VM_MIXEDMAP).
                let rawPFNs = !vma.flags.isDisjoint(with: [.pfnMap, .mixedMap])
                guard rawPFNs || (vma.anonRoot != nil && vma.flags.isDisjoint(with: .special)) else { continue }
                // copy_page_range: only a COW mapping is write-protected, under PROTECTION_PAGE.
                guard vma.isCOWMapping else {
                    try copyPageRange(from: vma, to: copy, child)
                    continue
                }
                try notifiers.invalidating(vma.start, vma.end, .protectionPage) { () throws(HostMMError) in
                    try copyPageRange(from: vma, to: copy, child)
                }
            }
        }
        return child
    }

    private func copyPageRange(from vma: VMA, to copy: VMA, _ child: AddressSpace) throws(HostMMError) {
        var failure: HostMMError?
        forEachLeaf(vma.start, vma.end) { leaf, i, addr in
            guard failure == nil, !leaf[i].isNone,
                  let childLeaf = child.pageTable.leaf(addr, create: true) else { return }
            do throws(HostMMError) {
                let entry = try copyEntry(vma, leaf, i, addr, copy)
                childLeaf.lock.withLock { childLeaf.set(PTETable.index(addr), entry) }
            } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// `copy_present_pte` / `copy_nonpresent_pte`: the child's entry for one parent
    /// entry, write-protecting the parent's where copy-on-write requires. Leaf lock held.
    private func copyEntry(_ vma: VMA, _ leaf: PTETable, _ i: Int, _ addr: UInt64, _ copy: VMA) throws(HostMMError) -> PageTableEntry {
        var pte = leaf[i]
        let cow = vma.isCOWMapping
        if pte.kind == .deviceExclusive {
            // The parent gets its ordinary entry back first (try_restore_exclusive_pte).
            pte = PageTableEntry(kind: .present, pfn: pte.pfn, write: pte.isWritable && vma.flags.contains(.write),
                                 dirty: pte.isWritable)
            leaf.set(i, pte)
        }
        switch pte.kind {
        case .none, .deviceExclusive:
            return .none
        case .migration:
            // Writable or readable-exclusive: the page is shared from now on.
            if (pte.isWritable || pte.isExclusive) && cow {
                pte = .migration(pte.pfn, write: false, exclusive: false, young: pte.isYoung, dirty: pte.isDirty)
                leaf.set(i, pte)
            }
            return pte
        case .devicePrivate:
            memory.getPage(pte.pfn)
            memory.addMapcount(pte.pfn, 1)
            memory.clearFlags(pte.pfn, .anonExclusive)
            if pte.isWritable && cow {
                pte = pte.with(write: false)
                leaf.set(i, pte)
            }
            return pte
        case .present:
            if pte.isSpecial {
                if pte.isWritable && cow {
                    pte = pte.with(write: false)
                    leaf.set(i, pte)
                }
                return pte
            }
            let page = pte.pfn
            if memory.isAnon(page) && memory.flags(page).contains(.anonExclusive) && memory.maybeDMAPinned(page) {
                return try copyPinnedPage(page, pte, copy, addr)
            }
            if memory.isAnon(page) { memory.clearFlags(page, .anonExclusive) }
            memory.getPage(page)
            memory.addMapcount(page, 1)
            if pte.isWritable && cow {
                pte = pte.with(write: false)
                leaf.set(i, pte)
            }
            if vma.flags.contains(.shared) { pte = pte.with(dirty: false) }
            return pte.with(young: false)
        }
    }

    /// `copy_present_page`: the child cannot share a page the parent has pinned for DMA.
    private func copyPinnedPage(_ page: PFN, _ pte: PageTableEntry, _ copy: VMA, _ addr: UInt64) throws(HostMMError) -> PageTableEntry {
        guard let fresh = memory.allocPage() else { throw .outOfMemory }
        memcpy(memory.bytes(fresh)!, memory.bytes(page)!, pageSize)
        addNewAnonRmap(copy, fresh, addr)
        return PageTableEntry(kind: .present, pfn: fresh, write: pte.isWritable, dirty: true, young: true)
    }
}
