import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// CPU faults under `apiGeneration == .callbacks2017`: `Device.migrateToRAM` brings pages
/// back through `migrateVMA(ops:)` with nouveau's 2017 fault ops (`LegacyFaultOps.swift`,
/// seed 001's removed `nouveau_dmem_fault_migrate_ops`), with the three-step path's
/// windows, events and counters. What differs is where a copy failure can be handled: in
/// `allocAndCopy` (MIGRATE_PFN_ERROR on the faulting page: SIGBUS) or, once the fence
/// reports it, after the page was committed (the copy is redone).
@Suite(.timeLimit(.minutes(1))) struct LegacyCPUFaultTests {
    static func policy(_ generation: MigrationPolicy.APIGeneration = .callbacks2017,
                       _ granularity: MigrationPolicy.CPUFaultGranularity = .page) -> MigrationPolicy {
        var p = MigrationPolicy()
        p.apiGeneration = generation
        p.cpuFaultGranularity = granularity
        return p
    }

    /// The data comes back, and the fault's batch reports the three-step path's steps in
    /// its order (the race harness pauses on them). That the callbacks ran is shown by
    /// `aCopyFailureOnTheFenceIsRedoneOnlyByTheCallbacks`, whose outcome differs by path.
    @Test func aCPUReadBringsAPageBackWithItsData() throws {
        let memory = try makeMemory(mib: 64)
        let log = EventLog()
        let gpu = try makeDevice(memory, vramMiB: 8, backend: .memcpy, policy: Self.policy(), observer: log)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 4, seed: 0x2017)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 4)).migrated == 4)
        let target = a + UInt64(2 * pageSize)
        #expect(try mm.read(at: target, count: pageSize) == pattern.page(2))
        #expect(mm.pageTableEntry(target).kind == .present)
        #expect(gpu.residentPages(mm, a, pages: 4) == 3 && gpu.vram.inUsePageCount == 3)
        #expect(gpu.counters[.cpuFaults] == 1 && gpu.counters[.pagesToRAM] == 1)
        let toRAM = log.all.filter { $0.direction == .toRAM }
        #expect(toRAM.map(\.kind) == [.cpuFaultBegin, .setupBegin, .setupEnd, .copiesSubmitted, .migratePagesBegin,
                                      .migratePagesEnd, .fenceWaitBegin, .fenceSignaled, .fenceWaitEnd,
                                      .finalizeBegin, .finalizeEnd, .cpuFaultEnd])
        #expect(toRAM.first { $0.kind == .setupEnd }?.pages == 1)
        #expect(toRAM.first { $0.kind == .finalizeEnd }?.pages == 1)
        #expect(try pattern.cpuMismatches(mm, a, pages: 4).isEmpty)
        #expect(gpu.checkInvariants().isEmpty)
    }

    /// A fault-around window of 4 that also holds a page already in RAM (setup of the
    /// callback API selects System RAM too: that page is collected and restored, untouched)
    /// brings back the three device pages of the window; the other window stays in VRAM.
    @Test func faultAroundBringsBackTheWindowAndLeavesItsRAMPageAlone() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: .memcpy, policy: Self.policy())
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 8, seed: 0xFA4)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 8)).migrated == 8)
        let page1 = a + UInt64(pageSize)
        #expect(try mm.read(at: page1, count: pageSize) == pattern.page(1))   // one page, alone
        let ram = mm.pageTableEntry(page1).pfn
        try gpu.setPolicy(Self.policy(.callbacks2017, .faultAround(pages: 4)))
        #expect(try mm.read(at: a + UInt64(2 * pageSize), count: pageSize) == pattern.page(2))
        #expect((0..<4).allSatisfy { mm.pageTableEntry(a + UInt64($0 * pageSize)).kind == .present })
        #expect(mm.pageTableEntry(page1).pfn == ram)
        #expect(gpu.residentPages(mm, a, pages: 8) == 4 && gpu.vram.inUsePageCount == 4)
        #expect(gpu.counters[.cpuFaults] == 2 && gpu.counters[.pagesToRAM] == 4)
        #expect(try pattern.cpuMismatches(mm, a, pages: 8).isEmpty)
        #expect(gpu.checkInvariants().isEmpty)
    }

    /// One D2H copy of a 4-page fault-around window fails on the fence (descriptors 0-3
    /// are the migration's H2D copies, 4-7 the window's D2H copies in address order). The
    /// three steps see it before finalize: the faulting page's failure is SIGBUS, a
    /// neighbour's leaves it in VRAM. The callbacks see it in `finalizeAndMap`, after the
    /// page was committed to its RAM copy and may not be un-migrated: the copy is redone
    /// from the still-locked device page, so every page is back in RAM with its data and
    /// the access succeeds (nouveau 2017 did not look at the fence's outcome at all).
    @Test(arguments: [MigrationPolicy.APIGeneration.threeStep, .callbacks2017], [false, true])
    func aCopyFailureOnTheFenceIsRedoneOnlyByTheCallbacks(generation: MigrationPolicy.APIGeneration,
                                                           faultingFails: Bool) throws {
        let memory = try makeMemory(mib: 64)
        let plan = FaultPlan(rules: [.init(.nth(faultingFails ? 5 : 4), .fail(.ioError))])
        let gpu = try makeDevice(memory, vramMiB: 8, backend: .faultInjecting(plan, wrapping: .memcpy),
                                 policy: Self.policy(generation, .faultAround(pages: 4)))
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 4, seed: 0xFE17)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 4)).migrated == 4)
        let target = a + UInt64(pageSize)
        let failed = a + UInt64((faultingFails ? 1 : 0) * pageSize)
        if generation == .callbacks2017 {
            #expect(try mm.read(at: target, count: pageSize) == pattern.page(1))
            #expect(mm.pageTableEntry(failed).kind == .present)
            #expect(gpu.vram.inUsePageCount == 0)
            #expect(gpu.counters[.copyFailures] == 1 && gpu.counters[.copyRetries] == 1)
            #expect(gpu.counters[.pagesLeftAfterCopyFailure] == 0 && gpu.counters[.pagesToRAM] == 4)
        } else if faultingFails {
            #expect(throws: HostMMError.busError(address: target)) { try mm.read(at: target, count: 1) }
            #expect(mm.pageTableEntry(failed).kind == .devicePrivate && gpu.vram.inUsePageCount == 1)
        } else {
            #expect(try mm.read(at: target, count: pageSize) == pattern.page(1))
            #expect(mm.pageTableEntry(failed).kind == .devicePrivate && gpu.vram.inUsePageCount == 1)
        }
        #expect(gpu.checkInvariants().isEmpty)
        #expect(try pattern.cpuMismatches(mm, a, pages: 4).isEmpty)
    }

    /// Every D2H copy refused at enqueue (System RAM's region unregistered from the
    /// engine): `allocAndCopy` marks the faulting page MIGRATE_PFN_ERROR — SIGBUS, as
    /// nouveau's `dst[0] == MIGRATE_PFN_ERROR` — and leaves its neighbours without a
    /// destination: every page stays in VRAM with its data, every RAM page is given back.
    @Test(arguments: [MigrationPolicy.CPUFaultGranularity.page, .faultAround(pages: 4)])
    func aCopyRefusedAtEnqueueIsSigbusAndLeavesThePagesInVRAM(granularity: MigrationPolicy.CPUFaultGranularity) throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: .memcpy, policy: Self.policy(.callbacks2017, granularity))
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 4, seed: 0xE17)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 4)).migrated == 4)
        let free = memory.freeRAMPageCount
        try gpu.engine.unregister(gpu.hostRegion)
        let target = a + UInt64(pageSize)
        #expect(throws: HostMMError.busError(address: target)) { try mm.read(at: target, count: 1) }
        for p in 0..<4 {
            let pte = mm.pageTableEntry(a + UInt64(p * pageSize))
            #expect(pte.kind == .devicePrivate)
            let bytes = try #require(gpu.vram.bytes(of: pte.pfn))
            #expect(pattern.matches(p, bytes), "page \(p) keeps its data in VRAM")
        }
        #expect(gpu.vram.inUsePageCount == 4 && memory.freeRAMPageCount == free)
        #expect(gpu.counters[.pagesToRAM] == 0)
        #expect(gpu.checkInvariants().isEmpty)
        try mm.munmap(a, length: 4 * pageSize)
    }

    /// No RAM at all: the faulting page gets no frame (MIGRATE_PFN_ERROR in `allocAndCopy`),
    /// reported as the model's OOM, and stays in VRAM; one free frame goes to the faulting
    /// page, its fault-around neighbours staying in VRAM with their data.
    @Test(arguments: [0, 1])
    func ramExhaustionIsOOMForTheFaultingPage(freeFrames: Int) throws {
        let memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        let gpu = try makeDevice(memory, vramMiB: 4, policy: Self.policy(.callbacks2017, .faultAround(pages: 4)))
        let freeAtStart = memory.freeRAMPageCount
        let (mm, a, pattern) = try makeProcess(memory, pages: 4, seed: 0x0A17)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 4)).migrated == 4)
        let ballast = RAMPressureTests.Ballast(memory, leaving: freeFrames)
        let target = a + UInt64(2 * pageSize)
        if freeFrames == 0 {
            #expect(throws: HostMMError.outOfMemory) { try mm.read(at: target, count: 8) }
            #expect(gpu.vram.inUsePageCount == 4)
        } else {
            #expect(try mm.read(at: target, count: pageSize) == pattern.page(2))
            #expect(mm.pageTableEntry(target).kind == .present && gpu.vram.inUsePageCount == 3)
        }
        #expect((0..<4).filter { $0 != 2 }.allSatisfy { mm.pageTableEntry(a + UInt64($0 * pageSize)).kind == .devicePrivate })
        ballast.release()
        #expect(try pattern.cpuMismatches(mm, a, pages: 4).isEmpty)
        #expect(memory.checkInvariants(addressSpaces: [mm]) == [] && gpu.checkInvariants() == [])
        try mm.munmap(a, length: 4 * pageSize)
        mm.exit()
        try gpu.shutdown()
        #expect(memory.freeRAMPageCount == freeAtStart)
        #expect(memory.checker!.violations.map(\.description) == [])
    }

    /// `migrateRangeToRAM` (dmirror's MIGRATE_TO_SYS) goes through the callbacks too, and
    /// leaves the RAM pages and holes of its range alone: the same result in both generations.
    @Test(arguments: [MigrationPolicy.APIGeneration.threeStep, .callbacks2017])
    func migrateRangeToRAMMovesOnlyThisDevicesPages(generation: MigrationPolicy.APIGeneration) throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: .memcpy, policy: Self.policy(generation))
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * pageSize)
        let pattern = PagePattern(seed: 0x5175)
        try pattern.fill(mm, a, pages: 12)                    // pages 12-15 are holes
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 8)).migrated == 8)
        let r = try gpu.migrateRangeToRAM(mm, range: range(a, pages: 16))
        #expect(r.pages == 16 && r.collected == 12 && r.migrated == 8 && r.copyFailures == 0)   // holes are collected
        #expect(entryKinds(mm, a, pages: 16) == [.present: 12, .none: 4])
        #expect(gpu.vram.inUsePageCount == 0 && gpu.counters[.pagesToRAM] == 8)
        #expect(try pattern.cpuMismatches(mm, a, pages: 12).isEmpty)
    }
}
