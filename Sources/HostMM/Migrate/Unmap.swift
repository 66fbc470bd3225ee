/// Step 2 of setup: isolate, unmap whatever collect could not, and refuse pinned pages
/// (`migrate_device_unmap`, `migrate_vma_check_page`, `try_to_migrate`).
extension PhysicalMemory {
    /// `migrate_vma_check_page`: false when someone beyond the expected holders has a
    /// reference (a GUP pin, a racing user). The extra ZONE_DEVICE reference kept from
    /// the pre-5.17 refcount scheme is kept too, as in the kernel this models.
    func migrateCheckPage(_ page: PFN, faultPage: PFN?) -> Bool {
        var extra = 1 + (page == faultPage ? 1 : 0)
        if isZoneDevice(page) { extra += 1 }
        let word = mapping(page)
        if word != 0 && !PageMapping.isAnon(word) {
            extra += 1 + (flags(page).contains(.privateData) ? 1 : 0)
        }
        return refcount(page) - extra <= mapcount(page)
    }

    /// `folio_isolate_lru`: takes the page off the LRU with a reference; fails if it was not on it.
    func isolateLRU(_ page: PFN) -> Bool {
        guard testAndClearFlags(page, .lru) else { return false }
        getPage(page)
        return true
    }

    /// `folio_putback_lru`: back on the LRU, dropping the isolation reference.
    func putbackLRU(_ page: PFN) {
        setFlags(page, .lru)
        putPage(page)
    }

    /// Unmaps the collected pages; returns how many entries are still migrating.
    /// Entries that cannot migrate are restored (mapped again, unlocked, released) and zeroed.
    func migrateDeviceUnmap(_ src: UnsafeMutableBufferPointer<MigratePFN>, _ npages: Int, faultPage: PFN?) -> Int {
        var restore = 0
        var unmapped = 0
        for i in 0..<npages {
            guard let page = src[i].page else {
                if src[i].contains(.migrate) { unmapped += 1 }
                continue
            }
            let device = isZoneDevice(page)
            if !device {
                guard isolateLRU(page) else {
                    src[i].remove(.migrate)
                    restore += 1
                    continue
                }
                putPage(page)   // the collect reference; isolation now holds one
            }
            if isMapped(page) { tryToMigrate(page) }
            if isMapped(page) || !migrateCheckPage(page, faultPage: faultPage) {
                if !device {
                    getPage(page)
                    putbackLRU(page)
                }
                src[i].remove(.migrate)
                restore += 1
                continue
            }
            unmapped += 1
        }
        var cache = RootCache()
        for i in 0..<npages where restore > 0 {
            guard let page = src[i].page, !src[i].contains(.migrate) else { continue }
            removeMigrationPTEs(page, page, cache: &cache)
            src[i] = []
            unlockPage(page)
            putPage(page)
            restore -= 1
        }
        return unmapped
    }

    /// `try_to_migrate`: replace every remaining mapping of a locked page with a
    /// migration entry (pages shared after fork, device pages found by PFN).
    func tryToMigrate(_ page: PFN) {
        var cache = RootCache()
        rmapWalk(page, cache: &cache) { vma, address in
            vma.mm.notifiers.invalidating(address, address + UInt64(pageSize), .clear) {
                tryToMigrateOne(page, vma, address)
            }
            return isMapped(page)
        }
    }

    private func tryToMigrateOne(_ page: PFN, _ vma: VMA, _ address: UInt64) {
        guard let leaf = vma.mm.pageTable.leaf(address, create: false) else { return }
        let i = PTETable.index(address)
        leaf.lock.withLock {
            let pte = leaf[i]
            guard pte.pfn == page, pte.kind == .present || pte.kind == .devicePrivate,
                  !pte.isSpecial else { return }
            let anonExclusive = isAnon(page) && flags(page).contains(.anonExclusive)
            if anonExclusive {
                if maybeDMAPinned(page) { return }
                clearFlags(page, .anonExclusive)
            }
            let present = pte.isPresent
            if present && pte.isDirty { setFlags(page, .dirty) }
            leaf.set(i, .migration(page, write: pte.isWritable, exclusive: anonExclusive,
                                   young: present && pte.isYoung, dirty: present && pte.isDirty))
            addMapcount(page, -1)
            _ = dropReference(page, count: 1)   // the caller holds another reference
        }
    }

    /// `remove_migration_ptes(src, dst)`: every migration entry for `src` becomes a
    /// mapping of `dst` (equal to `src` when restoring), taking a reference and rmap on `dst`.
    func removeMigrationPTEs(_ src: PFN, _ dst: PFN, cache: inout RootCache) {
        rmapWalk(src, cache: &cache) { vma, address in
            guard let leaf = vma.mm.pageTable.leaf(address, create: false) else { return true }
            let i = PTETable.index(address)
            leaf.lock.withLock {
                let old = leaf[i]
                guard old.kind == .migration, old.pfn == src else { return }
                leaf.set(i, entryAfterMigration(old, dst, vma))
                if isAnon(dst) && (old.isWritable || old.isExclusive) { setFlags(dst, .anonExclusive) }
                addMapcount(dst, 1)
                getPage(dst)
            }
            return true
        }
    }

    /// `remove_migration_pte`'s new entry: a device-private entry for device-private
    /// pages, else a present entry carrying the migration entry's write/young/dirty bits.
    private func entryAfterMigration(_ old: PageTableEntry, _ dst: PFN, _ vma: VMA) -> PageTableEntry {
        let write = old.isWritable && vma.flags.contains(.write)
        if isDevicePrivate(dst) { return .devicePrivate(dst, write: write) }
        return PageTableEntry(kind: .present, pfn: dst, write: write,
                              dirty: old.isDirty && flags(dst).contains(.dirty), young: old.isYoung,
                              devmap: isDeviceCoherent(dst))
    }
}
