#if canImport(Glibc)
import Glibc
#endif

/// Write faults on present read-only entries (`do_wp_page`): reuse the page when this
/// mapping owns it exclusively, otherwise copy it (`wp_page_copy`).
extension AddressSpace {
    func doWPPage(_ vma: VMA, _ leaf: PTETable, _ i: Int, _ addr: UInt64, _ orig: PageTableEntry) throws(HostMMError) {
        let page = orig.pfn
        let isZero = orig.isSpecial && page == memory.zeroPFN
        if vma.flags.contains(.shared) {
            // wp_pfn_shared / wp_page_shared: make the shared mapping writable and dirty.
            if reuse(leaf, i, orig) { faultCounters.count(.writeReuse) }
            return
        }
        if !orig.isSpecial && memory.isAnon(page) && canReuseAnonPage(page) {
            if reuse(leaf, i, orig) { faultCounters.count(.writeReuse) }
            return
        }
        // wp_page_copy: the zero page is replaced by zeros; a special entry (no struct
        // page) is copied from its frame without a reference.
        let pinned: Bool = leaf.lock.withLock {
            guard leaf[i] == orig else { return false }
            if !orig.isSpecial { memory.getPage(page) }
            return true
        }
        guard pinned else { return }
        defer { if !orig.isSpecial { memory.putPage(page) } }
        try notifiers.invalidating(addr, addr + UInt64(pageSize), .clear) { () throws(HostMMError) in
            try copyIntoNewAnonPage(vma, leaf, i, addr, from: isZero ? nil : page, expected: orig)
        }
    }

    /// `wp_can_reuse_anon_folio`: exclusive, or the only reference is this mapping's.
    private func canReuseAnonPage(_ page: PFN) -> Bool {
        if memory.flags(page).contains(.anonExclusive) { return true }
        guard memory.trylockPage(page) else { return false }
        defer { memory.unlockPage(page) }
        guard memory.refcount(page) == 1, memory.mapcount(page) == 1 else { return false }
        memory.setFlags(page, .anonExclusive)
        return true
    }

    private func reuse(_ leaf: PTETable, _ i: Int, _ orig: PageTableEntry) -> Bool {
        leaf.lock.withLock {
            guard leaf[i] == orig else { return false }
            leaf.set(i, orig.with(write: true).with(dirty: true).with(young: true))
            return true
        }
    }

    /// Maps a new exclusive anonymous copy of `source` (zeros when nil) at `addr` if the
    /// entry still equals `expected`; the old mapping (if any) loses its rmap and reference.
    func copyIntoNewAnonPage(_ vma: VMA, _ leaf: PTETable, _ i: Int, _ addr: UInt64,
                             from source: PFN?, expected: PageTableEntry) throws(HostMMError) {
        guard let fresh = memory.allocPage(zeroed: source == nil) else { throw .outOfMemory }
        if let source, let from = memory.bytes(source), let to = memory.bytes(fresh) {
            memcpy(to, from, pageSize)
        }
        let replaced: Bool = leaf.lock.withLock {
            guard leaf[i] == expected else { return false }
            addNewAnonRmap(vma, fresh, addr)
            leaf.set(i, PageTableEntry(kind: .present, pfn: fresh, write: true, dirty: true, young: true))
            if expected.isPresent && !expected.isSpecial { memory.addMapcount(expected.pfn, -1) }
            return true
        }
        guard replaced else {
            memory.putPage(fresh)
            return
        }
        faultCounters.count(.copyOnWrite)
        if expected.isPresent && !expected.isSpecial { memory.putPage(expected.pfn) }
    }
}
