/// Migration by device PFN instead of virtual address, for eviction when a driver does
/// not know where its pages are mapped (`migrate_device_range`, `migrate_device_pages`,
/// `migrate_device_finalize`): device teardown, suspend, VRAM pressure.
///
/// No mmap lock is needed; rmap finds every mapping. Any thread.
extension PhysicalMemory {
    /// Collects, locks and unmaps the in-use pages of `[start, start + npages)`
    /// (`migrate_device_range`). Free pages and pages locked elsewhere get `src[i] = 0`;
    /// the others get `MigratePFN(pfn:) | .migrate` unless unmapping or the pin check
    /// fails. Then allocate RAM destinations, copy, `migrateDevicePages`, `migrateDeviceFinalize`.
    /// - Throws: `.invalidArgument` for an empty range, a short `src`, or PFNs that are
    ///   neither RAM nor a registered pgmap.
    public func migrateDeviceRange(_ src: UnsafeMutableBufferPointer<MigratePFN>, start: PFN, npages: Int) throws(HostMMError) {
        guard npages > 0, src.count >= npages, isValid(start), isValid(start + (npages - 1)) else {
            throw .invalidArgument
        }
        for i in 0..<npages {
            let pfn = start + i
            guard isValid(pfn), pfn != zeroPFN, getPageUnlessZero(pfn) else {
                src[i] = []
                continue
            }
            guard trylockPage(pfn) else {
                src[i] = []
                putPage(pfn)
                continue
            }
            src[i] = MigratePFN(pfn: pfn).union(.migrate)
        }
        _ = migrateDeviceUnmap(src, npages, faultPage: nil)
    }

    /// `migrate_device_pages`: the PFN-path equivalent of `migrateVMAPages`.
    /// - Throws: `.invalidArgument` like `migrateVMAPages`, before changing anything.
    public func migrateDevicePages(src: UnsafeMutableBufferPointer<MigratePFN>,
                                   dst: UnsafeMutableBufferPointer<MigratePFN>, npages: Int) throws(HostMMError) {
        try validateDestinations(src, dst, npages)
        migrateDevicePagesCore(src, dst, npages, nil)
    }

    /// `migrate_device_finalize`: the PFN-path equivalent of `migrateVMAFinalize`.
    public func migrateDeviceFinalize(src: UnsafeMutableBufferPointer<MigratePFN>,
                                      dst: UnsafeMutableBufferPointer<MigratePFN>, npages: Int) {
        migrateDeviceFinalizeCore(src, dst, max(0, min(npages, src.count, dst.count)))
    }
}
