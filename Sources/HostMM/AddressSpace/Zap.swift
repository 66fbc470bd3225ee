/// Page-table teardown and protection changes over a range (`zap_pte_range`,
/// `change_pte_range`). Callers hold the mmap lock for write and have already notified.
extension AddressSpace {
    /// Iterates the leaves covering `[start, end)` with each leaf's lock held.
    /// `body` gets the leaf, the first entry index and the address of each entry.
    func forEachLeaf(_ start: UInt64, _ end: UInt64, create: Bool = false,
                     _ body: (PTETable, Int, UInt64) -> Void) {
        var addr = start
        while addr < end {
            let leafEnd = min(end, (addr | 0x1F_FFFF) + 1)
            if let leaf = pageTable.leaf(addr, create: create) {
                leaf.lock.withLock {
                    var a = addr
                    while a < leafEnd {
                        body(leaf, PTETable.index(a), a)
                        a += UInt64(pageSize)
                    }
                }
            }
            addr = leafEnd
        }
    }

    /// Clears every entry in `[start, end)` of `vma` and drops the references the
    /// mappings held, after the page-table locks are released (`mmu_gather`).
    func zapRange(_ vma: VMA, _ start: UInt64, _ end: UInt64) {
        var released: [PFN] = []
        forEachLeaf(start, end) { leaf, i, _ in
            let pte = leaf[i]
            switch pte.kind {
            case .none, .migration:
                break
            case .present:
                if !pte.isSpecial {
                    if pte.isDirty { memory.setFlags(pte.pfn, .dirty) }
                    memory.addMapcount(pte.pfn, -1)
                    released.append(pte.pfn)
                }
            case .devicePrivate, .deviceExclusive:
                memory.addMapcount(pte.pfn, -1)
                released.append(pte.pfn)
            }
            if !pte.isNone { leaf.set(i, .none) }
        }
        released.withUnsafeBufferPointer { memory.putPages($0) }
    }

    /// Applies `vma.flags` to the entries of `[start, end)` (`change_pte_range`):
    /// write permission is removed where no longer allowed; where it is newly allowed,
    /// exclusive anonymous pages become writable at once (`can_change_pte_writable`).
    func changeProtection(_ vma: VMA, _ start: UInt64, _ end: UInt64) {
        let writable = vma.flags.contains(.write)
        forEachLeaf(start, end) { leaf, i, _ in
            let pte = leaf[i]
            switch pte.kind {
            case .present:
                if !writable && pte.isWritable {
                    leaf.set(i, pte.with(write: false))
                } else if writable && !pte.isWritable && !pte.isSpecial && !vma.flags.contains(.shared)
                            && memory.isAnon(pte.pfn) && memory.flags(pte.pfn).contains(.anonExclusive) {
                    leaf.set(i, pte.with(write: true))
                }
            case .migration:
                // A writable migration entry of an anonymous page becomes readable-exclusive.
                if !writable && pte.isWritable {
                    leaf.set(i, .migration(pte.pfn, write: false, exclusive: memory.isAnon(pte.pfn),
                                           young: pte.isYoung, dirty: pte.isDirty))
                }
            case .devicePrivate, .deviceExclusive:
                if !writable && pte.isWritable { leaf.set(i, pte.with(write: false)) }
            default:
                break
            }
        }
    }
}
