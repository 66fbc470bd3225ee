import DMAEngine
import DeviceEmu
import HostMM
import Testing

@Suite struct MigrateToDeviceTests {
    /// The headline test: 64 MiB of a known pattern to VRAM (io_uring), checked
    /// by GPU reads; the CPU page table then holds only device-private entries.
    @Test func sixtyFourMiBMigratesAndTheGPUReadsItBack() throws {
        let memory = try makeMemory(mib: 256)
        let gpu = try makeDevice(memory, vramMiB: 128, backend: .ioUring)
        defer { try? gpu.shutdown() }
        let pages = 16384
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 64)
        let space = try gpu.bind(mm)
        let ramFree = memory.freeRAMPageCount

        let r = try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        #expect(r.pages == pages && r.collected == pages && r.migrated == pages && r.holes == 0)
        #expect(r.batches == pages / 512 && r.copyFailures == 0)
        #expect(entryKinds(mm, a, pages: pages) == [.devicePrivate: pages])
        #expect(gpu.vram.inUsePageCount == pages)
        #expect(memory.freeRAMPageCount == ramFree + pages)        // the sources were freed
        #expect(space.mappedPageCount == pages)                      // mapped in the device page table
        #expect(try pattern.gpuMismatches(space, a, pages: pages).isEmpty)
        #expect(gpu.counters[.gpuFaults] == 0 && gpu.counters[.cpuFaults] == 0)
        #expect(gpu.counters[.pagesToDevice] == pages)
        #expect(memory.diagnostics.unlocksOfUnlockedPages == 0 && memory.diagnostics.refcountUnderflowCount == 0)
    }

    @Test func holesAndZeroPagesArePopulatedWithClearedPages() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        // Poison VRAM so an uncleared page would show.
        gpu.vram.pools[0].mapping.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 256 * pageSize)
        _ = try mm.read(at: a, count: 64 * pageSize)             // pages 0..<64 map the zero page
        let space = try gpu.bind(mm)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 256))
        #expect(r.migrated == 256 && r.holes == 256)
        #expect(gpu.counters[.holesPopulated] == 256)
        #expect(try space.read(at: a, count: 256 * pageSize).allSatisfy { $0 == 0 })
        #expect(try mm.read(at: a + 100 * 4096, count: pageSize).allSatisfy { $0 == 0 })
        #expect(space.entry(at: a).kind == .vram && space.entry(at: a).isWritable)
    }

    @Test func batchSizeIsAPolicy() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 128
        let log = EventLog()
        let gpu = try makeDevice(memory, vramMiB: 8, policy: policy, observer: log)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 1000, seed: 3)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 1000))
        #expect(r.batches == 8 && r.migrated == 1000)
        #expect(log.count(.setupBegin, .toDevice) == 8 && log.count(.copiesSubmitted, .toDevice) == 8)
        #expect(log.all.filter { $0.kind == .copiesSubmitted }.map(\.pages) == [128, 128, 128, 128, 128, 128, 128, 104])
        #expect(try pattern.cpuMismatches(mm, a, pages: 1000).isEmpty)
    }

    @Test func pagesAlreadyInVRAMAreNotCollectedAgain() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        let (mm, a, _) = try makeProcess(memory, pages: 32, seed: 4)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 32)).migrated == 32)
        let again = try gpu.migrateToDevice(mm, range: range(a, pages: 32))
        #expect(again.collected == 0 && again.migrated == 0 && again.pages == 32)
        #expect(gpu.vram.inUsePageCount == 32)
    }

    @Test func gapsBetweenVMAsAreSkippedAndBadRangesRejected() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * pageSize)
        try mm.munmap(a + 4 * 4096, length: 4 * pageSize)          // a gap in the middle
        try PagePattern(seed: 5).fill(mm, a, pages: 4)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 16))
        #expect(r.pages == 12 && r.migrated == 12)
        #expect(throws: DeviceError.invalidArgument) { try gpu.migrateToDevice(mm, range: a + 1 ..< a + 4096) }
        #expect(throws: DeviceError.invalidArgument) { try gpu.migrateToDevice(mm, range: a ..< a) }
        let special = try mm.mmap(.special([.pfnMap]), length: 4 * pageSize)
        #expect(throws: DeviceError.hostMM(.invalidArgument)) {
            try gpu.migrateToDevice(mm, range: range(special, pages: 4))
        }
        // A file-backed shared mapping has no holes to populate and cannot move to device memory.
        let shared = try mm.mmap(.anonymousShared, length: 4 * pageSize)
        try mm.touch(shared, length: 4 * pageSize, write: true)
        #expect(try gpu.migrateToDevice(mm, range: range(shared, pages: 4)).migrated == 0)
        #expect(entryKinds(mm, shared, pages: 4) == [.present: 4])
    }

    @Test func pinnedPagesStayInRAM() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 8, seed: 6)
        let pinned = try mm.pinUserPages(a + 2 * 4096, count: 2, write: true)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 8))
        #expect(r.migrated == 6 && r.collected == 6)
        #expect(mm.pageTableEntry(a + 2 * 4096).kind == .present && mm.pageTableEntry(a + 3 * 4096).kind == .present)
        memory.unpinUserPages(pinned)
        #expect(try pattern.cpuMismatches(mm, a, pages: 8).isEmpty)
    }

    @Test func allOrNothingRestoresABatchThatCannotMoveWhole() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.rangeMigration = .allOrNothing
        policy.batchPages = 8
        let gpu = try makeDevice(memory, vramMiB: 8, policy: policy)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 16, seed: 7)
        let pinned = try mm.pinUserPages(a + 3 * 4096, count: 1, write: false)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 16))
        #expect(r.refusedBatches == 1 && r.migrated == 8)
        #expect(entryKinds(mm, a, pages: 8) == [.present: 8])
        #expect(entryKinds(mm, a + 8 * 4096, pages: 8) == [.devicePrivate: 8])
        #expect(gpu.counters[.batchesRefused] == 1)
        memory.unpinUserPages(pinned)
        #expect(try pattern.cpuMismatches(mm, a, pages: 16).isEmpty)
    }

    /// A pipelined migration whose middle batches have nothing to move: every batch keeps
    /// its own buffers until it completes (a reused buffer would leave pages locked).
    @Test(arguments: [2, 3])
    func pipelinedMigrationWithEmptyBatches(depth: Int) throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 64
        policy.pipelineDepth = depth
        let gpu = try makeDevice(memory, vramMiB: 8, policy: policy)
        defer { try? gpu.shutdown() }
        let pages = 64 * 8
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 8)
        for batch in [1, 2, 5] { try gpu.migrateToDevice(mm, range: range(a + UInt64(batch * 64 * pageSize), pages: 64)) }
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        #expect(r.migrated == pages - 3 * 64 && r.batches == 5)
        #expect(entryKinds(mm, a, pages: pages) == [.devicePrivate: pages])   // no migration entry left behind
        #expect(gpu.vram.inUsePageCount == pages)
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
    }
}

@Suite struct PolicyValidationTests {
    @Test func invalidPoliciesAreRefused() throws {
        let memory = try makeMemory(mib: 16)
        var bad = MigrationPolicy()
        bad.batchPages = 0
        #expect(throws: DeviceError.invalidArgument) { try makeDevice(memory, vramMiB: 2, policy: bad) }
        let gpu = try makeDevice(memory, vramMiB: 2)
        defer { try? gpu.shutdown() }
        for change in [{ (p: inout MigrationPolicy) in p.batchPages = 1 << 20 },
                       { $0.pipelineDepth = 0 },
                       { $0.cpuFaultGranularity = .faultAround(pages: 0) },
                       { $0.gpuFault = .mapSystemMemory(pages: 0) },
                       { $0.minimumResidency = .seconds(-1) },
                       { $0.committedCopyRetries = -1 }] {
            var p = MigrationPolicy()
            change(&p)
            #expect(throws: DeviceError.invalidArgument) { try gpu.setPolicy(p) }
        }
        #expect(gpu.policy == MigrationPolicy())
        var good = MigrationPolicy()
        good.batchPages = 128
        try gpu.setPolicy(good)
        #expect(gpu.policy.batchPages == 128)
    }
}

@Suite struct BackendRoundTripTests {
    enum Backend: String, CaseIterable, Sendable {
        case iouring, memcpy, mapped
        var kind: CopyBackendKind {
            switch self {
            case .iouring: return .ioUring
            case .memcpy: return .memcpy
            case .mapped: return .mappedWorkers(threads: 2)
            }
        }
    }

    /// The whole round trip on each copy backend, pipelined: to VRAM, GPU check, back by faults.
    @Test(arguments: Backend.allCases)
    func roundTrip(backend: Backend) throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.pipelineDepth = 2
        policy.batchPages = 128
        policy.cpuFaultGranularity = .faultAround(pages: 8)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: backend.kind, policy: policy)
        defer { try? gpu.shutdown() }
        let pages = 1536
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 9)
        let space = try gpu.bind(mm)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: pages)).migrated == pages)
        #expect(try pattern.gpuMismatches(space, a, pages: pages).isEmpty)
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
        #expect(gpu.counters[.cpuFaults] == pages / 8 && gpu.vram.inUsePageCount == 0)
    }
}
