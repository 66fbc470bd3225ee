import DMAEngine
import DeviceEmu
import HostMM
import SystemPackage
import Testing

/// Injected copy failures: a page whose copy failed stays where it was, with its data,
/// and no device page leaks.
@Suite struct CopyFailureTests {
    static func failing(_ plan: [FaultPlan.Rule], wrapping inner: CopyBackendKind = .memcpy) -> CopyBackendKind {
        .faultInjecting(FaultPlan(rules: plan), wrapping: inner)
    }

    @Test(arguments: [FaultPlan.Action.fail(.ioError), .shortCopy(bytes: 100)])
    func failedCopiesLeavePagesInRAMWithTheirData(action: FaultPlan.Action) throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: Self.failing([.init(.every(5), action)]))
        defer { try? gpu.shutdown() }
        let pages = 1024
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 21)
        let space = try gpu.bind(mm)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        // Descriptors 4, 9, 14, … fail: in each 512-page batch, the device-wide count continues.
        #expect(r.copyFailures == pages / 5 && r.migrated == pages - pages / 5)
        #expect(entryKinds(mm, a, pages: pages) == [.present: pages / 5, .devicePrivate: pages - pages / 5])
        for p in 0..<pages {
            let failed = (p + 1) % 5 == 0
            #expect(mm.pageTableEntry(a + UInt64(p * pageSize)).kind == (failed ? .present : .devicePrivate))
            #expect(space.entry(at: a + UInt64(p * pageSize)).kind == (failed ? .none : .vram))
        }
        #expect(gpu.vram.inUsePageCount == r.migrated)       // no leaked device page
        #expect(gpu.counters[.pagesLeftAfterCopyFailure] == pages / 5)
        // The GPU sees the failed pages' data too (it maps them from RAM).
        var relaxed = gpu.policy
        relaxed.gpuFault = .mapSystemMemory(pages: 1)
        try gpu.setPolicy(relaxed)
        #expect(try pattern.gpuMismatches(space, a, pages: pages).isEmpty)
        try mm.munmap(a, length: pages * pageSize)
        #expect(gpu.vram.inUsePageCount == 0)
        #expect(memory.diagnostics.unlocksOfUnlockedPages == 0 && memory.diagnostics.refcountUnderflowCount == 0)
    }

    /// Coherent VRAM copies before `migrateVMAPages`: a failed copy's entry loses its
    /// destination and that device page is freed, so finalize neither moves the page into
    /// a freed device page nor leaks one; the page stays in RAM with its data.
    @Test func aFailedCopyIntoCoherentVRAMLeavesThePageInRAMAndFreesItsDevicePage() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: Self.failing([.init(.every(5), .fail(.ioError))]),
                                 type: .deviceCoherent)
        defer { try? gpu.shutdown() }
        let pages = 64
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 27)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        #expect(r.copyFailures == pages / 5 && r.migrated == pages - pages / 5)
        #expect(gpu.vram.inUsePageCount == r.migrated)
        for p in 0..<pages {
            let inVRAM = gpu.vram.contains(mm.pageTableEntry(a + UInt64(p * pageSize)).pfn)
            #expect(inVRAM == ((p + 1) % 5 != 0))
        }
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
        try mm.munmap(a, length: pages * pageSize)
        #expect(gpu.vram.inUsePageCount == 0)
        #expect(memory.diagnostics.unlocksOfUnlockedPages == 0 && memory.diagnostics.refcountUnderflowCount == 0)
    }

    /// Copies refused at enqueue (System RAM's region unregistered: `.unknownRegion`) leave
    /// their pages in RAM with their data, and each refused page's device page is freed,
    /// not leaked.
    @Test func copiesRefusedAtEnqueueFreeTheirDevicePages() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: .memcpy)
        defer { try? gpu.shutdown() }
        let pages = 16
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 28)
        try gpu.engine.unregister(gpu.hostRegion)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        #expect(r.migrated == 0)
        #expect(entryKinds(mm, a, pages: pages) == [.present: pages])
        #expect(gpu.vram.inUsePageCount == 0)
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
        #expect(memory.diagnostics.unlocksOfUnlockedPages == 0 && memory.diagnostics.refcountUnderflowCount == 0)
    }

    @Test func failedHoleClearsAreRetriedSoHolesReadZero() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: Self.failing([.init(.every(3), .fail(.ioError))]))
        defer { try? gpu.shutdown() }
        gpu.vram.pools[0].mapping.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 64 * pageSize)
        let space = try gpu.bind(mm)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 64))
        #expect(r.migrated == 64 && r.holes == 64 && r.copyFailures == 0)
        #expect(gpu.counters[.copyRetries] >= 21)
        // Read through the GPU: CPU reads would go through D2H copies, which fail too.
        #expect(try space.read(at: a, count: 64 * pageSize).allSatisfy { $0 == 0 })
    }

    @Test func holeClearsThatAlwaysFailFallBackToTheCPU() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: Self.failing([.init(.every(1), .fail(.ioError))]))
        defer { try? gpu.shutdown() }
        gpu.vram.pools[0].mapping.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let space = try gpu.bind(mm)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 4))
        #expect(r.holes == 4 && gpu.counters[.cpuCopyFallbacks] == 4)
        #expect(gpu.counters[.copyRetries] == 4 * gpu.policy.committedCopyRetries)
        #expect(try space.read(at: a, count: 4 * pageSize).allSatisfy { $0 == 0 })
        // Every D2H copy fails too: the CPU access gets SIGBUS, the page stays in VRAM.
        #expect(throws: HostMMError.busError(address: a)) { try mm.read(at: a, count: 1) }
        #expect(mm.pageTableEntry(a).kind == .devicePrivate)
    }

    @Test func aFailedCPUFaultCopyRaisesSigbusAndKeepsTheDeviceData() throws {
        let memory = try makeMemory(mib: 64)
        // Descriptor 0 is the H2D copy; descriptor 1 (the first D2H) fails.
        let gpu = try makeDevice(memory, vramMiB: 8, backend: Self.failing([.init(.nth(1), .fail(.ioError))]))
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        let pattern = PagePattern(seed: 22)
        try pattern.fill(mm, a, pages: 1)
        try gpu.migrateToDevice(mm, range: range(a, pages: 1))
        #expect(throws: HostMMError.busError(address: a)) { try mm.read(at: a, count: 1) }
        #expect(mm.pageTableEntry(a).kind == .devicePrivate && gpu.vram.inUsePageCount == 1)
        #expect(try pattern.cpuMismatches(mm, a, pages: 1).isEmpty)   // the retry succeeds
        #expect(gpu.vram.inUsePageCount == 0)
    }

    @Test func allOrNothingRestoresTheWholeBatchOnACopyFailure() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.rangeMigration = .allOrNothing
        policy.batchPages = 16
        let gpu = try makeDevice(memory, vramMiB: 8, backend: Self.failing([.init(.nth(20), .fail(.ioError))]),
                                 policy: policy)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 32, seed: 23)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 32))
        #expect(r.refusedBatches == 1 && r.migrated == 16)
        #expect(entryKinds(mm, a, pages: 16) == [.devicePrivate: 16])
        #expect(entryKinds(mm, a + 16 * 4096, pages: 16) == [.present: 16])
        #expect(gpu.vram.inUsePageCount == 16)
        #expect(try pattern.cpuMismatches(mm, a, pages: 32).isEmpty)
    }

    @Test func failedEvictionCopiesLeavePagesInVRAMUntilARetry() throws {
        let memory = try makeMemory(mib: 64)
        // H2D copies are descriptors 0..<8; the eviction's D2H of #10 fails.
        let gpu = try makeDevice(memory, vramMiB: 8, backend: Self.failing([.init(.nth(10), .fail(.ioError))]))
        let (mm, a, pattern) = try makeProcess(memory, pages: 8, seed: 24)
        try gpu.migrateToDevice(mm, range: range(a, pages: 8))
        #expect(gpu.evictAll() == 8)   // the failed page is evicted by the next pass
        #expect(gpu.counters[.pagesLeftAfterCopyFailure] == 1)
        #expect(entryKinds(mm, a, pages: 8) == [.present: 8])
        #expect(try pattern.cpuMismatches(mm, a, pages: 8).isEmpty)
        try gpu.shutdown()
    }
}
