/// Checked mode's checks of page lifetime: references, the page lock, frees under a
/// device mapping, device pages left at teardown.
///
/// Threads: any (the thread dropping the reference, unlocking or tearing down).
extension ProtocolChecker {
    /// A page is being freed (refcount reached 0, metadata not cleared yet): a device
    /// page-table entry must not map it any more. `site`: the driver call that freed it, if any.
    func pageFreed(_ pfn: PFN, site: CallSite?) {
        let set = currentOracles
        guard !set.mapping.isEmpty, let va = deviceMapping(pfn, set) else { return }
        if consumeMappingReported(pfn) { return }   // finalize reported this page already
        report(.devicePTEMapsFreedPage, pfn: pfn, address: va, site: site,
               "freed while a device page-table entry at va:0x\(String(va, radix: 16)) maps it (the invalidation did not reach the device)")
    }

    /// Every page of `pagemap` still holding a reference at teardown is a leak.
    func reportLeaks(_ memory: PhysicalMemory, _ pagemap: DevicePagemap, site: CallSite?) {
        for pfn in pagemap.pfns {
            let refs = memory.refcount(pfn)
            guard refs != 0, firstLeakReport(pfn) else { continue }
            report(.devicePageLeaked, pfn: pfn, address: memory.virtualAddress(of: pfn), site: site,
                   "still allocated at teardown (refcount \(refs), \(memory.mapcount(pfn)) mappings\(memory.isPageLocked(pfn) ? ", locked" : ""))")
        }
    }

    /// Reports `pfn` as a leaked device page unless it was already reported (a teardown
    /// that is retried names each page once). For drivers' own leak checks.
    public func reportLeak(_ pfn: PFN, site: CallSite?, _ detail: String) {
        guard firstLeakReport(pfn) else { return }
        report(.devicePageLeaked, pfn: pfn, address: nil, site: site, detail)
    }

    /// Migrations that were set up (and collected pages) but never finalized.
    public var unfinishedMigrations: Int { sessions.unfinished.count }
}

extension PhysicalMemory {
    /// Checked mode: reports every page of `pagemap` that still has a reference as a
    /// leaked device page (a driver calls this when its teardown finds pages in use).
    /// Each page is reported once. No-op when checked mode is off.
    public func reportLeakedPages(of pagemap: DevicePagemap, fileID: StaticString = #fileID, line: UInt = #line) {
        checker?.reportLeaks(self, pagemap, site: CallSite(fileID: fileID, line: line))
    }
}
