/// Reverse mapping: from a page to every page-table entry that may map it (`rmap_walk`).
///
/// `page->mapping` names a `MappingRoot`; each VMA linked to it maps `page->index` at
/// one computable address. The walk holds the root's lock, so VMAs stay put; the
/// visitor takes the page-table lock of that address. Callers normally hold the page lock.
extension PhysicalMemory {
    /// A one-entry cache of the last root looked up, so batch loops over pages of one
    /// VMA family pay the registry lookup once.
    struct RootCache {
        var word: UInt64 = 0
        var root: MappingRoot?
    }

    /// Calls `visit(vma, address)` for each VMA that may map `pfn`; stops when it returns false.
    func rmapWalk(_ pfn: PFN, cache: inout RootCache, _ visit: (VMA, UInt64) -> Bool) {
        let word = mapping(pfn)
        guard word != 0 else { return }
        if word != cache.word {
            cache.word = word
            cache.root = roots.lookup(word)
        }
        guard let root = cache.root else { return }
        let index = self.index(pfn)
        root.lock.withLock {
            for vma in root.vmas {
                guard let address = vma.address(ofIndex: index) else { continue }
                if !visit(vma, address) { break }
            }
        }
    }

    /// `folio_mapped()`.
    func isMapped(_ pfn: PFN) -> Bool { mapcount(pfn) > 0 }
}
