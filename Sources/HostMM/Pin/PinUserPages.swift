#if canImport(Glibc)
import Glibc
#endif

/// GUP: take references on the pages behind user addresses so a "device" can DMA to
/// them (`pin_user_pages` with `FOLL_PIN`, `get_user_pages` with `FOLL_GET`).
///
/// Pinned pages cannot be migrated: `migrateVMASetup` leaves them in place.
extension AddressSpace {
    /// `pin_user_pages`: faults in `count` pages from `address` (for write if `write`;
    /// device-private pages come back to RAM through `migrateToRAM`) and adds
    /// `gupPinCountingBias` to each one's refcount. Release with `PhysicalMemory.unpinUserPages`.
    /// Takes the mmap lock for read.
    /// - Throws: `.fault` (`EFAULT`) for an address with no VMA, a `VM_IO`/`VM_PFNMAP`
    ///   VMA, a VMA without read (for `write`: write) permission, or a fault that
    ///   failed with SIGSEGV/SIGBUS; `.outOfMemory`; `.invalidArgument` for an unaligned
    ///   address or non-positive count.
    ///
    /// With `longterm` (`FOLL_LONGTERM`), a device-coherent page is first migrated to
    /// System RAM (`check_and_migrate_movable_pages` → `migrate_device_coherent_folio`):
    /// device memory must not stay pinned indefinitely.
    public func pinUserPages(_ address: UInt64, count: Int, write: Bool, longterm: Bool = false) throws(HostMMError) -> [PFN] {
        try grabPages(address, count, write: write, references: gupPinCountingBias, longterm: longterm)
    }

    /// `get_user_pages`: like `pinUserPages` but takes one plain reference per page
    /// (release each with `PhysicalMemory.putPage`).
    public func getUserPages(_ address: UInt64, count: Int, write: Bool) throws(HostMMError) -> [PFN] {
        try grabPages(address, count, write: write, references: 1)
    }

    private func grabPages(_ address: UInt64, _ count: Int, write: Bool, references: Int32,
                           longterm: Bool = false) throws(HostMMError) -> [PFN] {
        guard address.isPageAligned else { throw .invalidArgument(reason: "address \(address.hex) is not page-aligned") }
        guard count > 0 else { throw .invalidArgument(reason: "page count \(count) is not positive") }
        var pages: [PFN] = []
        do throws(HostMMError) {
            for i in 0..<count {
                let addr = address + UInt64(i * pageSize)
                // A write access breaks COW and faults in a real page; a read access of an
                // untouched anonymous page would map the shared zero page instead, so
                // pins always fault as a write when the VMA allows it (FOLL_LONGTERM-like).
                let vmaFlags = mmapLock.withReadLock { findVMA(addr)?.flags }
                try checkVMAFlags(vmaFlags, write: write)
                let vmaWritable = vmaFlags?.contains(.write) ?? false
                // Faults the page in and takes the references under the entry's lock.
                func grab() throws(HostMMError) -> PFN? {
                    var grabbed: PFN?
                    try faultErrno { () throws(HostMMError) in
                        try access(addr, 1, write: write || vmaWritable) { _, _, _, _ in
                            let pte = self.pageTable.entry(addr)
                            self.memory.addReferences(pte.pfn, references)
                            grabbed = pte.pfn
                        }
                    }
                    return grabbed
                }
                var pinned = try grab()
                if let page = pinned, longterm, memory.isDeviceCoherent(page) {
                    // The pin becomes one plain reference, which the migration takes over
                    // (the page cannot be freed meanwhile); then pin whatever is mapped there now.
                    if references > 1 { _ = memory.dropReference(page, count: references - 1) }
                    pinned = nil
                    guard memory.migrateDeviceCoherentPage(page) else { throw .busy }
                    pinned = try grab()
                }
                if let pinned { pages.append(pinned) }
            }
        } catch {
            unpin(pages, references)
            throw error
        }
        return pages
    }

    /// `check_vma_flags`: GUP needs a VMA with `struct page`s behind it and the access rights asked for.
    private func checkVMAFlags(_ flags: VMAFlags?, write: Bool) throws(HostMMError) {
        guard let flags, flags.isDisjoint(with: [.io, .pfnMap]),
              flags.contains(write ? .write : .read) else { throw .fault }
    }

    /// `vm_fault_to_errno`: a fault that would signal the task is `EFAULT` to GUP.
    private func faultErrno(_ body: () throws(HostMMError) -> Void) throws(HostMMError) {
        do throws(HostMMError) { try body() } catch {
            switch error {
            case .segmentationFault, .busError: throw .fault
            default: throw error
            }
        }
    }

    private func unpin(_ pages: [PFN], _ references: Int32) {
        for page in pages where memory.dropReference(page, count: references) { memory.freePage(page) }
    }
}

extension PhysicalMemory {
    /// `migrate_device_coherent_folio`: moves one device-coherent page to a new RAM page,
    /// wherever it is mapped (the `migrateDevice*` path, with a CPU copy: coherent memory
    /// is CPU-reachable). The caller holds one reference on `page`, which the migration
    /// takes over: it is gone when this returns, whether or not the page moved. Sleeps for
    /// the page lock. False (the kernel's EBUSY) when the page could not be unmapped or moved.
    func migrateDeviceCoherentPage(_ page: PFN, fileID: StaticString = #fileID, line: UInt = #line) -> Bool {
        var src = MigratePFN()
        var dst = MigratePFN()
        return withUnsafeMutablePointer(to: &src) { s in
            withUnsafeMutablePointer(to: &dst) { d in
                let sb = UnsafeMutableBufferPointer(start: s, count: 1)
                let db = UnsafeMutableBufferPointer(start: d, count: 1)
                lockPage(page)
                sb[0] = MigratePFN(pfn: page).union(.migrate)
                // On failure the unmap step restored the mappings, unlocked the page and
                // dropped the reference.
                guard migrateDeviceUnmap(sb, 1, faultPage: nil) == 1 else { return false }
                let site = CallSite(fileID: fileID, line: line)
                checker?.didSetup(self, sb, npages: 1, collected: 1, start: nil, site: site)
                if let from = bytes(page), let ram = allocPage() {
                    lockPage(ram)
                    memcpy(bytes(ram)!, from, pageSize)
                    db[0] = MigratePFN(pfn: ram)
                }
                do { try migrateDevicePages(src: sb, dst: db, npages: 1, fileID: fileID, line: line) } catch { sb[0].remove(.migrate) }
                let moved = sb[0].contains(.migrate)
                migrateDeviceFinalize(src: sb, dst: db, npages: 1, fileID: fileID, line: line)
                return moved
            }
        }
    }

    /// `unpin_user_pages`: drops the pins taken by `pinUserPages`. `fileID`/`line` name
    /// the caller in checked mode's reports (an unpin too many is a refcount underflow).
    public func unpinUserPages(_ pages: [PFN], fileID: StaticString = #fileID, line: UInt = #line) {
        let site = CallSite(fileID: fileID, line: line)
        for page in pages where checked(page) && dropReference(page, count: gupPinCountingBias, site: site) {
            freePage(page, site: site)
        }
    }
}
