/// Step 1 of `migrateVMASetup`: walk the CPU page table of the range, choose what to
/// migrate, and — for pages that can be locked right away — replace their entries with
/// migration entries (`migrate_vma_collect`, `migrate_vma_collect_pmd`).
///
/// Runs with the caller's mmap read lock and each leaf's page-table lock held; only
/// `trylock` is used on pages, so concurrent migrations cannot deadlock (best effort).
extension AddressSpace {
    func migrateVMACollect(_ args: inout MigrateVMA, _ vma: VMA) {
        notifiers.invalidating(args.start, args.end, .migrate, owner: args.pgmapOwner) {
            var addr = args.start
            while addr < args.end {
                let leafEnd = min(args.end, (addr | 0x1F_FFFF) + 1)
                if let leaf = pageTable.leaf(addr, create: false) {
                    leaf.lock.withLock { collectLeaf(&args, vma, leaf, addr, leafEnd) }
                } else {
                    collectHole(&args, vma, addr, leafEnd)
                }
                addr = leafEnd
            }
        }
        args.end = args.start + UInt64(args.npages) << pageShift
    }

    /// `migrate_vma_collect_hole`: no page table here; holes of anonymous VMAs may be
    /// populated by the driver, anything else is skipped.
    private func collectHole(_ args: inout MigrateVMA, _ vma: VMA, _ start: UInt64, _ end: UInt64) {
        let populate = vma.isAnonymous
        for _ in stride(from: start, to: end, by: pageSize) {
            args.src[args.npages] = populate ? .migrate : []
            args.dst[args.npages] = []
            args.npages += 1
            if populate { args.cpages += 1 }
        }
    }

    private func collectLeaf(_ args: inout MigrateVMA, _ vma: VMA, _ leaf: PTETable, _ start: UInt64, _ end: UInt64) {
        var addr = start
        while addr < end {
            let mpfn = collectEntry(&args, vma, leaf, PTETable.index(addr))
            args.src[args.npages] = mpfn
            args.dst[args.npages] = []
            args.npages += 1
            addr += UInt64(pageSize)
        }
    }

    /// Decides one entry; returns its `src` value. The leaf lock is held.
    private func collectEntry(_ args: inout MigrateVMA, _ vma: VMA, _ leaf: PTETable, _ i: Int) -> MigratePFN {
        let pte = leaf[i]
        var mpfn: MigratePFN
        switch pte.kind {
        case .none:
            guard vma.isAnonymous else { return [] }
            args.cpages += 1
            return .migrate
        case .migration, .deviceExclusive:
            // Other special entries are not migratable.
            return []
        case .devicePrivate:
            guard args.flags.contains(.selectDevicePrivate),
                  memory.pagemap(of: pte.pfn)?.owner == args.pgmapOwner else { return [] }
            mpfn = MigratePFN(pfn: pte.pfn).union(.migrate)
            if pte.isWritable { mpfn.insert(.write) }
        case .present:
            if pte.isSpecial && pte.pfn == memory.zeroPFN {
                guard args.flags.contains(.selectSystem) else { return [] }
                args.cpages += 1
                return .migrate
            }
            guard !pte.isSpecial else { return [] }   // vm_normal_page() == NULL
            let device = memory.isZoneDevice(pte.pfn)
            if !device && !args.flags.contains(.selectSystem) { return [] }
            if memory.isDeviceCoherent(pte.pfn) && (!args.flags.contains(.selectDeviceCoherent)
                    || memory.pagemap(of: pte.pfn)?.owner != args.pgmapOwner) { return [] }
            mpfn = MigratePFN(pfn: pte.pfn).union(.migrate)
            if pte.isWritable { mpfn.insert(.write) }
        }
        let page = pte.pfn
        guard memory.mapping(page) != 0 else { return [] }
        return isolateAndInstallMigrationEntry(&args, leaf, i, pte, page, mpfn)
    }

    /// Takes a reference, trylocks the page, and swaps its entry for a migration entry,
    /// dropping the mapping (rmap + reference) as a regular unmap would.
    private func isolateAndInstallMigrationEntry(_ args: inout MigrateVMA, _ leaf: PTETable, _ i: Int,
                                                 _ pte: PageTableEntry, _ page: PFN, _ mpfn: MigratePFN) -> MigratePFN {
        memory.getPage(page)
        guard memory.trylockPage(page) else {
            _ = memory.dropReference(page, count: 1)   // the mapping still holds one
            return []
        }
        let anonExclusive = memory.isAnon(page) && memory.flags(page).contains(.anonExclusive)
        if anonExclusive {
            // folio_try_share_anon_rmap_pte: a possibly DMA-pinned page must stay exclusive.
            if memory.maybeDMAPinned(page) {
                memory.unlockPage(page)
                _ = memory.dropReference(page, count: 1)
                return []
            }
            memory.clearFlags(page, .anonExclusive)
        }
        args.cpages += 1
        let present = pte.isPresent
        if present && pte.isDirty { memory.setFlags(page, .dirty) }
        leaf.set(i, .migration(page, write: mpfn.contains(.write), exclusive: anonExclusive,
                               young: present && pte.isYoung, dirty: present && pte.isDirty))
        memory.addMapcount(page, -1)
        _ = memory.dropReference(page, count: 1)   // the collect reference keeps it alive
        return mpfn
    }
}
