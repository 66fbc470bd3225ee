import Testing
@testable import HostMM

@Suite struct MigrateVMATests {
    @Test func presentRangeMigratesToDeviceAndBackThroughCPUFaults() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory)
        let mm = AddressSpace(memory: memory)
        let n = 64
        let a = try mm.mmap(length: n * pageSize)
        let data = pattern(1, count: n * pageSize)
        try mm.write(at: a, bytes: data)
        let ramBefore = memory.freeRAMPageCount

        #expect(try device.migrateToDevice(mm, a, a + UInt64(n * pageSize)) == n)
        for i in 0..<n {
            let pte = mm.pageTableEntry(a + UInt64(i * pageSize))
            #expect(pte.kind == .devicePrivate && pte.isWritable)
            #expect(memory.refcount(pte.pfn) == 1 && memory.mapcount(pte.pfn) == 1)
        }
        #expect(memory.freeRAMPageCount == ramBefore + n)   // sources were freed

        #expect(try mm.read(at: a, count: data.count) == data)
        #expect(device.cpuFaults.load(ordering: .relaxed) == n)
        #expect(mm.faultCounters[.devicePrivate] == n)
        #expect(device.freed.load(ordering: .relaxed) == n)
        #expect(device.freePageCount == device.pageCount)
        #expect(mm.pageTableEntry(a).kind == .present)
        #expect(memory.diagnostics.unlocksOfUnlockedPages == 0 && memory.diagnostics.refcountUnderflowCount == 0)
    }

    @Test func holesAndZeroPagesArePopulatedWithDevicePages() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 8 * pageSize)
        _ = try mm.read(at: a, count: 4 * pageSize)        // pages 0..3: zero page; 4..7: holes
        try mm.mmapLock.withReadLock {
            try withBuffers(8) { src, dst in
                var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + UInt64(8 * pageSize),
                                      src: src, dst: dst, pgmapOwner: device.owner, flags: .selectSystem)
                try migrateVMASetup(&args)
                #expect(args.cpages == 8 && args.npages == 8)
                #expect((0..<8).allSatisfy { src[$0] == .migrate })   // MIGRATE without VALID
                device.copyToDevice(src, dst, 8)
                try migrateVMAPages(&args)
                #expect((0..<8).allSatisfy { src[$0] == .migrate })
                migrateVMAFinalize(&args)
            }
        }
        for i in 0..<8 { #expect(mm.pageTableEntry(a + UInt64(i * pageSize)).kind == .devicePrivate) }
        #expect(try mm.read(at: a, count: 8 * pageSize) == [UInt8](repeating: 0, count: 8 * pageSize))
        #expect(device.freePageCount == device.pageCount)
    }

    @Test func zeroPageIsSkippedWithoutSelectSystemButHolesAreNot() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        _ = try mm.read(at: a, count: 1)
        try mm.mmapLock.withReadLock {
            try withBuffers(2) { src, dst in
                var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + UInt64(2 * pageSize),
                                      src: src, dst: dst, pgmapOwner: device.owner, flags: .selectDevicePrivate)
                try migrateVMASetup(&args)
                #expect(src[0] == [] && src[1] == .migrate && args.cpages == 1)
                migrateVMAFinalize(&args)
            }
        }
    }

    @Test func holesInNonAnonymousVMAsAreSkipped() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.anonymousShared, length: 4 * pageSize)
        #expect(try device.migrateToDevice(mm, a, a + UInt64(4 * pageSize)) == 0)
        try mm.write(at: a, bytes: [1])
        // A present shmem page is collected but cannot move to device memory.
        try mm.mmapLock.withReadLock {
            try withBuffers(4) { src, dst in
                var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + UInt64(4 * pageSize),
                                      src: src, dst: dst, pgmapOwner: device.owner, flags: .selectSystem)
                try migrateVMASetup(&args)
                #expect(args.cpages == 1 && src[0].contains(.migrate) && src[1] == [])
                device.copyToDevice(src, dst, 4)
                try migrateVMAPages(&args)
                #expect(!src[0].contains(.migrate))
                migrateVMAFinalize(&args)
            }
        }
        #expect(try mm.read(at: a, count: 1) == [1])
        #expect(device.freePageCount == device.pageCount)
    }
}

extension MigrateVMATests {
    /// `migrate_vma_collect_hole`: only anonymous memory may be populated, so a hole of a
    /// shared or file mapping with no page table at all is skipped (`migrate_vma_collect_skip`):
    /// src stays 0 and cpages does not count it. A page-table-less range of an anonymous
    /// VMA, by contrast, offers every page to the driver (`.migrate` without `.valid`).
    @Test func holesWithoutAPageTableAreCollectedOnlyInAnonymousVMAs() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let file = PageCacheFile(memory: memory, pageCount: 4)
        let shared = try mm.mmap(.anonymousShared, length: 4 * pageSize)
        let fileMap = try mm.mmap(.file(file, shared: false), length: 4 * pageSize)
        let anon = try mm.mmap(length: 4 * pageSize)
        try mm.mmapLock.withReadLock {
            for (a, populates) in [(shared, false), (fileMap, false), (anon, true)] {
                try withBuffers(4) { src, dst in
                    src.update(repeating: .write)   // setup must overwrite every entry of the range
                    var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + UInt64(4 * pageSize),
                                          src: src, dst: dst, flags: .selectSystem)
                    try migrateVMASetup(&args)
                    #expect(args.npages == 4)
                    #expect(args.cpages == (populates ? 4 : 0))
                    #expect(Array(src) == Array(repeating: populates ? MigratePFN.migrate : [], count: 4))
                    migrateVMAFinalize(&args)
                }
            }
        }
        #expect(mm.pageTableEntry(shared).isNone && mm.pageTableEntry(fileMap).isNone && mm.pageTableEntry(anon).isNone)
    }
}
