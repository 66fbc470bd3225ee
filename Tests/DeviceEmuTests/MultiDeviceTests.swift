import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// Two devices with different owners never collect each other's pages.
@Suite struct MultiDeviceTests {
    @Test func devicesDoNotMigrateEachOthersPages() throws {
        let memory = try makeMemory(mib: 64)
        let a = try makeDevice(memory, vramMiB: 8, name: "a")
        let b = try makeDevice(memory, vramMiB: 8, name: "b")
        defer { try? a.shutdown(); try? b.shutdown() }
        let pages = 256
        let (mm, base, pattern) = try makeProcess(memory, pages: pages, seed: 81)
        let half = range(base, pages: pages / 2)
        #expect(try a.migrateToDevice(mm, range: half).migrated == pages / 2)

        // B asks for the whole range: only the pages still in RAM move to B.
        let r = try b.migrateToDevice(mm, range: range(base, pages: pages))
        #expect(r.migrated == pages / 2 && r.collected == pages / 2)
        #expect(a.residentPages(mm, base, pages: pages / 2) == pages / 2)
        #expect(b.residentPages(mm, base + UInt64(pages / 2 * 4096), pages: pages / 2) == pages / 2)

        // B's range migration to RAM and its eviction leave A's pages alone.
        #expect(try b.migrateRangeToRAM(mm, range: half).collected == 0)
        #expect(a.vram.inUsePageCount == pages / 2)

        // A CPU fault goes to the owning driver.
        _ = try mm.read(at: base, count: 1)
        #expect(a.counters[.cpuFaults] == 1 && b.counters[.cpuFaults] == 0)
        b.evictAll()
        #expect(a.vram.inUsePageCount == pages / 2 - 1 && b.vram.inUsePageCount == 0)
        #expect(try pattern.cpuMismatches(mm, base, pages: pages).isEmpty)
    }

    /// Devices `a` (default policy) and `b` (GPU faults map 4-page windows of system
    /// memory) on one memory, and an 8-page process with a pattern.
    static func twoDevices(seed: UInt64) throws -> (Device, Device, AddressSpace, UInt64, PagePattern) {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.gpuFault = .mapSystemMemory(pages: 4)
        let a = try makeDevice(memory, vramMiB: 8, name: "a")
        let b = try makeDevice(memory, vramMiB: 8, policy: policy, name: "b")
        let (mm, base, pattern) = try makeProcess(memory, pages: 8, seed: seed)
        return (a, b, mm, base, pattern)
    }

    @Test func gpuOfOneDeviceReadsPagesInAnothersVRAMThroughRAM() throws {
        let (a, b, mm, base, pattern) = try Self.twoDevices(seed: 82)
        defer { try? a.shutdown(); try? b.shutdown() }
        try a.migrateToDevice(mm, range: range(base, pages: 8))
        let bSpace = try b.bind(mm)
        // B's hmm_range_fault faults A's device-private page back to RAM (A's migrateToRAM).
        #expect(try pattern.gpuMismatches(bSpace, base, pages: 8).isEmpty)
        #expect(a.counters[.cpuFaults] == 8 && a.vram.inUsePageCount == 0)
    }

    /// As the kernel's `hmm_vma_fault`, one page of the walk that needs a fault makes
    /// `hmmRangeFault` fault every page from it to the end of the range: B's GPU read of
    /// page 1 of a 4-page window brings pages 1–3 back from A's VRAM, and not page 0.
    @Test func aMapSystemWindowFaultsFromTheFaultingPageToItsEnd() throws {
        let (a, b, mm, base, pattern) = try Self.twoDevices(seed: 83)
        defer { try? a.shutdown(); try? b.shutdown() }
        let window = base + UInt64((4 - Int(base >> 12) % 4) % 4 * pageSize)   // 4-page aligned
        try a.migrateToDevice(mm, range: range(base, pages: 8))
        let bSpace = try b.bind(mm)
        let first = Int((window - base) >> 12)
        #expect(try pattern.gpuMismatches(bSpace, base, first: first + 1, pages: 1).isEmpty)
        #expect(a.counters[.cpuFaults] == 3 && bSpace.mappedPageCount == 3)
        #expect(mm.pageTableEntry(window).kind == .devicePrivate)
        #expect(entryKinds(mm, window + UInt64(pageSize), pages: 3) == [.present: 3])
    }

    @Test func devicesCanShareOneEngine() throws {
        let memory = try makeMemory(mib: 64)
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        let a = try Device(memory: memory, configuration: .init(name: "a", vramSize: 4 << 20), engine: engine)
        let b = try Device(memory: memory, configuration: .init(name: "b", vramSize: 4 << 20), engine: engine)
        let (mm, base, pattern) = try makeProcess(memory, pages: 32, seed: 83)
        try a.migrateToDevice(mm, range: range(base, pages: 16))
        try b.migrateToDevice(mm, range: range(base + 16 * 4096, pages: 16))
        let aPool = a.vram.pools[0].region
        try a.shutdown()
        #expect(engine.region(aPool) == nil)                       // a's regions left the engine…
        #expect(engine.region(b.vram.pools[0].region) != nil)      // …b's stay, and b keeps working
        #expect(try pattern.cpuMismatches(mm, base, pages: 32).isEmpty)
        #expect(b.counters[.cpuFaults] == 16 && a.counters[.pagesEvicted] == 16)
        try b.shutdown()
        engine.shutdown()
    }
}
