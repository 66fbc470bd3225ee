import DMAEngine
import DeviceEmu
import HostMM
import Testing

@Suite struct MunmapTests {
    @Test func munmapReturnsEveryDevicePage() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 16)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let pages = 4096
        let a = try mm.mmap(length: pages * pageSize)
        try PagePattern(seed: 41).fill(mm, a, pages: pages / 2)      // the other half stays holes
        let space = try gpu.bind(mm)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        #expect(r.migrated == pages && gpu.vram.inUsePageCount == pages)
        let freedBefore = gpu.counters[.pagesFreed]
        try mm.munmap(a, length: pages * pageSize)
        #expect(gpu.vram.inUsePageCount == 0 && gpu.vram.freePageCount == pages)
        #expect(gpu.counters[.pagesFreed] - freedBefore == pages)
        #expect(space.mappedPageCount == 0)
        #expect(gpu.counters[.cpuFaults] == 0)
        #expect(memory.diagnostics.refcountUnderflowCount == 0)
    }

    @Test func partialMunmapAndExitReturnTheirPages() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 16)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 100 * pageSize)
        try PagePattern(seed: 42).fill(mm, a, pages: 100)
        try gpu.migrateToDevice(mm, range: range(a, pages: 100))
        try mm.munmap(a + 10 * 4096, length: 30 * pageSize)
        #expect(gpu.vram.inUsePageCount == 70)
        mm.exit()
        #expect(gpu.vram.inUsePageCount == 0)
    }
}
