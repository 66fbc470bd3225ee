#if canImport(Glibc)
import Glibc
#endif

/// The page-fault handler (`handle_mm_fault` → `handle_pte_fault`): resolves one fault
/// at `address` in `vma` so that a retried access finds a usable entry.
///
/// The caller holds the mmap lock (read). Returns once the entry changed or the fault
/// must simply be retried (a racing thread changed it first); throws the signal or
/// errno the kernel would deliver.
extension AddressSpace {
    func handleMMFault(_ vma: VMA, _ address: UInt64, write: Bool) throws(HostMMError) {
        do throws(HostMMError) {
            try handlePTEFault(vma, address, write: write)
        } catch {
            // do_sigbus: the signal reports the faulting address itself, not its page.
            if case .busError = error { throw .busError(address: address) }
            throw error
        }
    }

    /// `handle_pte_fault`: dispatches on the entry found at `address`.
    private func handlePTEFault(_ vma: VMA, _ address: UInt64, write: Bool) throws(HostMMError) {
        if !vma.flags.isDisjoint(with: [.hugetlb, .dax]) { throw .notSupported }
        let addr = address.pageAlignedDown
        guard let leaf = pageTable.leaf(addr, create: true) else { throw .outOfMemory }
        let i = PTETable.index(addr)
        let orig = leaf[i]
        switch orig.kind {
        case .none:
            if vma.isAnonymous {
                try doAnonymousPage(vma, leaf, i, addr, write: write)
            } else if vma.file != nil {
                try doFileFault(vma, leaf, i, addr, write: write)
            } else {
                faultCounters.count(.sigbus)
                throw .busError(address: address)
            }
        case .present:
            if write && !orig.isWritable {
                try doWPPage(vma, leaf, i, addr, orig)
            } else {
                leaf.lock.withLock {
                    if leaf[i] == orig { leaf.set(i, orig.with(young: true).with(dirty: orig.isDirty || write)) }
                }
            }
        case .migration:
            migrationEntryWait(leaf, i, orig)
        case .devicePrivate:
            try doDevicePrivateFault(vma, leaf, i, addr, orig, write: write)
        case .deviceExclusive:
            restoreDeviceExclusive(vma, leaf, i, addr, orig)
        }
    }

    /// `do_anonymous_page`: the zero page for a read, a new zeroed exclusive page for a write.
    private func doAnonymousPage(_ vma: VMA, _ leaf: PTETable, _ i: Int, _ addr: UInt64, write: Bool) throws(HostMMError) {
        if !write {
            let mapped: Bool = leaf.lock.withLock {
                guard leaf[i].isNone else { return false }
                leaf.set(i, PageTableEntry(kind: .present, pfn: memory.zeroPFN, young: true, special: true))
                return true
            }
            if mapped { faultCounters.count(.zeroPage) }
            return
        }
        guard let pfn = memory.allocPage(zeroed: true) else { throw .outOfMemory }
        let mapped: Bool = leaf.lock.withLock {
            guard leaf[i].isNone else { return false }
            addNewAnonRmap(vma, pfn, addr)
            leaf.set(i, PageTableEntry(kind: .present, pfn: pfn, write: true, dirty: true, young: true))
            return true
        }
        if mapped { faultCounters.count(.anonymousPage) } else { memory.putPage(pfn) }
    }

    /// `folio_add_new_anon_rmap(RMAP_EXCLUSIVE)` + `folio_add_lru_vma`: a new private page
    /// joins the VMA's anonymous family, mapped once; the caller's reference becomes the mapping's.
    func addNewAnonRmap(_ vma: VMA, _ pfn: PFN, _ addr: UInt64) {
        memory.setMapping(pfn, vma.anonRoot?.mappingWord ?? 0, index: vma.linearPageIndex(addr))
        var f: PageFlags = [.uptodate, .swapBacked, .anonExclusive]
        if memory.isRAM(pfn) { f.insert(.lru) }
        memory.setFlags(pfn, f)
        memory.addMapcount(pfn, 1)
    }

    /// `do_read_fault` / `do_shared_fault` / `do_cow_fault` for file and shmem mappings.
    private func doFileFault(_ vma: VMA, _ leaf: PTETable, _ i: Int, _ addr: UInt64, write: Bool) throws(HostMMError) {
        guard let file = vma.file else { throw .busError(address: addr) }
        let pgoff = vma.linearPageIndex(addr)
        guard pgoff < UInt64(file.pageCount) else {
            faultCounters.count(.sigbus)
            throw .busError(address: addr)
        }
        guard let page = file.getPage(Int(pgoff)) else { throw .outOfMemory }
        if write && vma.isCOWMapping {
            defer { memory.putPage(page) }
            try copyIntoNewAnonPage(vma, leaf, i, addr, from: page, expected: .none)
            return
        }
        let shared = vma.flags.contains(.shared)
        let mapped: Bool = leaf.lock.withLock {
            guard leaf[i].isNone else { return false }
            memory.addMapcount(page, 1)
            leaf.set(i, PageTableEntry(kind: .present, pfn: page,
                                       write: shared && vma.flags.contains(.write), dirty: write, young: true))
            return true
        }
        if mapped { faultCounters.count(.filePage) } else { memory.putPage(page) }
    }

    /// `migration_entry_wait`: sleep until the migrating page is unlocked, then retry.
    private func migrationEntryWait(_ leaf: PTETable, _ i: Int, _ orig: PageTableEntry) {
        waitOnMigrationEntry(leaf, i, orig) { faultCounters.count(.migrationWait) }
    }

    /// `__migration_entry_wait`: if entry `i` of `leaf` is still the migration entry `orig`,
    /// take a reference to its page under the page-table lock (the migration holds one
    /// until it unlocks the page, so the page is the one the entry names), run `willWait`,
    /// and sleep until the page is unlocked (`put_and_wait_on_page_locked`). Without that
    /// reference the page could be unlocked, freed and reused before this thread sleeps,
    /// and the new owner's unlock would not wake it.
    func waitOnMigrationEntry(_ leaf: PTETable, _ i: Int, _ orig: PageTableEntry, willWait: () -> Void = {}) {
        let held = leaf.lock.withLock { leaf[i] == orig && memory.getPageUnlessZero(orig.pfn) }
        guard held else { return }
        willWait()
        memory.putPageAndWaitOnUnlocked(orig.pfn)
    }

    /// `do_swap_page` on a device-private entry: hold a reference and ask the pgmap's
    /// driver to bring the data back (`migrate_to_ram`).
    private func doDevicePrivateFault(_ vma: VMA, _ leaf: PTETable, _ i: Int, _ addr: UInt64,
                                      _ orig: PageTableEntry, write: Bool) throws(HostMMError) {
        let page = orig.pfn
        // Counted before the reference is taken and after it is dropped (the defers run in
        // reverse order): an eviction that finds the page busy sees the fault in flight.
        let pagemap = memory.pagemap(of: page)
        pagemap?.faultReferences.add(1, ordering: .sequentiallyConsistent)
        defer { pagemap?.faultReferences.subtract(1, ordering: .sequentiallyConsistent) }
        let held: Bool = leaf.lock.withLock {
            guard leaf[i] == orig else { return false }
            memory.getPage(page)
            return true
        }
        guard held else { return }
        defer { memory.putPage(page) }
        guard let pgmap = pagemap else { throw .busError(address: addr) }
        faultCounters.count(.devicePrivate)
        let fault = VMFault(mm: self, vma: vma, address: addr, page: page, isWrite: write)
        let context = MigrateToRAMContext(mm: ObjectIdentifier(self), address: addr, page: page)
        switch context.during({ pgmap.ops.migrateToRAM(fault) }) {
        case .done: return
        case .oom: throw .outOfMemory
        case .sigbus:
            faultCounters.count(.sigbus)
            throw .busError(address: addr)
        }
    }

    /// `remove_device_exclusive_entry`: give the page back to the CPU.
    private func restoreDeviceExclusive(_ vma: VMA, _ leaf: PTETable, _ i: Int, _ addr: UInt64, _ orig: PageTableEntry) {
        let page = orig.pfn
        guard memory.getPageUnlessZero(page) else { return }
        memory.lockPage(page)
        notifiers.invalidating(addr, addr + UInt64(pageSize), .exclusive) {
            leaf.lock.withLock {
                guard leaf[i] == orig else { return }
                let writable = orig.isWritable && vma.flags.contains(.write)
                leaf.set(i, PageTableEntry(kind: .present, pfn: page, write: writable, dirty: writable))
            }
        }
        faultCounters.count(.deviceExclusive)
        memory.unlockPage(page)
        memory.putPage(page)
    }
}
