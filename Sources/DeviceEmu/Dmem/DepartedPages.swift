import HostMM

/// Device pages whose data has already left VRAM but whose last reference has not been
/// dropped yet: eviction must not move them a second time.
///
/// `migrate_device_finalize` unlocks a migrated source page before it drops the
/// migration's reference, and `do_swap_page` still holds its own reference on the faulting
/// page after `migrate_to_ram` returns. In that window the page is in use, unlocked,
/// mapped nowhere, and holds one reference besides the collector's: `migrate_device_range`
/// takes it, `migrate_vma_check_page` accepts it (ZONE_DEVICE pages are allowed one extra
/// reference), and once the other holder's reference is gone `folio_migrate_mapping`
/// succeeds. The kernel then copies stale VRAM into a RAM page nobody maps and frees both
/// — harmless there, as `nouveau_dmem_evict_chunk` runs at teardown and counts nothing.
/// Here an eviction racing another eviction (`suspend()` against `evictAll()`, VRAM
/// pressure) or a CPU fault counted that page again in `pagesEvicted`.
///
/// So the driver remembers, per device page, that a migration out of VRAM committed it:
/// marked after the fence (a page whose copy failed stays, unmarked) and before finalize
/// unlocks it, cleared by `pageFree` before the page can be handed out again. An eviction
/// that collects a marked page gives it back untouched (no RAM page, no copy, no count),
/// and VRAM pressure does not choose one as a victim (`hasDeparted`): it would free nothing.
/// The mark is published before finalize's unlock, and read after collection's trylock.
///
/// Threads: any; each page's mark is written only by the holder of its page lock or by
/// `pageFree` (when nobody else holds a reference).
extension Device {
    /// Marks the committed device sources of a batch leaving VRAM (entries with `.migrate`
    /// and a destination) as departed. Call after the fence's failures are handled, before
    /// finalize.
    func markDeparted(_ src: UnsafeMutableBufferPointer<MigratePFN>, _ dst: UnsafeMutableBufferPointer<MigratePFN>,
                      _ npages: Int) {
        for i in 0..<npages where src[i].contains(.migrate) && dst[i].page != nil {
            guard let page = src[i].page, let index = vram.pageIndex(of: page) else { continue }
            departed[index].store(1, ordering: .releasing)
        }
    }

    /// Whether the page of dense index `index` has departed (false for an index that names
    /// no device page). Reads one atomic: usable as an eviction policy's `eligible` test.
    func hasDeparted(_ index: Int) -> Bool {
        index >= 0 && index < vram.pageCount && departed[index].load(ordering: .acquiring) != 0
    }

    /// Takes `.migrate` off collected entries whose page already departed (finalize gives
    /// them back: unlock and put); returns how many.
    func dropDeparted(_ src: UnsafeMutableBufferPointer<MigratePFN>, _ npages: Int) -> Int {
        var dropped = 0
        for i in 0..<npages where src[i].contains(.migrate) {
            guard let page = src[i].page, let index = vram.pageIndex(of: page),
                  departed[index].load(ordering: .acquiring) != 0 else { continue }
            src[i].remove(.migrate)
            dropped += 1
        }
        return dropped
    }
}
