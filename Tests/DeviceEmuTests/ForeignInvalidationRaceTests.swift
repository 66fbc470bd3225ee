import DeviceEmu
import HostMM
import Testing

/// An invalidation that is not the device's own (here `MADV_DONTNEED`, which takes the
/// mmap lock for read, as the kernel's does) between a batch's setup and its device map
/// removes a collected page's migration entry: finalize then frees the new VRAM page,
/// and the batch must not map it on the GPU. It did (as nouveau's `nouveau_pfns_map`
/// does): the GPU kept reading the old data from a freed VRAM page while the CPU read
/// zeros. (Found by `dmem-bench race` once madvise took the read lock.)
@Suite(.timeLimit(.minutes(1))) struct ForeignInvalidationRaceTests {
    struct World {
        let memory: PhysicalMemory
        let probe = StepProbe()
        let gpu: Device
        let mm: AddressSpace
        let base: UInt64
        let pattern: PagePattern
        let space: GPUAddressSpace

        init(api: MigrationPolicy.APIGeneration = .threeStep) throws {
            memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 14, checked: .on)
            var policy = MigrationPolicy()
            policy.batchPages = 16
            policy.apiGeneration = api
            policy.gpuFault = .migrateToVRAM(pages: 16)
            gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: probe)
            (mm, base, pattern) = try makeProcess(memory, pages: 32, seed: 21)
            space = try gpu.bind(mm)
        }

        func address(_ page: Int) -> UInt64 { base + UInt64(page * pageSize) }

        /// DONTNEED of page 1 at `step` of the first batch to VRAM.
        func dontNeedPage1(at step: MigrationEvent.Kind) throws {
            let (mm, target) = (mm, address(1))
            try probe.arm(at: .init(step, direction: .toDevice), hold: .seconds(20)) {
                try? mm.madvise(target, length: pageSize, advice: .dontNeed)
            }
        }

        /// Page 1 reads zeros on the GPU and the CPU, the others their pattern; the
        /// invariants hold and checked mode saw nothing; teardown returns every page.
        func expectPage1Dropped() throws {
            #expect(probe.waitForAction())
            #expect(probe.outcome == .finishedWhileHeld, "DONTNEED takes the mmap lock for read")
            let zeros = [UInt8](repeating: 0, count: pageSize)
            #expect(try space.read(at: address(1), count: pageSize) == zeros, "GPU")
            #expect(try mm.read(at: address(1), count: pageSize) == zeros, "CPU")
            for p in 0..<32 where p != 1 {
                #expect(try space.read(at: address(p), count: pageSize) == pattern.page(p), "GPU page \(p)")
            }
            #expect(gpu.checkInvariants().isEmpty)
            #expect(memory.checkInvariants(addressSpaces: [mm]).isEmpty)
            for p in 0..<32 where p != 1 {
                #expect(try mm.read(at: address(p), count: pageSize) == pattern.page(p), "CPU page \(p)")
            }
            gpu.unbind(mm)
            try mm.munmap(base, length: 32 * pageSize)
            try gpu.shutdown()
            #expect(gpu.vram.inUsePageCount == 0)
            #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations.prefix(3) ?? [])")
        }
    }

    @Test(arguments: [MigrationEvent.Kind.setupEnd, .migratePagesEnd, .fenceWaitBegin, .fenceWaitEnd])
    func dontNeedDuringAMigrationToVRAMKeepsThePageOffTheGPU(step: MigrationEvent.Kind) throws {
        let w = try World()
        try w.dontNeedPage1(at: step)
        #expect(try w.gpu.migrateToDevice(w.mm, range: w.base ..< w.address(32)).migrated >= 31)
        try w.expectPage1Dropped()
    }

    @Test func dontNeedDuringAGPUFaultMigrationKeepsThePageOffTheGPU() throws {
        let w = try World()
        try w.dontNeedPage1(at: .fenceWaitBegin)
        // The faulting read itself: page 1's entry was left unmapped, so it faults again.
        #expect(try w.space.read(at: w.address(1), count: 8) == [UInt8](repeating: 0, count: 8))
        try w.expectPage1Dropped()
    }

    @Test func dontNeedDuringA2017MigrationKeepsThePageOffTheGPU() throws {
        let w = try World(api: .callbacks2017)
        try w.dontNeedPage1(at: .migratePagesEnd)
        _ = try w.gpu.migrateToDevice(w.mm, range: w.base ..< w.address(32))
        try w.expectPage1Dropped()
    }

    /// An invalidation elsewhere in the address space costs the batch nothing.
    @Test func anInvalidationOutsideTheBatchKeepsItsMapping() throws {
        let w = try World()
        let (mm, other) = (w.mm, try w.mm.mmap(length: pageSize))
        try mm.write(at: other, bytes: [1])
        try w.probe.arm(at: .init(.fenceWaitBegin, direction: .toDevice), hold: .seconds(20)) {
            try? mm.madvise(other, length: pageSize, advice: .dontNeed)
        }
        #expect(try w.gpu.migrateToDevice(w.mm, range: w.base ..< w.address(16)).migrated == 16)
        #expect(w.probe.waitForAction())
        #expect(w.space.mappedPageCount == 16)
    }
}
