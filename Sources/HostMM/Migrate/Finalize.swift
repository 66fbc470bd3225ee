/// Step 4: point the CPU page table at the new pages (or back at the old ones), unlock
/// everything and drop the references the migration held (`migrate_device_finalize`).
extension PhysicalMemory {
    /// The shared body of `migrateVMAFinalize` and `migrateDeviceFinalize`.
    /// Destination entries naming invalid PFNs are ignored (counted as underflows are not).
    func migrateDeviceFinalizeCore(_ src: UnsafeMutableBufferPointer<MigratePFN>,
                                   _ dst: UnsafeMutableBufferPointer<MigratePFN>, _ npages: Int) {
        var cache = RootCache()
        withUnsafeTemporaryAllocation(of: PFN.self, capacity: 2 * npages) { release in
            var n = 0
            for i in 0..<npages {
                let newPage = dst[i].page.flatMap { isValid($0) ? $0 : nil }
                guard let page = src[i].page else {
                    if let newPage {
                        unlockPage(newPage)
                        release[n] = newPage; n += 1
                    }
                    continue
                }
                var target = page
                if let newPage {
                    if src[i].contains(.migrate) {
                        target = newPage
                    } else {
                        unlockPage(newPage)
                        release[n] = newPage; n += 1
                    }
                }
                removeMigrationPTEs(page, target, cache: &cache)
                unlockPage(page)
                if !isZoneDevice(page) { setFlags(page, .lru) }   // folio_putback_lru
                release[n] = page; n += 1
                if target != page {
                    unlockPage(target)
                    if !isZoneDevice(target) { setFlags(target, .lru) }
                    release[n] = target; n += 1
                }
            }
            putPages(UnsafeBufferPointer(rebasing: release[0..<n]))
        }
    }
}
