import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// The device-coherent variant: VRAM the CPU reaches through the pool mapping.
@Suite struct DeviceCoherentTests {
    @Test func coherentPagesAreReadByTheCPUWithoutFaults() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: .ioUring, type: .deviceCoherent)
        defer { try? gpu.shutdown() }
        gpu.vram.pools[0].mapping.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let mm = AddressSpace(memory: memory)
        let pages = 600
        let a = try mm.mmap(length: pages * pageSize)
        let pattern = PagePattern(seed: 101)
        try pattern.fill(mm, a, pages: 500)
        let space = try gpu.bind(mm)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        #expect(r.migrated == pages && r.holes == 100)
        for p in stride(from: 0, to: pages, by: 37) {
            let pte = mm.pageTableEntry(a + UInt64(p * pageSize))
            #expect(pte.kind == .present && pte.isDevmap && gpu.vram.contains(pte.pfn))
        }
        #expect(try pattern.cpuMismatches(mm, a, pages: 500).isEmpty)
        #expect(try mm.read(at: a + 500 * 4096, count: 100 * pageSize).allSatisfy { $0 == 0 })
        #expect(gpu.counters[.cpuFaults] == 0 && mm.faultCounters[.devicePrivate] == 0)
        #expect(try pattern.gpuMismatches(space, a, pages: 500).isEmpty)
        // CPU stores land in VRAM directly; the GPU sees them.
        try mm.write(at: a, bytes: [1, 2, 3])
        #expect(try space.read(at: a, count: 3) == [1, 2, 3])
        // Eviction brings everything back to System RAM.
        #expect(gpu.evictAll() == pages)
        #expect(mm.pageTableEntry(a).kind == .present && memory.isRAM(mm.pageTableEntry(a).pfn))
        #expect(try mm.read(at: a, count: 3) == [1, 2, 3])
        #expect(try mm.read(at: a + 4096, count: pageSize) == pattern.page(1))
    }
}
