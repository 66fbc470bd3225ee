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
