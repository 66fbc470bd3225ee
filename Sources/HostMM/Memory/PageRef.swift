import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// `GUP_PIN_COUNTING_BIAS`: what `pin_user_pages` adds to the refcount of a small folio.
public let gupPinCountingBias: Int32 = 1024

extension PhysicalMemory {
    // MARK: allocation

    /// Allocates one RAM frame with refcount 1 (`alloc_page(GFP_HIGHUSER)`), optionally
    /// zero-filled (`__GFP_ZERO`). Returns nil when RAM is exhausted.
    public func allocPage(zeroed: Bool = false) -> PFN? {
        guard let raw = frames.allocate() else { return nil }
        let pfn = PFN(UInt64(raw))
        prepareNewFrame(pfn, zeroed: zeroed)
        return pfn
    }

    /// Allocates up to `out.count` RAM frames (refcount 1 each); returns how many.
    public func allocPages(into out: UnsafeMutableBufferPointer<PFN>, zeroed: Bool = false) -> Int {
        let n = out.withMemoryRebound(to: UInt64.self) { wide -> Int in
            withUnsafeTemporaryAllocation(of: UInt32.self, capacity: wide.count) { narrow in
                let got = frames.allocate(into: narrow)
                for i in 0..<got { wide[i] = UInt64(narrow[i]) }
                return got
            }
        }
        for i in 0..<n { prepareNewFrame(out[i], zeroed: zeroed) }
        return n
    }

    private func prepareNewFrame(_ pfn: PFN, zeroed: Bool) {
        let m = Int(pfn.rawValue)
        meta[m].flags.store(0, ordering: .relaxed)
        meta[m].mapcount.store(0, ordering: .relaxed)
        meta[m].refcount.store(1, ordering: .releasing)
        if zeroed { memset(baseAddress + m * pageSize, 0, pageSize) }
    }

    // MARK: references

    /// `get_page()`: takes one reference.
    public func getPage(_ pfn: PFN) {
        guard checked(pfn) else { return }
        meta[Int(pfn.rawValue)].refcount.wrappingAdd(1, ordering: .relaxed)
    }

    /// `get_page_unless_zero()`: takes a reference unless the page is free.
    public func getPageUnlessZero(_ pfn: PFN) -> Bool {
        guard checked(pfn) else { return false }
        let m = Int(pfn.rawValue)
        var old = meta[m].refcount.load(ordering: .relaxed)
        while old > 0 {
            let (exchanged, current) = meta[m].refcount.weakCompareExchange(
                expected: old, desired: old + 1, ordering: .acquiring)
            if exchanged { return true }
            old = current
        }
        return false
    }

    /// `put_page()`: drops one reference; the last one frees the page — back to the
    /// frame allocator for RAM, to the driver's `pageFree` for device pages
    /// (`free_zone_device_folio`). Must not be called with a page-table lock held.
    /// `fileID`/`line` name the caller in checked mode's reports.
    public func putPage(_ pfn: PFN, fileID: StaticString = #fileID, line: UInt = #line) {
        guard checked(pfn) else { return }
        let old = meta[Int(pfn.rawValue)].refcount.wrappingSubtract(1, ordering: .acquiringAndReleasing).oldValue
        if old == 1 {
            freePage(pfn, site: CallSite(fileID: fileID, line: line))
        } else if old < 1 {
            refcountUnderflowed(pfn, 1, old, CallSite(fileID: fileID, line: line))
        }
    }

    func addReferences(_ pfn: PFN, _ count: Int32) {
        meta[Int(pfn.rawValue)].refcount.wrappingAdd(count, ordering: .relaxed)
    }

    /// Drops `count` references; returns true when the page reached zero and must be freed.
    /// `site` is the driver call on whose behalf it runs (checked mode's reports).
    func dropReference(_ pfn: PFN, count: Int32, site: CallSite? = nil) -> Bool {
        let old = meta[Int(pfn.rawValue)].refcount.wrappingSubtract(count, ordering: .acquiringAndReleasing).oldValue
        if old == count { return true }
        if old < count { refcountUnderflowed(pfn, count, old, site) }
        return false
    }

    /// The cold path of a drop below zero: undo it, count it, report it (checked mode).
    @inline(never)
    func refcountUnderflowed(_ pfn: PFN, _ count: Int32, _ old: Int32, _ site: CallSite?) {
        meta[Int(pfn.rawValue)].refcount.wrappingAdd(count, ordering: .relaxed)
        diagnostics.refcountUnderflows.wrappingAdd(1, ordering: .relaxed)
        checker?.report(.refcountUnderflow, pfn: pfn, site: site,
                        "dropping \(count) reference(s) from a page with refcount \(old) (ignored)")
    }

    /// `folio_maybe_dma_pinned()`: refcount at or above the pin bias.
    func maybeDMAPinned(_ pfn: PFN) -> Bool {
        meta[Int(pfn.rawValue)].refcount.load(ordering: .acquiring) >= gupPinCountingBias
    }

    /// Returns a page whose refcount reached zero to its owner; `site` is the driver call
    /// that dropped the last reference, when there is one (checked mode's reports).
    func freePage(_ pfn: PFN, site: CallSite? = nil) {
        let m = Int(pfn.rawValue)
        if meta[m].flags.load(ordering: .relaxed) & PageFlags.reserved.rawValue != 0 { return }
        if let checker { checker.pageFreed(pfn, site: site) }
        meta[m].mapping.store(0, ordering: .relaxed)
        meta[m].index.store(0, ordering: .relaxed)
        meta[m].mapcount.store(0, ordering: .relaxed)
        meta[m].flags.store(0, ordering: .releasing)
        if isRAM(pfn) {
            meta[m].zoneDeviceData.store(0, ordering: .relaxed)
            frames.free(UInt32(pfn.rawValue))
        } else if let pgmap = pagemap(of: pfn) {
            pgmap.ops.pageFree(pfn, pagemap: pgmap)
        }
    }

    /// Drops one reference on each page in a batch, freeing RAM frames with one
    /// allocator lock (`release_pages` / `folio_batch`). `site`: the driver call it runs for.
    func putPages(_ pfns: UnsafeBufferPointer<PFN>, site: CallSite? = nil) {
        let checker = self.checker   // read once: one predictable branch per freed page
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: pfns.count) { ram in
            var n = 0
            for pfn in pfns { putPage(pfn, queueingFramesIn: ram, &n, checker: checker, site: site) }
            frames.free(UnsafeBufferPointer(rebasing: ram[0..<n]))
        }
    }

    /// One page of a batched put: drops one reference; the last one frees a device page at
    /// once (the driver's `pageFree`) and a RAM page into `ram[n]`, its metadata cleared,
    /// for the caller to hand the frames back with one allocator lock (`folio_batch`).
    @inline(__always)
    func putPage(_ pfn: PFN, queueingFramesIn ram: UnsafeMutableBufferPointer<UInt32>, _ n: inout Int,
                 checker: ProtocolChecker?, site: CallSite?) {
        guard dropReference(pfn, count: 1, site: site) else { return }
        guard isRAM(pfn) && flags(pfn).isDisjoint(with: .reserved) else {
            freePage(pfn, site: site)
            return
        }
        if let checker { checker.pageFreed(pfn, site: site) }
        let m = Int(pfn.rawValue)
        meta[m].mapping.store(0, ordering: .relaxed)
        meta[m].index.store(0, ordering: .relaxed)
        meta[m].mapcount.store(0, ordering: .relaxed)
        meta[m].zoneDeviceData.store(0, ordering: .relaxed)
        meta[m].flags.store(0, ordering: .releasing)
        ram[n] = UInt32(pfn.rawValue)
        n += 1
    }
}
