import DeviceEmu
import HostMM
import Testing

/// A GPU fault whose policy says "migrate the window" on pages that cannot move (a shared
/// mapping: `migrate_vma` collects only anonymous private pages) maps the window's pages
/// from system memory, as `.mapSystemMemory` with the same window would: one fault per
/// window, not one per page with a fruitless migration attempt each.
@Suite struct GPUFaultFallbackTests {
    @Test(arguments: [16, 5])
    func aWindowThatCannotMoveIsMappedWhole(_ window: Int) throws {
        let memory = try makeMemory(mib: 64)
        var p = MigrationPolicy()
        p.gpuFault = .migrateToVRAM(pages: window)
        let gpu = try makeDevice(memory, vramMiB: 4, policy: p)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let pages = 64
        let a = try mm.mmap(.anonymousShared, length: pages * pageSize)
        let data = (0..<pages * pageSize).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 12) }
        try mm.write(at: a, bytes: data)
        let space = try gpu.bind(mm)
        #expect(try space.read(at: a, count: pages * pageSize) == data)
        // Windows are aligned to multiples of `window` pages of the address, clamped to the VMA.
        let lead = Int((a >> 12) % UInt64(window))
        #expect(gpu.counters[.gpuFaults] == (lead + pages + window - 1) / window)
        #expect(gpu.counters[.pagesToDevice] == 0)
        #expect(space.mappedPageCount == pages)
        #expect((0..<pages).allSatisfy { space.entry(at: a + UInt64($0 * pageSize)).kind == .system })
    }
}
