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
        var walk = RootCache()   // consecutive pages of one mapping root: one root lookup
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
            if isMapped(page) { tryToMigrate(page, cache: &walk) }
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
    func tryToMigrate(_ page: PFN, cache: inout RootCache) {
        rmapWalk(page, cache: &cache) { vma, address in
            vma.notifiers.invalidating(address, address + UInt64(pageSize), .clear) {
                tryToMigrateOne(page, vma, address)
            }
            return isMapped(page)
        }
    }

    private func tryToMigrateOne(_ page: PFN, _ vma: VMA, _ address: UInt64) {
        guard let leaf = vma.pageTable.leaf(address, create: false) else { return }
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
            guard let leaf = vma.pageTable.leaf(address, create: false) else { return true }
            let i = PTETable.index(address)
            leaf.lock.withLock {
                let old = leaf[i]
                guard old.kind == .migration, old.pfn == src else { return }
                leaf.set(i, entryAfterMigration(old, dst, writableVMA: vma.flags.contains(.write)))
                if isAnon(dst) && (old.isWritable || old.isExclusive) { setFlags(dst, .anonExclusive) }
                addMapcount(dst, 1)
                getPage(dst)
            }
            return true
        }
    }

    /// `remove_migration_pte`'s new entry: a device-private entry for device-private
    /// pages, else a present entry carrying the migration entry's write/young/dirty bits.
    func entryAfterMigration(_ old: PageTableEntry, _ dst: PFN, writableVMA: Bool) -> PageTableEntry {
        let write = old.isWritable && writableVMA
        if isDevicePrivate(dst) { return .devicePrivate(dst, write: write) }
        return PageTableEntry(kind: .present, pfn: dst, write: write,
                              dirty: old.isDirty && flags(dst).contains(.dirty), young: old.isYoung,
                              devmap: isDeviceCoherent(dst))
    }
}

extension PhysicalMemory {
    /// `remove_migration_ptes` for a batch of `(src, dst)` pairs laid out flat. Consecutive
    /// pages of one mapping root share one root-lock hold (VMA fields are read once per
    /// hold: they cannot change while it is held), and consecutive entries of one
    /// page-table leaf share one page-table-lock hold — the kernel's per-page walks, amortised.
    func removeMigrationPTEs(pairs: UnsafeBufferPointer<PFN>) {
        var cursor = LeafCursor()
        var cache = RootCache()
        var i = 0
        let count = pairs.count / 2
        while i < count {
            let word = mapping(pairs[2 * i])
            if word != cache.word {
                cache.word = word
                cache.root = roots.lookup(word)
            }
            guard let root = cache.root else { i += 1; continue }
            root.lock.lock()
            let vmas = root.vmas
            withUnsafeTemporaryAllocation(of: VMASnapshot.self, capacity: vmas.count) { snaps in
                for (k, vma) in vmas.enumerated() { snaps.initializeElement(at: k, to: VMASnapshot(vma)) }
                while i < count, mapping(pairs[2 * i]) == word {
                    remapMigrationEntries(pairs[2 * i], pairs[2 * i + 1], snaps, &cursor)
                    i += 1
                }
                _ = snaps.deinitialize()
            }
            cursor.release()
            root.lock.unlock()
        }
    }

    private func remapMigrationEntries(_ src: PFN, _ dst: PFN, _ vmas: UnsafeMutableBufferPointer<VMASnapshot>,
                                       _ cursor: inout LeafCursor) {
        let index = self.index(src)
        for k in 0..<vmas.count {
            guard let address = vmas[k].address(ofIndex: index),
                  let leaf = cursor.leaf(vmas[k].pageTable, address) else { continue }
            leaf._withUnsafeGuaranteedRef { leaf in
                let e = PTETable.index(address)
                let old = leaf[e]
                guard old.kind == .migration, old.pfn == src else { return }
                leaf.set(e, entryAfterMigration(old, dst, writableVMA: vmas[k].writable))
                if isAnon(dst) && (old.isWritable || old.isExclusive) { setFlags(dst, .anonExclusive) }
                addMapcount(dst, 1)
                getPage(dst)
            }
        }
    }
}

/// The VMA fields an rmap walk needs, copied under the root lock.
struct VMASnapshot {
    let start: UInt64
    let end: UInt64
    let pgoff: UInt64
    let writable: Bool
    let pageTable: Unmanaged<PageTable>

    init(_ vma: VMA) {
        start = vma.start
        end = vma.end
        pgoff = vma.pgoff
        writable = vma.flags.contains(.write)
        pageTable = Unmanaged.passUnretained(vma.pageTable)
    }

    @inline(__always) func address(ofIndex index: UInt64) -> UInt64? {
        guard index >= pgoff else { return nil }
        let address = start &+ ((index - pgoff) << pageShift)
        return address >= start && address < end ? address : nil
    }
}

/// Keeps one page-table leaf locked while a loop visits consecutive entries in it.
/// Holds no references: the VMAs (under their root lock) keep the tables alive.
struct LeafCursor {
    private var table: UnsafeMutableRawPointer?
    private var base: UInt64 = .max
    private var current: Unmanaged<PTETable>?

    /// The locked leaf covering `address` (nil if none).
    mutating func leaf(_ pageTable: Unmanaged<PageTable>, _ address: UInt64) -> Unmanaged<PTETable>? {
        let key = pageTable.toOpaque()
        if key == table && address >> 21 == base { return current }
        release()
        guard let leaf = pageTable._withUnsafeGuaranteedRef({ $0.existingLeaf(address) }) else { return nil }
        leaf._withUnsafeGuaranteedRef { $0.lock.lock() }
        table = key
        base = address >> 21
        current = leaf
        return leaf
    }

    /// Unlocks the held leaf, if any.
    mutating func release() {
        current?._withUnsafeGuaranteedRef { $0.lock.unlock() }
        current = nil
        table = nil
        base = .max
    }
}
