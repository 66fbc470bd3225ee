import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// The same driver through the 2017 `migrateVMA(ops:)` callbacks.
@Suite struct LegacyAPITests {
    func policy(_ generation: MigrationPolicy.APIGeneration) -> MigrationPolicy {
        var p = MigrationPolicy()
        p.apiGeneration = generation
        return p
    }

    @Test(arguments: [MigrationPolicy.APIGeneration.threeStep, .callbacks2017])
    func bothGenerationsMigrateTheSameWay(generation: MigrationPolicy.APIGeneration) throws {
        let memory = try makeMemory(mib: 64)
        let log = EventLog()
        let gpu = try makeDevice(memory, vramMiB: 16, backend: .ioUring, policy: policy(generation), observer: log)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let pages = 1200
        let a = try mm.mmap(length: pages * pageSize)
        let pattern = PagePattern(seed: 91)
        try pattern.fill(mm, a, pages: 1000)                      // the last 200 pages are holes
        let space = try gpu.bind(mm)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        #expect(r.pages == pages && r.collected == pages && r.migrated == pages && r.holes == 200 && r.batches == 3)
        #expect(entryKinds(mm, a, pages: pages) == [.devicePrivate: pages])
        #expect(space.mappedPageCount == pages)
        #expect(try pattern.gpuMismatches(space, a, pages: 1000).isEmpty)
        #expect(try space.read(at: a + 1000 * 4096, count: 200 * pageSize).allSatisfy { $0 == 0 })
        // The fence still gates finalize in both generations.
        for batch in Set(log.all.map(\.batch)) {
            let mine = log.all.filter { $0.batch == batch }
            let signaled = try #require(mine.first { $0.kind == .fenceSignaled }?.time)
            let finalize = try #require(mine.first { $0.kind == .finalizeBegin }?.time)
            #expect(signaled <= finalize)
        }
        #expect(try pattern.cpuMismatches(mm, a, pages: 1000).isEmpty)
        #expect(gpu.vram.inUsePageCount == 200)
    }

    @Test func legacyCopyFailuresAreRedoneBecauseFinalizeAndMapMayNotUnmigrate() throws {
        let memory = try makeMemory(mib: 64)
        let failing = CopyBackendKind.faultInjecting(FaultPlan(rules: [.init(.every(4), .fail(.ioError))]), wrapping: .memcpy)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: failing, policy: policy(.callbacks2017))
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 64, seed: 92)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 64))
        #expect(r.migrated == 64)
        #expect(gpu.counters[.copyFailures] >= 16 && gpu.counters[.copyRetries] >= 16)
        var relaxed = gpu.policy
        relaxed.gpuFault = .mapSystemMemory(pages: 1)
        try gpu.setPolicy(relaxed)
        let space = try gpu.bind(mm)
        #expect(try pattern.gpuMismatches(space, a, pages: 64).isEmpty)
    }

    @Test func legacyOwnDevicePagesAreLeftAlone() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8, policy: policy(.callbacks2017))
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * pageSize)
        try PagePattern(seed: 93).fill(mm, a, pages: 16)
        try gpu.migrateToDevice(mm, range: range(a, pages: 8))
        let again = try gpu.migrateToDevice(mm, range: range(a, pages: 16))
        #expect(again.migrated == 8 && again.collected == 8 && again.pages == 16)
        let nothing = try gpu.migrateToDevice(mm, range: range(a, pages: 16))
        #expect(nothing.pages == 16 && nothing.collected == 0 && nothing.batches == 0)
        #expect(gpu.vram.inUsePageCount == 16)
        #expect(try PagePattern(seed: 93).cpuMismatches(mm, a, pages: 16).isEmpty)
    }
}

/// An eviction policy that never gives a page up: VRAM, once full, stays full.
final class KeepsEveryPage: EvictionPolicy, @unchecked Sendable {
    func pageBecameResident(_ page: Int) {}
    func pageAccessed(_ page: Int) {}
    func pageFreed(_ page: Int) {}
    func selectVictims(into out: UnsafeMutableBufferPointer<Int>) -> Int { 0 }
}

extension LegacyAPITests {
    /// VRAM full of pages the eviction policy keeps: a batch that finds fewer VRAM pages
    /// than it collected is refused whole under all or nothing (Xe), in both generations;
    /// best effort moves what fits and counts the rest in `withoutVRAM`.
    @Test(arguments: [MigrationPolicy.APIGeneration.threeStep, .callbacks2017],
          [MigrationPolicy.RangeMigration.allOrNothing, .bestEffort])
    func aBatchShortOfVRAMIsRefusedWholeOrMovesWhatFits(generation: MigrationPolicy.APIGeneration,
                                                         range mode: MigrationPolicy.RangeMigration) throws {
        let memory = try makeMemory(mib: 64)
        var p = policy(generation)
        p.batchPages = 16
        p.rangeMigration = mode
        let gpu = try makeDevice(memory, vramMiB: 2, policy: p, eviction: .custom { _ in KeepsEveryPage() })
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 512 + 16, seed: 94)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 504)).migrated == 504)   // 8 pages left
        let tail = a + UInt64(504 * pageSize)
        let r = try gpu.migrateToDevice(mm, range: range(tail, pages: 16))
        #expect(r.collected == 16)
        if mode == .allOrNothing {
            #expect(r.refusedBatches == 1 && r.migrated == 0 && r.withoutVRAM == 0)
            #expect(entryKinds(mm, tail, pages: 16) == [.present: 16])
            #expect(gpu.vram.inUsePageCount == 504)
        } else {
            #expect(r.refusedBatches == 0 && r.migrated == 8 && r.withoutVRAM == 8)
            #expect(gpu.counters[.pagesWithoutVRAM] == 8)
            #expect(entryKinds(mm, tail, pages: 16) == [.devicePrivate: 8, .present: 8])
        }
        #expect(try pattern.cpuMismatches(mm, a, pages: 520).isEmpty)
    }
}

extension LegacyAPITests {
    /// The same refusal with coherent VRAM, whose copies `allocAndCopy` waits for itself.
    @Test func aCoherentBatchShortOfVRAMIsRefusedWholeUnderAllOrNothing() throws {
        let memory = try makeMemory(mib: 64)
        var p = policy(.callbacks2017)
        p.batchPages = 16
        p.rangeMigration = .allOrNothing
        let gpu = try makeDevice(memory, vramMiB: 2, type: .deviceCoherent, policy: p,
                                 eviction: .custom { _ in KeepsEveryPage() })
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 512 + 16, seed: 95)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 504)).migrated == 504)
        let r = try gpu.migrateToDevice(mm, range: range(a + UInt64(504 * pageSize), pages: 16))
        #expect(r.collected == 16 && r.refusedBatches == 1 && r.migrated == 0 && r.withoutVRAM == 0)
        #expect(gpu.vram.inUsePageCount == 504)
        #expect(try pattern.cpuMismatches(mm, a, pages: 520).isEmpty)
    }
}
