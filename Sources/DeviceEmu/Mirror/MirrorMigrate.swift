#if canImport(Glibc)
import Glibc
#endif
import HostMM

/// `HMM_DMIRROR_MIGRATE_TO_DEV` and `HMM_DMIRROR_MIGRATE_TO_SYS`
/// (`dmirror_migrate_to_device`, `dmirror_migrate_alloc_and_copy`,
/// `dmirror_migrate_finalize_and_map`, `dmirror_migrate_to_system`).
extension Mirror {
    /// Pages per `migrate_vma` (`PTRS_PER_PTE`).
    static let migrateBatch = 512

    /// `HMM_DMIRROR_MIGRATE_TO_DEV` (`dmirror_migrate_to_device`): migrates `npages` pages
    /// at `address` to device memory, VMA by VMA in batches of 512: system pages, the zero
    /// page and holes of anonymous memory move (holes and the zero page as cleared pages);
    /// shared memory, page-cache pages and every device's pages stay. Then reads the range
    /// back through the mirror, without faulting, into `buffer` (when given).
    /// - Returns: `cpages` = pages the mirror can read back (pages already on this device
    ///   count), `faults` 0.
    /// - Throws: `.invalidArgument` for a page not in a readable VMA (batches already done
    ///   stay migrated) or an address space that is gone; `.noEntry` when any page of the
    ///   range is not in the mirror afterwards (shared memory, another device's page, an
    ///   allocation failure); `.fault` for a short buffer.
    public func migrateToDevice(_ address: UInt64, npages: Int,
                                into buffer: UnsafeMutableRawBufferPointer? = nil) throws(MirrorError) -> MirrorResult {
        try beginCommand()
        defer { endCommand() }
        let end = try checkRange(address, npages)
        let mm = try liveMM(orElse: .invalidArgument(reason: Self.addressSpaceGone))
        try forEachMigrateBatch(mm, address, end) { (args: inout MigrateVMA) throws(MirrorError) in
            args.flags = .selectSystem
            try migrateBatchToDevice(&args)
        }
        return try readBack(address, end, into: buffer)
    }

    /// `HMM_DMIRROR_MIGRATE_TO_SYS` (`dmirror_migrate_to_system`): migrates this device's
    /// pages in `npages` pages at `address` back to system memory; other pages are left
    /// alone.
    /// - Returns: `cpages` = pages that moved, `faults` 0.
    /// - Throws: `.invalidArgument` for a page not in a readable VMA or an address space
    ///   that is gone; `.outOfMemory` when a system page cannot be had (or the one-shot
    ///   allocation failure is armed): that batch stays on the device.
    public func migrateToSystem(_ address: UInt64, npages: Int) throws(MirrorError) -> MirrorResult {
        try beginCommand()
        defer { endCommand() }
        let end = try checkRange(address, npages)
        let mm = try liveMM(orElse: .invalidArgument(reason: Self.addressSpaceGone))
        var cpages = 0
        try forEachMigrateBatch(mm, address, end) { (args: inout MigrateVMA) throws(MirrorError) in
            args.flags = device.selectDevice
            cpages += try device.migrateBatchToSystem(&args, clearing: self)
        }
        return MirrorResult(cpages: cpages, faults: 0)
    }

    /// The VMA walk both migrations share: under the mmap read lock, each readable VMA
    /// piece of `[start, end)` in batches of at most 512 pages; `EINVAL` at the first
    /// address without a readable VMA.
    private func forEachMigrateBatch(_ mm: AddressSpace, _ start: UInt64, _ end: UInt64,
                                     _ body: (inout MigrateVMA) throws(MirrorError) -> Void) throws(MirrorError) {
        let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: Self.migrateBatch)
        let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: Self.migrateBatch)
        defer { src.deallocate(); dst.deallocate() }
        try mm.mmapLock.withReadLock { () throws(MirrorError) in
            var addr = start
            while addr < end {
                guard let vma = mm.findVMA(addr), vma.flags.contains(.read) else {
                    throw .invalidArgument(reason: "0x\(String(addr, radix: 16)) is not in a readable VMA")
                }
                let next = min(end, vma.end, addr + UInt64(Self.migrateBatch * pageSize))
                src.update(repeating: [])
                dst.update(repeating: [])
                var args = MigrateVMA(vma: vma, start: addr, end: next, src: src, dst: dst, pgmapOwner: device.owner)
                try body(&args)
                addr = next
            }
        }
    }

    /// One batch of `dmirror_migrate_to_device`, each step reported (direction `.toDevice`):
    /// setup, alloc_and_copy (CPU copies, complete when `copiesSubmitted` is reported: there
    /// is no fence), `migrate_vma_pages`, finalize_and_map (`deviceMap`), finalize.
    private func migrateBatchToDevice(_ args: inout MigrateVMA) throws(MirrorError) {
        device.enterMigration()
        defer { device.leaveMigration() }
        let batch = device.nextBatch()
        device.emit(.setupBegin, .toDevice, batch: batch, address: args.start)
        let t0 = device.stamp()
        do { try migrateVMASetup(&args) } catch { throw MirrorError(error) }
        device.emit(.setupEnd, .toDevice, begin: t0, batch: batch, address: args.start, pages: args.cpages)
        let copied = allocAndCopyToDevice(&args)
        device.emit(.copiesSubmitted, .toDevice, batch: batch, address: args.start, pages: copied)
        var failure: MirrorError?
        let tp = device.stamp()
        device.emit(.migratePagesBegin, .toDevice, batch: batch, address: args.start)
        do throws(HostMMError) { try migrateVMAPages(&args) } catch { failure = MirrorError(error) }
        if failure == nil {
            device.emit(.migratePagesEnd, .toDevice, begin: tp, batch: batch, address: args.start,
                        pages: Self.committed(args))
            let mapped = finalizeAndMap(args)
            device.emit(.deviceMap, .toDevice, batch: batch, address: args.start, pages: mapped)
        }
        device.finalizeReported(&args, .toDevice, batch: batch)
        if let failure { throw failure }
    }

    /// Entries whose page moved (or whose hole was filled): MIGRATE kept and a destination.
    static func committed(_ args: MigrateVMA) -> Int {
        committedEntries(args.src, args.dst, args.npages)
    }

    /// `dmirror_migrate_alloc_and_copy`: a device page per collected entry, filled from the
    /// source (or cleared for a hole), owned by this mirror; writable when the source was,
    /// or for a hole in a writable VMA. An allocation failure leaves the page where it is.
    /// Returns the pages copied or cleared.
    private func allocAndCopyToDevice(_ args: inout MigrateVMA) -> Int {
        let writableVMA = args.vma?.flags.contains(.write) ?? false
        var copied = 0
        for i in 0..<args.npages where args.src[i].contains(.migrate) {
            let source = args.src[i].page
            if let source, !device.memory.isRAM(source) { continue }   // a device page: never with selectSystem
            if takeAllocationFailure() { continue }
            guard let page = device.allocPage(), let to = device.vram.bytes(of: page) else { continue }
            if let source, let from = device.memory.bytes(source) {
                memcpy(to, from, pageSize)
            } else {
                memset(to, 0, pageSize)
            }
            device.memory.setZoneDeviceData(page, id)
            var d = MigratePFN(pfn: page)
            if args.src[i].contains(.write) || (source == nil && writableVMA) { d.insert(.write) }
            args.dst[i] = d
            copied += 1
        }
        return copied
    }

    /// `dmirror_migrate_finalize_and_map`: the pages that moved enter the table (the
    /// device's own migration did not invalidate it). Returns the entries written.
    private func finalizeAndMap(_ args: MigrateVMA) -> Int {
        lock.withLock {
            guard !isClosed else { return 0 }
            var mapped = 0
            for i in 0..<args.npages where args.src[i].contains(.migrate) {
                guard let page = args.dst[i].page else { continue }
                table.set(args.start + UInt64(i) << 12,
                          DevicePageTableEntry(pfn: page, kind: .vram, write: args.dst[i].contains(.write)))
                mapped += 1
            }
            return mapped
        }
    }

    /// Drops the entry for `address` (`xa_erase` of a page leaving the device).
    func erase(_ address: UInt64) {
        lock.withLock { table.set(address, .none) }
    }
}

extension MirrorDevice {
    /// One batch back to system memory, as `dmirror_migrate_to_system` and
    /// `dmirror_devmem_fault` both run it, each step reported (direction `.toRAM`): setup,
    /// alloc_and_copy (CPU copies, done when `copiesSubmitted` is reported; none when the
    /// allocation failed), `migrate_vma_pages`, finalize.
    /// - Returns: pages that moved (`dmirror_successful_migrated_pages`).
    /// - Throws: the setup's or `migrate_vma_pages`' error; `.outOfMemory` when a system
    ///   page could not be had (the batch is finalized, nothing moved).
    func migrateBatchToSystem(_ args: inout MigrateVMA, clearing mirror: Mirror?) throws(MirrorError) -> Int {
        enterMigration()
        defer { leaveMigration() }
        let batch = nextBatch()
        emit(.setupBegin, .toRAM, batch: batch, address: args.start)
        let t0 = stamp()
        do { try migrateVMASetup(&args) } catch { throw MirrorError(error) }
        emit(.setupEnd, .toRAM, begin: t0, batch: batch, address: args.start, pages: args.cpages)
        var failure: MirrorError?
        do throws(MirrorError) {
            try allocAndCopyToSystem(&args, clearing: mirror)
            emit(.copiesSubmitted, .toRAM, batch: batch, address: args.start, pages: Mirror.committed(args))
            let tp = stamp()
            emit(.migratePagesBegin, .toRAM, batch: batch, address: args.start)
            do throws(HostMMError) { try migrateVMAPages(&args) } catch { throw MirrorError(error) }
            emit(.migratePagesEnd, .toRAM, begin: tp, batch: batch, address: args.start, pages: Mirror.committed(args))
        } catch {
            failure = error
        }
        var moved = 0
        for i in 0..<args.npages where args.src[i].page != nil && args.src[i].contains(.migrate) { moved += 1 }
        finalizeReported(&args, .toRAM, batch: batch)
        if let failure { throw failure }
        return moved
    }

    /// `migrate_vma_finalize` between `finalizeBegin` and `finalizeEnd` (`pages` = entries
    /// that ended up migrated).
    func finalizeReported(_ args: inout MigrateVMA, _ direction: MigrationEvent.Direction, batch: UInt64) {
        let migrated = Mirror.committed(args)
        let tf = stamp()
        emit(.finalizeBegin, direction, batch: batch, address: args.start)
        migrateVMAFinalize(&args)
        emit(.finalizeEnd, direction, begin: tf, batch: batch, address: args.start, pages: migrated)
    }

    /// `dmirror_devmem_fault_alloc_and_copy`: a locked system page per collected device
    /// page, the entry dropped from `mirror`'s table, then the data copied. When a page
    /// cannot be had (or `mirror`'s one-shot failure is armed) the whole batch is left on
    /// the device, its entries in `mirror` kept, and `.outOfMemory` is thrown; the caller
    /// still finalizes. (The kernel moves the pages before the failing one and restores the
    /// rest; the spec asks for the whole batch restored.)
    func allocAndCopyToSystem(_ args: inout MigrateVMA, clearing mirror: Mirror?) throws(MirrorError) {
        // Every page first, so a failure leaves neither a page moved nor an entry dropped.
        for i in 0..<args.npages where args.src[i].contains(.migrate) {
            guard let page = args.src[i].page, dataPointer(page) != nil else { continue }
            let ram: PFN? = (mirror?.takeAllocationFailure() ?? false) ? nil : memory.allocPage()
            guard let ram else {
                releaseDestinations(&args, before: i)
                throw .outOfMemory
            }
            memory.lockPage(ram)
            var d = MigratePFN(pfn: ram)
            if args.src[i].contains(.write) { d.insert(.write) }
            args.dst[i] = d
        }
        // The entry goes before the copy, so the device cannot write behind it (`xa_erase`).
        for i in 0..<args.npages {
            guard let ram = args.dst[i].page, let page = args.src[i].page, let from = dataPointer(page) else { continue }
            mirror?.erase(args.start + UInt64(i) << 12)
            memcpy(memory.bytes(ram)!, from, pageSize)
        }
    }

    /// Unlocks and frees the system pages allocated for `args.dst[0..<end]`.
    private func releaseDestinations(_ args: inout MigrateVMA, before end: Int) {
        for k in 0..<end {
            guard let unused = args.dst[k].page else { continue }
            memory.unlockPage(unused)
            memory.putPage(unused)
            args.dst[k] = []
        }
    }
}
