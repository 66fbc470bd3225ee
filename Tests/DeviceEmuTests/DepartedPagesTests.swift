import DeviceEmu
import HostMM
import Testing

/// The driver's per-page "departed" mark (`DepartedPages.swift`): set when a migration out
/// of VRAM commits a page, cleared by `pageFree`. Eviction gives a marked page back
/// untouched, so a mark that outlived the page's free would leave the next user's data
/// in VRAM, never evicted.
@Suite(.timeLimit(.minutes(1))) struct DepartedPagesTests {
    /// A page a CPU fault moved out (marked), then freed and handed out again by the
    /// allocator (LIFO: the same device page) to a new migration, holds data again: every
    /// eviction must move it, as `nouveau_dmem_evict_chunk` moves every page it collects.
    @Test(arguments: [false, true])
    func aDepartedPageFreedAndReusedIsEvictedAgain(suspend: Bool) throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 4)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 4, seed: 0xDE9A)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 4)).migrated == 4)
        let target = a + UInt64(pageSize)
        let first = mm.pageTableEntry(target).pfn
        #expect(try mm.read(at: target, count: pageSize) == pattern.page(1))   // migrate_to_ram: marked, then freed
        #expect(mm.pageTableEntry(target).kind == .present)
        #expect(try gpu.migrateToDevice(mm, range: target ..< target + UInt64(pageSize)).migrated == 1)
        #expect(mm.pageTableEntry(target).pfn == first)                       // the premise: the same device page
        if suspend {
            try gpu.suspend()
            try gpu.resume()
        } else {
            #expect(gpu.evictAll() == 4)
        }
        #expect(gpu.vram.inUsePageCount == 0)
        #expect(gpu.counters[.pagesEvicted] == 4)
        #expect(try pattern.cpuMismatches(mm, a, pages: 4).isEmpty)
        #expect(gpu.checkInvariants().isEmpty)
    }
}
