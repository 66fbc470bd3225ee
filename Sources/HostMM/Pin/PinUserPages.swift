/// GUP: take references on the pages behind user addresses so a "device" can DMA to
/// them (`pin_user_pages` with `FOLL_PIN`, `get_user_pages` with `FOLL_GET`).
///
/// Pinned pages cannot be migrated: `migrateVMASetup` leaves them in place.
extension AddressSpace {
    /// `pin_user_pages`: faults in `count` pages from `address` (for write if `write`;
    /// device-private pages come back to RAM through `migrateToRAM`) and adds
    /// `gupPinCountingBias` to each one's refcount. Release with `unpinUserPages`.
    /// Takes the mmap lock for read.
    /// - Throws: what a CPU access would (`.segmentationFault`, `.busError`, …), or
    ///   `.invalidArgument` for an unaligned address or non-positive count.
    public func pinUserPages(_ address: UInt64, count: Int, write: Bool) throws(HostMMError) -> [PFN] {
        try grabPages(address, count, write: write, references: gupPinCountingBias)
    }

    /// `get_user_pages`: like `pinUserPages` but takes one plain reference per page
    /// (release each with `PhysicalMemory.putPage`).
    public func getUserPages(_ address: UInt64, count: Int, write: Bool) throws(HostMMError) -> [PFN] {
        try grabPages(address, count, write: write, references: 1)
    }

    private func grabPages(_ address: UInt64, _ count: Int, write: Bool, references: Int32) throws(HostMMError) -> [PFN] {
        guard address.isPageAligned, count > 0 else { throw .invalidArgument }
        var pages: [PFN] = []
        do throws(HostMMError) {
            for i in 0..<count {
                let addr = address + UInt64(i * pageSize)
                // A write access breaks COW and faults in a real page; a read access of an
                // untouched anonymous page would map the shared zero page instead, so
                // pins always fault as a write when the VMA allows it (FOLL_LONGTERM-like).
                let vmaWritable = mmapLock.withReadLock { findVMA(addr)?.flags.contains(.write) ?? false }
                var pinned: PFN?
                try access(addr, 1, write: write || vmaWritable) { _, _, _, _ in
                    let pte = self.pageTable.entry(addr)
                    self.memory.addReferences(pte.pfn, references)
                    pinned = pte.pfn
                }
                if let pinned { pages.append(pinned) }
            }
        } catch {
            unpin(pages, references)
            throw error
        }
        return pages
    }

    private func unpin(_ pages: [PFN], _ references: Int32) {
        for page in pages where memory.dropReference(page, count: references) { memory.freePage(page) }
    }
}

extension PhysicalMemory {
    /// `unpin_user_pages`: drops the pins taken by `pinUserPages`.
    public func unpinUserPages(_ pages: [PFN]) {
        for page in pages where checked(page) && dropReference(page, count: gupPinCountingBias) { freePage(page) }
    }
}
