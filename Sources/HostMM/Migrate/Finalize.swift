/// Step 4: point the CPU page table at the new pages (or back at the old ones), unlock
/// everything and drop the references the migration held (`migrate_device_finalize`).
extension PhysicalMemory {
    /// The shared body of `migrateVMAFinalize` and `migrateDeviceFinalize`.
    /// Destination entries naming PFNs that are neither RAM nor device memory are ignored.
    /// `site` is the driver's finalize call: checked mode names it for a bad unlock or put.
    func migrateDeviceFinalizeCore(_ src: UnsafeMutableBufferPointer<MigratePFN>,
                                   _ dst: UnsafeMutableBufferPointer<MigratePFN>, _ npages: Int,
                                   site: CallSite = CallSite()) {
        guard npages > 0 else { return }
        withUnsafeTemporaryAllocation(of: PFN.self, capacity: 2 * npages) { pairs in
            // Pass 1: decide each source's new page: the destination if it migrated, else itself.
            // A destination without the source's mapping never went through the pages step
            // (it threw, or was skipped): mapping it would leave the CPU faulting for ever, so
            // the entry stays (where the kernel would map it; checked mode reports the step).
            var n = 0
            for i in 0..<npages {
                guard let page = src[i].page else { continue }
                var target = page
                if let newPage = dst[i].page, isKnownPFN(newPage), src[i].contains(.migrate) {
                    if mapping(newPage) == mapping(page) { target = newPage } else { src[i].remove(.migrate) }
                }
                pairs[2 * n] = page
                pairs[2 * n + 1] = target
                n += 1
            }
            // Pass 2: every migration entry becomes a mapping of the chosen page.
            removeMigrationPTEs(pairs: UnsafeBufferPointer(rebasing: pairs[0..<(2 * n)]))
        }
        // Pass 3: page by page, unlock and release (folio_putback_lru for RAM pages,
        // folio_put for device pages), as `migrate_device_finalize` does: a page's reference
        // goes right after its unlock, not once the whole batch is unlocked, so the window
        // in which an unlocked page still holds the migration's reference is the kernel's.
        // Freed RAM frames go back to the allocator together at the end.
        let checker = self.checker
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 2 * npages) { ram in
            var n = 0
            for i in 0..<npages {
                let newPage = dst[i].page.flatMap { isKnownPFN($0) ? $0 : nil }
                guard let page = src[i].page else {
                    if let newPage {
                        unlockPage(newPage, fileID: site.fileID, line: site.line)
                        putPage(newPage, queueingFramesIn: ram, &n, checker: checker, site: site)
                    }
                    continue
                }
                unlockPage(page, fileID: site.fileID, line: site.line)
                if isRAM(page) { setFlags(page, .lru) }
                putPage(page, queueingFramesIn: ram, &n, checker: checker, site: site)
                if let newPage {
                    unlockPage(newPage, fileID: site.fileID, line: site.line)
                    if src[i].contains(.migrate) && isRAM(newPage) { setFlags(newPage, .lru) }
                    putPage(newPage, queueingFramesIn: ram, &n, checker: checker, site: site)
                }
            }
            frames.free(UnsafeBufferPointer(rebasing: ram[0..<n]))
        }
    }

    /// True for RAM and registered device PFNs, without touching the pgmap object.
    @inline(__always) func isKnownPFN(_ pfn: PFN) -> Bool {
        pfn.rawValue < ramPFNLimit
            || (pfn.rawValue < pfnLimit && meta[Int(pfn.rawValue)].zoneAndPgmap.load(ordering: .relaxed) != 0)
    }
}
