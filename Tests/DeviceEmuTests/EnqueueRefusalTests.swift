import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// A copy the channel refuses at enqueue (here: System RAM's region unregistered from the
/// engine, `.unknownRegion`, while clears into VRAM are still accepted). Best effort
/// (nouveau) leaves that page in RAM and moves the rest; all or nothing (Xe) refuses the
/// whole batch, in both API generations and for both kinds of VRAM.
@Suite struct EnqueueRefusalTests {
    /// A 16-page batch: holes, except page 8, which holds data. Its copy comes after eight
    /// clears were enqueued, so a refusal finds descriptors pending on the channel.
    struct Scenario {
        let memory: PhysicalMemory
        let gpu: Device
        let mm: AddressSpace
        let a: UInt64
        let pattern = PagePattern(seed: 41)
        static let pages = 16
        static let dataPage = 8
        var data: UInt64 { a + UInt64(Self.dataPage * pageSize) }

        init(_ generation: MigrationPolicy.APIGeneration, _ type: MemoryType,
             _ mode: MigrationPolicy.RangeMigration) throws {
            memory = try makeMemory(mib: 64)
            var p = MigrationPolicy()
            p.apiGeneration = generation
            p.batchPages = Self.pages
            p.rangeMigration = mode
            gpu = try makeDevice(memory, vramMiB: 8, type: type, policy: p)
            for pool in gpu.vram.pools { pool.mapping.initializeMemory(as: UInt8.self, repeating: 0xEE) }
            mm = AddressSpace(memory: memory)
            a = try mm.mmap(length: Self.pages * pageSize)
            try pattern.fill(mm, a + UInt64(Self.dataPage * pageSize), pages: 1)
        }

        /// Pages of the range whose CPU entry names a page of this device's VRAM.
        var pagesInVRAM: Int {
            (0..<Self.pages).filter { p in
                let e = mm.pageTableEntry(a + UInt64(p * pageSize))
                return e.kind != .none && gpu.vram.contains(e.pfn)
            }.count
        }
    }

    static let generations: [MigrationPolicy.APIGeneration] = [.threeStep, .callbacks2017]
    static let types: [MemoryType] = [.devicePrivate, .deviceCoherent]

    @Test(arguments: generations, types)
    func allOrNothingRefusesABatchWhoseCopyIsRefusedAtEnqueue(generation: MigrationPolicy.APIGeneration,
                                                              type: MemoryType) throws {
        let s = try Scenario(generation, type, .allOrNothing)
        defer { try? s.gpu.shutdown() }
        let available = s.gpu.vram.availablePageCount
        try s.gpu.engine.unregister(s.gpu.hostRegion)
        let r = try s.gpu.migrateToDevice(s.mm, range: range(s.a, pages: Scenario.pages))
        #expect(r.collected == Scenario.pages)
        #expect(r.refusedBatches == 1 && r.migrated == 0 && r.holes == 0)
        #expect(s.gpu.counters[.batchesRefused] == 1 && s.gpu.counters[.pagesToDevice] == 0)
        #expect(s.pagesInVRAM == 0)
        #expect(entryKinds(s.mm, s.a, pages: Scenario.pages) == [.none: Scenario.pages - 1, .present: 1])
        #expect(s.gpu.vram.availablePageCount == available && s.gpu.vram.inUsePageCount == 0)
        #expect(try s.pattern.cpuMismatches(s.mm, s.data, pages: 1).isEmpty)
        // The clears enqueued before the refused copy never ran (VRAM keeps its 0xEE) and
        // none is left pending on a channel, to run with a later batch into freed pages:
        // the engine refuses to unregister a region that pending descriptors name (`.busy`).
        for pool in s.gpu.vram.pools {
            #expect(pool.mapping.allSatisfy { $0 == 0xEE })
            try s.gpu.engine.unregister(pool.region)
        }
        #expect(s.memory.diagnostics.unlocksOfUnlockedPages == 0 && s.memory.diagnostics.refcountUnderflowCount == 0)
        #expect((s.memory.checker?.violationCount ?? 0) == 0)   // with DMEM_CHECKED set
    }

    @Test(arguments: generations, types)
    func bestEffortMovesEveryPageButTheOneRefusedAtEnqueue(generation: MigrationPolicy.APIGeneration,
                                                           type: MemoryType) throws {
        let s = try Scenario(generation, type, .bestEffort)
        defer { try? s.gpu.shutdown() }
        let available = s.gpu.vram.availablePageCount
        try s.gpu.engine.unregister(s.gpu.hostRegion)
        let r = try s.gpu.migrateToDevice(s.mm, range: range(s.a, pages: Scenario.pages))
        #expect(r.collected == Scenario.pages && r.refusedBatches == 0)
        #expect(r.migrated == Scenario.pages - 1 && r.holes == Scenario.pages - 1)
        #expect(s.gpu.counters[.batchesRefused] == 0)
        #expect(s.pagesInVRAM == Scenario.pages - 1)
        #expect(s.mm.pageTableEntry(s.data).kind == .present && !s.gpu.vram.contains(s.mm.pageTableEntry(s.data).pfn))
        #expect(s.gpu.vram.inUsePageCount == Scenario.pages - 1)
        #expect(s.gpu.vram.availablePageCount == available - (Scenario.pages - 1))
        #expect(try s.pattern.cpuMismatches(s.mm, s.data, pages: 1).isEmpty)
        // The populated holes were cleared (read through the device's own view of VRAM).
        for p in 0..<Scenario.pages where p != Scenario.dataPage {
            let pfn = s.mm.pageTableEntry(s.a + UInt64(p * pageSize)).pfn
            let bytes = try #require(s.gpu.vram.bytes(of: pfn))
            #expect(UnsafeRawBufferPointer(start: bytes, count: pageSize).allSatisfy { $0 == 0 })
        }
        // Without System RAM's region nothing can be evicted at shutdown: unmapping frees them.
        try s.mm.munmap(s.a, length: Scenario.pages * pageSize)
        #expect(s.gpu.vram.inUsePageCount == 0)
        #expect(s.memory.diagnostics.unlocksOfUnlockedPages == 0 && s.memory.diagnostics.refcountUnderflowCount == 0)
        #expect((s.memory.checker?.violationCount ?? 0) == 0)   // with DMEM_CHECKED set
    }
}

/// Observers see a refused batch's steps as pairs: no `.migratePagesEnd` without its begin,
/// in either generation, whether a page could not be collected (pinned) or a copy was
/// refused at enqueue.
@Suite struct RefusedBatchEventTests {
    enum Refusal: CaseIterable { case pagePinned, enqueueRefused }

    @Test(arguments: [MigrationPolicy.APIGeneration.threeStep, .callbacks2017], Refusal.allCases)
    func aRefusedBatchReportsEveryStepItEndsAsBegun(generation: MigrationPolicy.APIGeneration, refusal: Refusal) throws {
        let memory = try makeMemory(mib: 64)
        var p = MigrationPolicy()
        p.apiGeneration = generation
        p.rangeMigration = .allOrNothing
        p.batchPages = 16
        let log = EventLog()
        let gpu = try makeDevice(memory, vramMiB: 2, policy: p, observer: log)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * pageSize)
        try PagePattern(seed: 3).fill(mm, a, pages: 16)
        var pinned: [PFN] = []
        switch refusal {
        case .pagePinned: pinned = try mm.pinUserPages(a + UInt64(5 * pageSize), count: 1, write: true)
        case .enqueueRefused: try gpu.engine.unregister(gpu.hostRegion)
        }
        defer { memory.unpinUserPages(pinned) }
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 16))
        #expect(r.refusedBatches == 1 && r.migrated == 0)
        let kinds: [(MigrationEvent.Kind, MigrationEvent.Kind)] = [(.setupBegin, .setupEnd),
            (.migratePagesBegin, .migratePagesEnd), (.finalizeBegin, .finalizeEnd), (.fenceWaitBegin, .fenceWaitEnd)]
        for (begin, end) in kinds {
            #expect(log.count(begin, .toDevice) == log.count(end, .toDevice), "\(begin) / \(end)")
        }
    }
}
