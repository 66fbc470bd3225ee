import DMAEngine
import DeviceEmu
import HostMM
import Testing

@Suite struct EvictionTests {
    /// 16 MiB through 4 MiB of VRAM: each migration evicts the coldest pages; all data survives.
    @Test func vramExhaustionEvictsColdPagesAndKeepsTheData() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 4)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let pages = 4096
        let a = try mm.mmap(length: pages * pageSize)
        let pattern = PagePattern(seed: 51)
        try pattern.fill(mm, a, pages: pages)
        let space = try gpu.bind(mm)
        for part in 0..<4 {
            let r = try gpu.migrateToDevice(mm, range: range(a + UInt64(part * 1024 * pageSize), pages: 1024))
            #expect(r.migrated == 1024)
        }
        #expect(gpu.counters[.pressureEvictions] >= 3 && gpu.counters[.pagesEvicted] == 3072)
        #expect(gpu.vram.inUsePageCount == 1024)
        // LRU: the last quarter is resident, the first three are back in RAM.
        #expect(gpu.residentPages(mm, a + 3 * 1024 * 4096, pages: 1024) == 1024)
        #expect(entryKinds(mm, a, pages: 3072) == [.present: 3072])
        #expect(try pattern.gpuMismatches(space, a, first: 3072, pages: 1024).isEmpty)
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
    }

    @Test func oneMigrationLargerThanVRAMEndsWithTheTailResident() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 2)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2048 * pageSize)
        let pattern = PagePattern(seed: 52)
        try pattern.fill(mm, a, pages: 2048)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 2048))
        #expect(r.migrated == 2048)
        #expect(gpu.residentPages(mm, a + 1536 * 4096, pages: 512) == 512)
        #expect(try pattern.cpuMismatches(mm, a, pages: 2048).isEmpty)
    }

    @Test func gpuAccessesKeepPagesHot() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 256
        let gpu = try makeDevice(memory, vramMiB: 2, policy: policy)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 768 * pageSize)
        let pattern = PagePattern(seed: 53)
        try pattern.fill(mm, a, pages: 768)
        let space = try gpu.bind(mm)
        try gpu.migrateToDevice(mm, range: range(a, pages: 256))                 // A
        try gpu.migrateToDevice(mm, range: range(a + 256 * 4096, pages: 256))    // B
        #expect(try pattern.gpuMismatches(space, a, pages: 256).isEmpty)        // A is hot again
        try gpu.migrateToDevice(mm, range: range(a + 512 * 4096, pages: 256))    // C evicts B, not A
        #expect(gpu.residentPages(mm, a, pages: 256) == 256)
        #expect(gpu.residentPages(mm, a + 256 * 4096, pages: 256) == 0)
        #expect(try pattern.cpuMismatches(mm, a, pages: 768).isEmpty)
    }

    @Test func fifoIgnoresAccesses() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 256
        let gpu = try makeDevice(memory, vramMiB: 2, policy: policy, eviction: .firstInFirstOut)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 768 * pageSize)
        try PagePattern(seed: 54).fill(mm, a, pages: 768)
        let space = try gpu.bind(mm)
        try gpu.migrateToDevice(mm, range: range(a, pages: 256))
        try gpu.migrateToDevice(mm, range: range(a + 256 * 4096, pages: 256))
        _ = try space.read(at: a, count: 256 * pageSize)
        try gpu.migrateToDevice(mm, range: range(a + 512 * 4096, pages: 256))
        #expect(gpu.residentPages(mm, a, pages: 256) == 0)
        #expect(gpu.residentPages(mm, a + 256 * 4096, pages: 256) == 256)
    }

    @Test func lruListOrder() {
        let lru = LRUEvictionPolicy(capacity: 8)
        for p in [3, 1, 4, 5] { lru.pageBecameResident(p) }
        lru.pageAccessed(1)
        lru.pageAccessed(7)         // not resident: ignored
        lru.pageFreed(4)
        #expect(lru.coldToHot == [3, 5, 1] && lru.residentCount == 3)
        var out = [Int](repeating: -1, count: 2)
        #expect(out.withUnsafeMutableBufferPointer { lru.selectVictims(into: $0) } == 2)
        #expect(out == [3, 5])
        #expect(lru.coldToHot == [1, 3, 5])   // offered victims go to the hot end
        lru.pageFreed(99)
        #expect(lru.residentCount == 3)
    }
}
