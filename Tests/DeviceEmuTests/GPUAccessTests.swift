import DMAEngine
import DeviceEmu
import HostMM
import Testing

@Suite struct GPUAccessTests {
    @Test func gpuWritesThenCPUReads() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let pages = 64
        let a = try mm.mmap(length: pages * pageSize)
        let space = try gpu.bind(mm)
        let pattern = PagePattern(seed: 31)
        for p in 0..<pages { try space.write(at: a + UInt64(p * pageSize), bytes: pattern.page(p)) }
        // The default policy migrated the touched windows (holes) to VRAM on GPU faults.
        #expect(gpu.counters[.gpuFaults] == pages / 16)
        #expect(entryKinds(mm, a, pages: pages) == [.devicePrivate: pages])
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
        #expect(gpu.counters[.cpuFaults] == pages && space.mappedPageCount == 0)
    }

    /// A count past the mapping is a GPU fault at the mapping's end (or EINVAL past the
    /// GPU's address limit), as the same access through `read(at:into:)` is; it trapped
    /// before, allocating `count` bytes up front.
    @Test func readOfACountPastTheMappingFaultsInsteadOfTrapping() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        try mm.write(at: a, bytes: [5, 6, 7])
        let space = try gpu.bind(mm)
        let end = a + UInt64(2 * pageSize)
        #expect(throws: DeviceError.fault(address: end)) { try space.read(at: a, count: 1 << 44) }
        #expect(throws: DeviceError.fault(address: end)) { try space.read(at: a, count: 2 * pageSize + 1) }
        #expect(throws: DeviceError.invalidArgument) { try space.read(at: a, count: .max) }
        #expect(throws: DeviceError.invalidArgument) { try space.read(at: .max - 2, count: 8) }
        let back = try space.read(at: a, count: 2 * pageSize)
        #expect(back.count == 2 * pageSize && back.prefix(4) == [5, 6, 7, 0])
        #expect(try space.read(at: a, count: 0).isEmpty)
    }

    /// A GPU fault whose window migrated but whose own page stayed (pinned) counted the
    /// migration's entries twice in `deviceMappings`: once when the batch mapped them, again
    /// with the fault's own mapping.
    @Test func gpuFaultCountsEachEntryItWritesOnce() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.gpuFault = .migrateToVRAM(pages: 8)
        let gpu = try makeDevice(memory, vramMiB: 8, policy: policy)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 8, seed: 33)
        let pinned = try mm.pinUserPages(a, count: 1, write: false)
        defer { memory.unpinUserPages(pinned) }
        let space = try gpu.bind(mm)
        #expect(try space.read(at: a, count: pageSize) == pattern.page(0))
        #expect(gpu.counters[.gpuFaults] == 1)
        #expect(space.entry(at: a).kind == .system && gpu.residentPages(mm, a, pages: 8) == 7)
        #expect(space.mappedPageCount == 8)
        #expect(gpu.counters[.deviceMappings] == 8)
    }

    @Test func mapSystemPolicyLeavesDataInRAMAndSharesIt() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.gpuFault = .mapSystemMemory(pages: 8)
        let gpu = try makeDevice(memory, vramMiB: 8, policy: policy)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 32, seed: 32)
        let space = try gpu.bind(mm)
        #expect(try pattern.gpuMismatches(space, a, pages: 32).isEmpty)
        #expect(gpu.counters[.gpuFaults] == 4)      // 8-page windows, present pages mapped with the faulting one
        #expect(space.entry(at: a).kind == .system && space.entry(at: a).pfn == mm.pageTableEntry(a).pfn)
        #expect(gpu.vram.inUsePageCount == 0)
        try space.write(at: a + 5, bytes: [9, 9])
        #expect(try mm.read(at: a + 5, count: 2) == [9, 9])
        #expect(gpu.counters[.cpuFaults] == 0)
    }

    @Test func gpuWriteToAnUntouchedPageFaultsItInForWrite() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.gpuFault = .mapSystemMemory(pages: 1)
        let gpu = try makeDevice(memory, vramMiB: 8, policy: policy)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let space = try gpu.bind(mm)
        #expect(try space.read(at: a, count: 4) == [0, 0, 0, 0])
        #expect(space.entry(at: a).kind == .system && !space.entry(at: a).isWritable)   // the zero page
        try space.write(at: a, bytes: [7])
        #expect(space.entry(at: a).isWritable && space.entry(at: a).pfn != memory.zeroPFN)
        #expect(try mm.read(at: a, count: 1) == [7])
    }

    @Test func cpuSideChangesInvalidateDeviceMappings() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.gpuFault = .mapSystemMemory(pages: 16)
        let gpu = try makeDevice(memory, vramMiB: 8, policy: policy)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * pageSize)
        try PagePattern(seed: 33).fill(mm, a, pages: 16)
        let space = try gpu.bind(mm)
        _ = try space.read(at: a, count: 1)
        #expect(space.mappedPageCount == 16)
        try mm.mprotect(a, length: 4 * pageSize, protection: .read)
        #expect(space.entry(at: a).kind == .none && space.entry(at: a + 3 * 4096).kind == .none)
        #expect(space.entry(at: a + 4 * 4096).kind == .system && space.mappedPageCount == 12)
        #expect(throws: DeviceError.permissionDenied(address: a)) { try space.write(at: a, bytes: [1]) }
        try mm.munmap(a + 8 * 4096, length: 8 * pageSize)
        #expect(space.entry(at: a + 8 * 4096).kind == .none)
        #expect(throws: DeviceError.fault(address: a + 8 * 4096)) { try space.read(at: a + 8 * 4096, count: 1) }
        #expect(gpu.counters[.invalidations] >= 2)
    }

    /// An invalidation spanning more 2 MiB leaves than the device page table holds walks
    /// the leaves it has: the one holding the range's last page is zapped too.
    @Test func aWideInvalidationZapsAnEntryInItsLastLeaf() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.gpuFault = .mapSystemMemory(pages: 1)
        let gpu = try makeDevice(memory, vramMiB: 8, policy: policy)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let pages = 1536                                    // 6 MiB: three leaves or more
        let a = try mm.mmap(length: pages * pageSize)
        try PagePattern(seed: 35).fill(mm, a, pages: pages)
        let space = try gpu.bind(mm)
        let last = a + UInt64(pages - 1) * 4096
        _ = try space.read(at: last, count: 1)
        #expect(space.entry(at: last).kind == .system && space.mappedPageCount == 1)
        try mm.munmap(a, length: pages * pageSize)
        #expect(space.entry(at: last).kind == .none && space.mappedPageCount == 0)
    }

    @Test func ownMigrationsDoNotInvalidateButOthersDo() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * pageSize)
        try PagePattern(seed: 34).fill(mm, a, pages: 16)
        let space = try gpu.bind(mm)
        let before = gpu.counters[.invalidations]
        try gpu.migrateToDevice(mm, range: range(a, pages: 16))
        #expect(gpu.counters[.invalidations] == before)
        #expect(gpu.counters[.ownInvalidationsSkipped] >= 1)
        #expect(space.mappedPageCount == 16)
        // A CPU write fault pulls page 3 back: the driver zaps its own entry for it.
        try mm.write(at: a + 3 * 4096, bytes: [1])
        #expect(space.entry(at: a + 3 * 4096).kind == .none && space.mappedPageCount == 15)
        // Migrating the range again moves page 3 alone: its own invalidation keeps the VRAM
        // entries of the other 15 (it zaps only system-memory entries).
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 16)).migrated == 1)
        #expect(space.mappedPageCount == 16 && space.entry(at: a).kind == .vram)
        #expect(gpu.counters[.invalidations] == before)
        // Eviction by PFN is not an own-VMA migration: the notifier zaps the rest.
        gpu.evictAll()
        #expect(space.mappedPageCount == 0 && gpu.counters[.invalidations] > before)
    }

    @Test func atomicsInVRAMAndOnDeviceExclusiveSystemPages() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        let space = try gpu.bind(mm)
        #expect(try space.atomicAdd(at: a + 8, 5) == 0)
        #expect(try space.atomicAdd(at: a + 8, 5) == 5)
        #expect(space.entry(at: a).kind == .vram)
        #expect(try space.atomicCompareExchange(at: a + 8, expected: 10, desired: 42) == (true, 10))
        #expect(try space.atomicCompareExchange(at: a + 8, expected: 10, desired: 1) == (false, 42))
        #expect(throws: DeviceError.invalidArgument) { try space.atomicAdd(at: a + 3, 1) }

        var policy = gpu.policy
        policy.gpuFault = .mapSystemMemory(pages: 1)
        try gpu.setPolicy(policy)
        let b = a + 4096
        try mm.write(at: b, bytes: [1, 0, 0, 0, 0, 0, 0, 0])
        #expect(try space.atomicAdd(at: b, 2) == 1)
        #expect(space.entry(at: b).kind == .exclusive && mm.pageTableEntry(b).kind == .deviceExclusive)
        #expect(try mm.read(at: b, count: 1) == [3])                  // the CPU takes it back
        #expect(mm.faultCounters[.deviceExclusive] == 1 && space.entry(at: b).kind == .none)
        #expect(try mm.read(at: a + 8, count: 1) == [42])
    }

    /// An atomic on a page already in this device's VRAM that the device page table does not
    /// map (a fresh bind) maps the VRAM page: it does not pull it back to RAM to take it
    /// device-exclusive, under either GPU-fault policy.
    @Test(arguments: [MigrationPolicy.GPUFaultResolution.mapSystemMemory(pages: 1), .migrateToVRAM(pages: 16)])
    func atomicOnUnmappedVRAMPageMapsItInPlace(resolution: MigrationPolicy.GPUFaultResolution) throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.gpuFault = resolution
        let gpu = try makeDevice(memory, vramMiB: 8, policy: policy)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        try mm.write(at: a + 8, bytes: [40, 0, 0, 0, 0, 0, 0, 0])
        try gpu.migrateToDevice(mm, range: range(a, pages: 4))
        let space = try gpu.bind(mm)
        #expect(space.mappedPageCount == 0)
        #expect(try space.atomicAdd(at: a + 8, 2) == 40)
        #expect(space.entry(at: a).kind == .vram && space.entry(at: a).isWritable)
        #expect(gpu.counters[.cpuFaults] == 0 && gpu.counters[.pagesToRAM] == 0)
        #expect(mm.pageTableEntry(a).kind == .devicePrivate && gpu.residentPages(mm, a, pages: 4) == 4)
        #expect(try mm.read(at: a + 8, count: 1) == [42])
    }

    @Test func accessesOutsideAnyMappingFault() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let space = try gpu.bind(mm)
        #expect(throws: DeviceError.fault(address: 0x1000)) { try space.read(at: 0x1000, count: 8) }
        #expect(throws: DeviceError.invalidArgument) { try space.read(at: 0x1000, count: -1) }
        #expect(try gpu.bind(mm) === space)
        gpu.unbind(mm)
        #expect(throws: DeviceError.shutDown) { try space.read(at: 0x1000, count: 8) }
    }
}
