import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// Review 14 of the 2017 fault path (`LegacyFaultOps.swift`): where it must behave as the
/// three steps do, although `migrateVMA(ops:)` also collects the window's System-RAM pages.
@Suite(.timeLimit(.minutes(1))) struct LegacyFaultReviewTests {
    /// A page of the range mapped to the shared zero page (read, never written) is not
    /// collected by the three steps' setup (SELECT_DEVICE_PRIVATE: `migrate_vma_collect_pmd`
    /// takes the zero page only with SELECT_SYSTEM); the callbacks' setup collects it, but
    /// the batch must report what the three steps would: the same `collected` and batches.
    @Test(arguments: [MigrationPolicy.APIGeneration.threeStep, .callbacks2017])
    func zeroPageEntriesAreNotCountedAsCollected(generation: MigrationPolicy.APIGeneration) throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: .memcpy, policy: LegacyCPUFaultTests.policy(generation))
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * pageSize)
        let pattern = PagePattern(seed: 0x2E50)
        try pattern.fill(mm, a, pages: 8)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 8)).migrated == 8)
        for p in 8..<12 { _ = try mm.read(at: a + UInt64(p * pageSize), count: 1) }   // the zero page
        #expect(mm.pageTableEntry(a + UInt64(8 * pageSize)).kind == .present)
        let r = try gpu.migrateRangeToRAM(mm, range: range(a, pages: 16))
        #expect(r.pages == 16 && r.collected == 12 && r.migrated == 8)   // 8 device pages, 4 holes
        let zeroOnly = try gpu.migrateRangeToRAM(mm, range: range(a + UInt64(8 * pageSize), pages: 4))
        #expect(zeroOnly.collected == 0 && zeroOnly.batches == 0)
        #expect(try pattern.cpuMismatches(mm, a, pages: 8).isEmpty)
    }
}
