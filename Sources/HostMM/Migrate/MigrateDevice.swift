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
    ///   neither RAM nor a registered pgmap; in checked mode with `throwsViolations`,
    ///   `.protocolViolation` when `src` still holds a migration never finalized.
    public func migrateDeviceRange(_ src: UnsafeMutableBufferPointer<MigratePFN>, start: PFN, npages: Int,
                                   fileID: StaticString = #fileID, line: UInt = #line) throws(HostMMError) {
        guard npages > 0 else { throw .invalidArgument(reason: "npages \(npages) is not positive") }
        guard src.count >= npages else { throw .invalidArgument(reason: "src has \(src.count) entries for \(npages) pages") }
        guard isValid(start), isValid(start + (npages - 1)) else {
            throw .invalidArgument(reason: "PFNs \(start)...\(start + (npages - 1)) are not all RAM or a registered pgmap")
        }
        if let checker { try checker.willSetup(self, src, nil, count: npages, site: CallSite(fileID: fileID, line: line)) }
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
        let collected = migrateDeviceUnmap(src, npages, faultPage: nil)
        if let checker {
            checker.didSetup(self, src, npages: npages, collected: collected, start: nil,
                             site: CallSite(fileID: fileID, line: line))
        }
    }

    /// `migrate_device_pages`: the PFN-path equivalent of `migrateVMAPages`.
    /// - Throws: `.invalidArgument` like `migrateVMAPages`, before changing anything (and
    ///   `.protocolViolation` in throwing checked mode). As there, remove `.migrate` from
    ///   every `src` entry before `migrateDeviceFinalize` after a throw (finalize here keeps
    ///   those sources anyway; the kernel's would map the destinations).
    public func migrateDevicePages(src: UnsafeMutableBufferPointer<MigratePFN>,
                                   dst: UnsafeMutableBufferPointer<MigratePFN>, npages: Int,
                                   fileID: StaticString = #fileID, line: UInt = #line) throws(HostMMError) {
        var n = npages
        if let checker {
            let plan = try checker.willRunPages(self, src, dst, npages: npages, exact: false,
                                                site: CallSite(fileID: fileID, line: line))
            guard plan.run else {
                try validateDestinations(src, dst, npages)   // bad input still gets its errno
                return
            }
            n = plan.npages
        }
        try validateDestinations(src, dst, n)
        migrateDevicePagesCore(src, dst, n, nil)
    }

    /// `migrate_device_finalize`: the PFN-path equivalent of `migrateVMAFinalize`.
    public func migrateDeviceFinalize(src: UnsafeMutableBufferPointer<MigratePFN>,
                                      dst: UnsafeMutableBufferPointer<MigratePFN>, npages: Int,
                                      fileID: StaticString = #fileID, line: UInt = #line) {
        var n = npages
        if let checker {
            let plan = checker.willFinalize(self, src, dst, npages: npages, exact: false,
                                            site: CallSite(fileID: fileID, line: line))
            guard plan.run else { return }
            n = plan.npages
        }
        migrateDeviceFinalizeCore(src, dst, max(0, min(n, src.count, dst.count)), site: CallSite(fileID: fileID, line: line))
    }
}
