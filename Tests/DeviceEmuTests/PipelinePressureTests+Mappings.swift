import DeviceEmu
import HostMM
import Testing

extension PipelinePressureTests {
    /// The next batch's eviction runs while the batch before it is in flight, and its
    /// rmap walks invalidate page by page (`.clear`, like any foreign invalidation): ten
    /// of them overflowed the eight ranges `RecentInvalidations` keeps, so the batch in
    /// flight mapped none of its pages on the GPU (22 device entries instead of 32), as if
    /// each eviction had hit it. Pipelining must not change what the GPU maps either.
    @Test(arguments: [1, 2]) func theBatchInFlightKeepsItsMappingsAcrossTheNextOnesEviction(depth: Int) throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 10
        policy.pipelineDepth = depth
        var c = Device.Configuration(name: "pressure", vramSize: 32 * pageSize, backend: defaultTestBackend, policy: policy)
        c.chunkSize = 32 * pageSize
        let gpu = try Device(memory: memory, configuration: c)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 42, seed: 5)
        let space = try gpu.bind(mm)
        defer { gpu.unbind(mm) }
        // 22 cold pages, then 20 more in two batches: the second evicts 10 of the first 22.
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 22)).migrated == 22)
        let b = a + UInt64(22 * pageSize)
        #expect(try gpu.migrateToDevice(mm, range: range(b, pages: 20)).migrated == 20)
        #expect(gpu.counters[.pagesEvicted] == 10)
        #expect(space.mappedPageCount == 32, "depth \(depth): every page left in VRAM is mapped")
        for p in 22..<42 { #expect(space.entry(at: a + UInt64(p * pageSize)).kind == .vram, "page \(p)") }
        #expect(try pattern.cpuMismatches(mm, a, pages: 42).isEmpty)
        #expect(gpu.checkInvariants().isEmpty)
    }
}
