import DeviceEmu
import HostMM
import NIOConcurrencyHelpers
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

/// VRAM pressure and departed pages: a page whose data already left (a CPU fault's
/// finalize committed it, the fault still holds it) frees no room when evicted, so the
/// victim search passes over it.
@Suite(.timeLimit(.minutes(1))) struct DepartedVictimTests {
    /// VRAM is full; its coldest page has departed and waits for its fault's `put_page`.
    /// A one-page migration then needs one page of room: pressure must evict the next
    /// cold page, not pick the departed one (which eviction gives back untouched), and
    /// the page migrates. Before, the victim search chose the departed page, nothing was
    /// evicted and the page stayed in RAM.
    @Test func pressurePassesOverAPageThatAlreadyDeparted() throws {
        let memory = try makeMemory(mib: 64)
        let probe = StepProbe()
        let gpu = try makeDevice(memory, vramMiB: 2, observer: probe)
        defer { try? gpu.shutdown() }
        let capacity = gpu.vram.pageCount
        let (mm, cold, coldPattern) = try makeProcess(memory, pages: 1, seed: 0xC01D)
        let warm = try mm.mmap(length: (capacity - 1) * pageSize)
        let warmPattern = PagePattern(seed: 0x3A53)
        try warmPattern.fill(mm, warm, pages: capacity - 1)
        let extra = try mm.mmap(length: pageSize)
        try mm.write(at: extra, bytes: [0xE7])
        #expect(try gpu.migrateToDevice(mm, range: range(cold, pages: 1)).migrated == 1)   // the coldest page
        #expect(try gpu.migrateToDevice(mm, range: range(warm, pages: capacity - 1)).migrated == capacity - 1)
        #expect(gpu.vram.availablePageCount == 0)
        let migrated = NIOLockedValueBox<Int?>(nil)
        try probe.arm(at: .init(.finalizeEnd, direction: .toRAM), hold: .seconds(10)) {
            migrated.withLockedValue { $0 = try? gpu.migrateToDevice(mm, range: range(extra, pages: 1)).migrated }
        }
        #expect(try mm.read(at: cold, count: pageSize) == coldPattern.page(0))
        #expect(probe.waitForAction())
        #expect(probe.outcome == .finishedWhileHeld)
        #expect(migrated.withLockedValue { $0 } == 1)
        #expect(gpu.counters[.pagesEvicted] == 1)
        #expect(mm.pageTableEntry(extra).kind == .devicePrivate)
        #expect(try mm.read(at: extra, count: 1) == [0xE7])
        #expect(try warmPattern.cpuMismatches(mm, warm, pages: capacity - 1).isEmpty)
        #expect(gpu.checkInvariants().isEmpty)
    }
}
