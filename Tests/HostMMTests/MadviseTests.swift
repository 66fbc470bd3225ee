import Testing
@testable import HostMM

@Suite struct MadviseTests {
    private let page = UInt64(pageSize)

    @Test func dontNeedDropsAnonymousPagesWhichReadBackAsZeros() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        try mm.write(at: a, bytes: pattern(1, count: 4 * pageSize))
        let mirror = RecordingMirror()
        _ = try mm.notifiers.insert(start: a, length: 4 * page, ops: mirror)
        let free = memory.freeRAMPageCount
        try mm.madvise(a + page, length: 2 * pageSize, advice: .dontNeed)
        #expect(mirror.kinds == [.clear])
        #expect(memory.freeRAMPageCount == free + 2)
        #expect(try mm.read(at: a + page, count: 2 * pageSize) == [UInt8](repeating: 0, count: 2 * pageSize))
        #expect(try mm.read(at: a, count: 16) == Array(pattern(1, count: 16)))
    }

    @Test func dontNeedOnDevicePrivateEntriesFreesTheDevicePages() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        try mm.write(at: a, bytes: pattern(2, count: 4 * pageSize))
        try device.migrateToDevice(mm, a, a + 4 * page)
        try mm.madvise(a, length: 4 * pageSize, advice: .dontNeed)
        #expect(device.freed.load(ordering: .relaxed) == 4 && device.freePageCount == 16)
        #expect(try mm.read(at: a, count: 4 * pageSize) == [UInt8](repeating: 0, count: 4 * pageSize))
        #expect(device.cpuFaults.load(ordering: .relaxed) == 0)
    }

    @Test func dontNeedOnAPrivateFileMappingDropsCopiesAndRereadsTheFile() throws {
        let memory = try makeMemory()
        let file = PageCacheFile(memory: memory, pageCount: 1)
        try file.write(offset: 0, [1, 2, 3])
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.file(file, shared: false), length: pageSize)
        try mm.write(at: a, bytes: [9])
        #expect(try mm.read(at: a, count: 3) == [9, 2, 3])
        try mm.madvise(a, length: pageSize, advice: .dontNeed)
        #expect(try mm.read(at: a, count: 3) == [1, 2, 3])
    }

    @Test func freeMarksPagesCleanButKeepsDataAndDevicePrivateEntries() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let data = pattern(3, count: 4 * pageSize)
        try mm.write(at: a, bytes: data)
        try device.migrateToDevice(mm, a + 2 * page, a + 4 * page)
        let ram = mm.pageTableEntry(a).pfn
        #expect(mm.pageTableEntry(a).isDirty && memory.flags(ram).contains(.swapBacked))
        try mm.madvise(a, length: 4 * pageSize, advice: .free)
        #expect(!mm.pageTableEntry(a).isDirty && !mm.pageTableEntry(a).isYoung)
        #expect(!memory.flags(ram).contains(.swapBacked) && !memory.flags(ram).contains(.dirty))
        #expect(mm.pageTableEntry(a + 2 * page).kind == .devicePrivate)
        #expect(device.freed.load(ordering: .relaxed) == 0)
        #expect(try mm.read(at: a, count: 4 * pageSize) == data)          // reclaim is not modelled
        try mm.write(at: a, bytes: [0])
        #expect(mm.pageTableEntry(a).isDirty)                              // written again: no longer discardable
    }

    @Test func freeCleansAPageAlreadyMarkedDirty() throws {
        // madvise_free_pte_range: a folio whose own dirty flag is set is cleaned under its
        // lock, not only the entry. make_device_exclusive moved the entry's dirty bit to the page.
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: [5])
        let page = try mm.mmapLock.withReadLock { () throws(HostMMError) in try mm.makeDeviceExclusive(a) }
        memory.unlockPage(page)
        memory.putPage(page)
        #expect(try mm.read(at: a, count: 1) == [5])                      // the CPU takes it back
        #expect(memory.flags(page).contains(.dirty))
        try mm.madvise(a, length: pageSize, advice: .free)
        #expect(!memory.flags(page).contains(.dirty) && !memory.flags(page).contains(.swapBacked))
        #expect(!memory.isPageLocked(page))
        #expect(try mm.read(at: a, count: 1) == [5])
    }

    @Test func freeSkipsPagesSharedWithAForkedChild() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: [4])
        let child = try mm.fork()
        try mm.madvise(a, length: pageSize, advice: .free)
        #expect(memory.flags(mm.pageTableEntry(a).pfn).contains(.swapBacked))
        child.exit()
    }

    @Test func freeOutsidePrivateAnonymousMemoryIsEINVAL() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let s = try mm.mmap(.anonymousShared, length: pageSize)
        let f = try mm.mmap(.file(PageCacheFile(memory: memory, pageCount: 1), shared: false), length: pageSize)
        #expect(throws: HostMMError.invalidArgument) { try mm.madvise(s, length: pageSize, advice: .free) }
        #expect(throws: HostMMError.invalidArgument) { try mm.madvise(f, length: pageSize, advice: .free) }
        try mm.madvise(s, length: pageSize, advice: .dontNeed)
    }

    @Test func pfnMapAndLockedAndHugetlbRefuseDontNeed() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let p = try mm.mmap(.special(.pfnMap), length: pageSize)
        let h = try mm.mmap(.hugetlb, length: pageSize)
        #expect(throws: HostMMError.invalidArgument) { try mm.madvise(p, length: pageSize, advice: .dontNeed) }
        #expect(throws: HostMMError.invalidArgument) { try mm.madvise(h, length: pageSize, advice: .free) }
    }

    @Test func lockedVMARefusesDontNeedAndFreeAndKeepsItsPages() throws {
        // can_madv_lru_vma: VM_LOCKED (mlock) memory may not be dropped. The model has no
        // mlock, so the flag is set directly.
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: [6])
        mm.vmaList[0].flags.insert(.locked)
        #expect(throws: HostMMError.invalidArgument) { try mm.madvise(a, length: pageSize, advice: .dontNeed) }
        #expect(throws: HostMMError.invalidArgument) { try mm.madvise(a, length: pageSize, advice: .free) }
        #expect(try mm.read(at: a, count: 1) == [6])
    }

    @Test func holesGiveENOMEMAfterTheMappedPartsAreAdvised() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 3 * pageSize)
        try mm.write(at: a, bytes: pattern(5, count: 3 * pageSize))
        try mm.munmap(a + page, length: pageSize)
        #expect(throws: HostMMError.outOfMemory) { try mm.madvise(a, length: 3 * pageSize, advice: .dontNeed) }
        #expect(try mm.read(at: a + 2 * page, count: 1) == [0])
        #expect(try mm.read(at: a, count: 1) == [0])
    }

    @Test func badRangesAndNoOpAdvice() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: [6])
        #expect(throws: HostMMError.invalidArgument) { try mm.madvise(a + 1, length: 1, advice: .dontNeed) }
        #expect(throws: HostMMError.invalidArgument) { try mm.madvise(a, length: -1, advice: .dontNeed) }
        #expect(throws: HostMMError.invalidArgument) { try mm.madvise(UInt64.max & ~4095, length: 2 * pageSize, advice: .dontNeed) }
        #expect(throws: HostMMError.outOfMemory) { try mm.madvise(1 << 47, length: pageSize, advice: .dontNeed) }
        try mm.madvise(a, length: 0, advice: .dontNeed)                  // empty: nothing
        try mm.madvise(a, length: pageSize, advice: .hugePage)
        try mm.madvise(a, length: pageSize, advice: .noHugePage)
        #expect(try mm.read(at: a, count: 1) == [6])
    }
}
