/// Step 3 (after the driver copied): move `struct page` state from each source to its
/// destination, or populate holes (`__migrate_device_pages`, `folio_migrate_mapping`,
/// `folio_migrate_flags`). Source and destination pages are locked throughout.
extension PhysicalMemory {
    /// The shared body of `migrateVMAPages` and `migrateDevicePages`; `migrate` is nil
    /// for the PFN-based (eviction) path, which never has holes.
    func migrateDevicePagesCore(_ src: UnsafeMutableBufferPointer<MigratePFN>,
                                _ dst: UnsafeMutableBufferPointer<MigratePFN>,
                                _ npages: Int, _ migrate: MigrateVMA?) {
        var notified: (range: MMUNotifierRange, notifiers: MMUNotifierSubscriptions)?
        for i in 0..<npages {
            guard let newPage = dst[i].page else {
                src[i].remove(.migrate)
                continue
            }
            guard let page = src[i].page else {
                guard src[i].contains(.migrate) else { continue }
                guard let migrate, let vma = migrate.vma, let mm = vma.mm else {
                    src[i].remove(.migrate)
                    continue
                }
                let addr = migrate.start + UInt64(i) << pageShift
                if notified == nil {
                    // End goes to the same subscriptions as start, whatever happens to the
                    // weak mm meanwhile: an unpaired start would leave the sequence odd.
                    let range = MMUNotifierRange(start: addr, end: migrate.end, event: .migrate, owner: migrate.pgmapOwner)
                    vma.notifiers.invalidateStart(range)
                    notified = (range, vma.notifiers)
                }
                mm.migrateVMAInsertPage(vma, addr, newPage, &src[i])
                continue
            }
            if !migrateOnePage(page, to: newPage, src: src[i], faultPage: migrate?.faultPage) {
                src[i].remove(.migrate)
            }
        }
        if let notified { notified.notifiers.invalidateEnd(notified.range) }
    }

    /// Checks the destination kind and moves mapping + flags; false when this page stays.
    private func migrateOnePage(_ page: PFN, to newPage: PFN, src: MigratePFN, faultPage: PFN?) -> Bool {
        guard src.contains(.migrate) else { return false }
        let word = mapping(page)
        let fileBacked = word != 0 && !PageMapping.isAnon(word)
        // Only anonymous memory may move to device memory (no swap cache is modelled).
        if isZoneDevice(newPage) && fileBacked { return false }
        if flags(page).contains(.writeback) { return false }
        let extra = page == faultPage ? 1 : 0
        guard migrateMapping(page, to: newPage, extraCount: extra) else { return false }
        migrateFlags(page, to: newPage)
        return true
    }

    /// `folio_migrate_mapping`: succeeds only if nobody but the migration holds the page
    /// (1 reference, +1 for a faulting CPU, +1(+1) for a page-cache page (with private
    /// data)); transfers `mapping`/`index`, and for file pages the page-cache slot.
    func migrateMapping(_ page: PFN, to newPage: PFN, extraCount: Int) -> Bool {
        let word = mapping(page)
        let idx = index(page)
        if word == 0 || PageMapping.isAnon(word) {
            guard refcount(page) == 1 + extraCount else { return false }
            setMapping(newPage, word, index: idx)
            if flags(page).contains(.swapBacked) { setFlags(newPage, .swapBacked) }
            return true
        }
        let expected = 2 + extraCount + (flags(page).contains(.privateData) ? 1 : 0)
        guard refcount(page) == expected, let root = roots.lookup(word),
              let file = root.file, file.replace(Int(idx), old: page, new: newPage) else { return false }
        setMapping(newPage, word, index: idx)
        getPage(newPage)                          // the page cache's reference moves
        _ = dropReference(page, count: 1)
        if testAndClearFlags(page, .dirty) { setFlags(newPage, .dirty) }
        if flags(page).contains(.swapBacked) { setFlags(newPage, .swapBacked) }
        return true
    }

    /// `folio_migrate_flags`: carry the status bits that describe the data.
    func migrateFlags(_ page: PFN, to newPage: PFN) {
        let moved = flags(page).intersection(PageFlags.migratedOnMove)
        if !moved.isEmpty { setFlags(newPage, moved) }
    }
}

extension AddressSpace {
    /// `migrate_vma_insert_page`: map a driver-provided page where collect saw a hole or
    /// the zero page, as `do_anonymous_page` would. On any obstacle the entry loses
    /// `.migrate` and the driver's page is released at finalize.
    func migrateVMAInsertPage(_ vma: VMA, _ addr: UInt64, _ page: PFN, _ src: inout MigratePFN) {
        guard vma.isAnonymous, !hasExited, let leaf = pageTable.leaf(addr, create: true) else {
            src.remove(.migrate)
            return
        }
        let entry: PageTableEntry
        let write = vma.flags.contains(.write)
        switch memory.zone(page) {
        case .devicePrivate: entry = .devicePrivate(page, write: write)
        case .deviceCoherent: entry = PageTableEntry(kind: .present, pfn: page, write: write, dirty: write, young: true, devmap: true)
        case .normal: entry = PageTableEntry(kind: .present, pfn: page, write: write, dirty: write, young: true)
        }
        memory.setFlags(page, .uptodate)
        let i = PTETable.index(addr)
        let inserted: Bool = leaf.lock.withLock {
            let orig = leaf[i]
            if orig.isPresent {
                guard orig.isSpecial && orig.pfn == memory.zeroPFN else { return false }
            } else if !orig.isNone {
                return false
            }
            addNewAnonRmap(vma, page, addr)
            memory.getPage(page)
            leaf.set(i, entry)
            return true
        }
        src = inserted ? .migrate : src.subtracting(.migrate)
    }
}
