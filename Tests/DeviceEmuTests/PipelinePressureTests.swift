import DeviceEmu
import HostMM
import Testing

/// A pipelined migration to VRAM (`MigrationPolicy.pipelineDepth` > 1) under VRAM
/// pressure. The pages of this migration's batches still in flight are locked, so
/// eviction cannot take them; when nothing else can make room, the driver finishes those
/// batches first (as TTM's eviction waits for a busy buffer's fence) instead of leaving
/// the next batch in RAM. Pipelining overlaps work; it must not change what moves.
/// (Found by `dmem-bench race --pipeline 2 --vram 16`: to-device moved 16 of 32 pages.)
@Suite(.timeLimit(.minutes(1))) struct PipelinePressureTests {
    /// VRAM of one 16-page chunk, a range of two batches.
    private func migrate(depth: Int) throws -> (MigrationResult, inVRAM: Int, evictions: Int, intact: Bool) {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 16
        policy.pipelineDepth = depth
        var c = Device.Configuration(name: "pressure", vramSize: 16 * pageSize, backend: defaultTestBackend, policy: policy)
        c.chunkSize = 16 * pageSize
        let gpu = try Device(memory: memory, configuration: c)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 32, seed: 3)
        let moved = try gpu.migrateToDevice(mm, range: range(a, pages: 32))
        let inVRAM = gpu.vram.inUsePageCount
        let intact = try pattern.cpuMismatches(mm, a, pages: 32).isEmpty
        #expect(gpu.checkInvariants().isEmpty)
        return (moved, inVRAM, gpu.counters[.pagesEvicted], intact)
    }

    @Test(arguments: [1, 2, 3]) func everyBatchMovesWhateverTheDepth(depth: Int) throws {
        let (moved, inVRAM, evicted, intact) = try migrate(depth: depth)
        // The second batch evicted the first: both moved, the second stays.
        #expect(moved.migrated == 32, "depth \(depth)")
        #expect(inVRAM == 16 && evicted == 16, "depth \(depth)")
        #expect(intact)
    }
}
