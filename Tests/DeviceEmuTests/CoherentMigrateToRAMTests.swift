import DeviceEmu
import HostMM
import Testing

/// `migrateRangeToRAM` is dmirror's `HMM_DMIRROR_MIGRATE_TO_SYS`, which selects the pages
/// of the device's own memory type (`dmirror_select_device`: `MIGRATE_VMA_SELECT_DEVICE_PRIVATE`
/// or `MIGRATE_VMA_SELECT_DEVICE_COHERENT`). On coherent VRAM it selected device-private
/// pages only, so it moved nothing: the range stayed in VRAM and the call reported 0.
/// (Found by `dmem-bench race --flow migrate-to-ram --memory coherent`.)
@Suite(.timeLimit(.minutes(1))) struct CoherentMigrateToRAMTests {
    @Test func migrateRangeToRAMBringsCoherentPagesBack() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 14, checked: .on)
        var policy = MigrationPolicy()
        policy.batchPages = 16
        let gpu = try makeDevice(memory, vramMiB: 4, type: .deviceCoherent, policy: policy)
        let (mm, base, pattern) = try makeProcess(memory, pages: 32, seed: 29)
        let all = range(base, pages: 32)
        #expect(try gpu.migrateToDevice(mm, range: all).migrated == 32)
        #expect(gpu.vram.inUsePageCount == 32)
        let r = try gpu.migrateRangeToRAM(mm, range: all)
        #expect(r.migrated == 32)
        #expect(gpu.vram.inUsePageCount == 0)
        let stillCoherent = (0..<32).filter { memory.isDeviceCoherent(mm.pageTableEntry(base + UInt64($0 * pageSize)).pfn) }
        #expect(stillCoherent.isEmpty, "pages still mapped to coherent VRAM: \(stillCoherent)")
        #expect(try pattern.cpuMismatches(mm, base, pages: 32).isEmpty)
        #expect(memory.checkInvariants(addressSpaces: [mm]).isEmpty)
        try mm.munmap(base, length: 32 * pageSize)
        try gpu.shutdown()
        #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations.prefix(3) ?? [])")
    }
}
