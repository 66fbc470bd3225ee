import Synchronization
import Testing
@testable import HostMM

@Suite struct AddressSpaceTests {
    @Test func munmapOfDeviceRangeCallsPageFreeForEveryPage() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 64)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 32 * pageSize)
        try mm.touch(a, length: 32 * pageSize, write: true)
        let ram = memory.freeRAMPageCount
        #expect(try device.migrateToDevice(mm, a, a + UInt64(32 * pageSize)) == 32)
        #expect(device.freePageCount == 32)
        try mm.munmap(a, length: 32 * pageSize)
        #expect(device.freed.load(ordering: .relaxed) == 32)
        #expect(device.freePageCount == 64)
        #expect(memory.freeRAMPageCount == ram + 32)
        #expect(device.cpuFaults.load(ordering: .relaxed) == 0)
    }

    @Test func exitReleasesDevicePagesToo() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 8 * pageSize)
        try device.migrateToDevice(mm, a, a + UInt64(8 * pageSize))   // holes become device pages
        #expect(device.freePageCount == 8)
        mm.exit()
        #expect(device.freePageCount == 16)
    }

    @Test func munmapOfASharedFileMappingPassesTheEntrysDirtyBitToThePage() throws {
        // zap_present_ptes: a dirty entry of a file page marks the folio dirty (folio_mark_dirty),
        // so writeback still sees a store made through a mapping that is gone.
        let memory = try makeMemory()
        let file = PageCacheFile(memory: memory, pageCount: 2)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.file(file, shared: true), length: 2 * pageSize)
        try mm.write(at: a, bytes: [3])
        _ = try mm.read(at: a + UInt64(pageSize), count: 1)
        let written = try #require(file.cachedPage(0)), onlyRead = try #require(file.cachedPage(1))
        #expect(!memory.flags(written).contains(.dirty))                // the entry holds it so far
        try mm.munmap(a, length: 2 * pageSize)
        #expect(memory.flags(written).contains(.dirty) && !memory.flags(onlyRead).contains(.dirty))
        #expect(try file.read(offset: 0, count: 1) == [3])
    }

    @Test func munmapSplitsVMAsAndKeepsTheRest() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: 4 * pageSize)
        try mm.write(at: a, bytes: pattern(1, count: 4 * pageSize))
        try mm.munmap(a + UInt64(pageSize), length: pageSize)
        #expect(mm.vmaList.count == 2)
        #expect(try mm.read(at: a + UInt64(2 * pageSize), count: 2 * pageSize) == Array(pattern(1, count: 4 * pageSize)[(2 * pageSize)...]))
        #expect(throws: HostMMError.segmentationFault(address: a + UInt64(pageSize), reason: .notMapped)) {
            try mm.read(at: a + UInt64(pageSize), count: 1)
        }
    }

    @Test(arguments: [(UInt64(1), 4096), (UInt64(0), 0)])
    func munmapRejectsUnalignedOrEmpty(_ offset: UInt64, _ length: Int) throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize)
        #expect(throws: HostMMError.invalidArgument) { try mm.munmap(a + offset, length: length) }
    }

    @Test func mmapRejectsBadArguments() throws {
        let mm = AddressSpace(memory: try makeMemory())
        #expect(throws: HostMMError.invalidArgument) { try mm.mmap(length: 0) }
        #expect(throws: HostMMError.invalidArgument) { try mm.mmap(length: pageSize, at: 0x1001) }
        #expect(throws: HostMMError.invalidArgument) { try mm.mmap(.special([.read]), length: pageSize) }
        #expect(try mm.mmap(length: pageSize, at: 0x10000) == 0x10000)
    }

    @Test func mprotectReadOnlyThenWriteFaultsAndRestoringWriteReusesThePage() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        try mm.write(at: a, bytes: [1, 2, 3])
        let pfn = mm.pageTableEntry(a).pfn
        try mm.mprotect(a, length: pageSize, protection: .read)
        #expect(mm.vmaList.count == 2)
        #expect(!mm.pageTableEntry(a).isWritable)
        #expect(throws: HostMMError.segmentationFault(address: a, reason: .accessDenied)) { try mm.write(at: a, bytes: [9]) }
        #expect(try mm.read(at: a, count: 3) == [1, 2, 3])
        try mm.mprotect(a, length: pageSize, protection: .readWrite)
        try mm.write(at: a, bytes: [9])
        #expect(mm.pageTableEntry(a).pfn == pfn)           // same page: no copy
        #expect(mm.faultCounters[.copyOnWrite] == 0)
        #expect(try mm.read(at: a, count: 3) == [9, 2, 3])
        try mm.mprotect(a, length: pageSize, protection: .none)
        #expect(throws: HostMMError.segmentationFault(address: a, reason: .accessDenied)) { try mm.read(at: a, count: 1) }
    }

    @Test func mprotectOfUnmappedRangeFailsWithENOMEM() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize)
        #expect(throws: HostMMError.outOfMemory) { try mm.mprotect(a, length: 2 * pageSize, protection: .read) }
        #expect(throws: HostMMError.invalidArgument) { try mm.mprotect(a + 1, length: pageSize, protection: .read) }
    }

    @Test func mprotectMakesDevicePrivateEntriesReadOnly() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: [4])
        try device.migrateToDevice(mm, a, a + UInt64(pageSize))
        #expect(mm.pageTableEntry(a).isWritable)
        try mm.mprotect(a, length: pageSize, protection: .read)
        #expect(mm.pageTableEntry(a).kind == .devicePrivate && !mm.pageTableEntry(a).isWritable)
        #expect(try mm.read(at: a, count: 1) == [4])
        #expect(!mm.pageTableEntry(a).isWritable)
    }

    @Test func forkSharesAnonymousPagesCopyOnWrite() throws {
        let memory = try makeMemory()
        let parent = AddressSpace(memory: memory)
        let a = try parent.mmap(length: pageSize)
        try parent.write(at: a, bytes: [1])
        let child = try parent.fork()
        let pfn = parent.pageTableEntry(a).pfn
        #expect(child.pageTableEntry(a).pfn == pfn && !child.pageTableEntry(a).isWritable && !parent.pageTableEntry(a).isWritable)
        #expect(memory.refcount(pfn) == 2 && memory.mapcount(pfn) == 2)
        try child.write(at: a, bytes: [2])
        #expect(child.faultCounters[.copyOnWrite] == 1)
        #expect(try parent.read(at: a, count: 1) == [1])
        #expect(try child.read(at: a, count: 1) == [2])
        try parent.write(at: a, bytes: [3])                // now the only mapping: reused in place
        #expect(parent.faultCounters[.writeReuse] == 1 && parent.pageTableEntry(a).pfn == pfn)
    }

    @Test func forkWithDevicePrivateEntriesSharesThemReadOnly() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let parent = AddressSpace(memory: memory)
        let a = try parent.mmap(length: 2 * pageSize)
        try parent.write(at: a, bytes: pattern(8, count: 2 * pageSize))
        try device.migrateToDevice(parent, a, a + UInt64(2 * pageSize))
        let child = try parent.fork()
        let dev = parent.pageTableEntry(a).pfn
        for mm in [parent, child] {
            let pte = mm.pageTableEntry(a)
            #expect(pte.kind == .devicePrivate && pte.pfn == dev && !pte.isWritable)
        }
        #expect(memory.refcount(dev) == 2 && memory.mapcount(dev) == 2)
        // The child's fault brings the page back for both address spaces (rmap finds the parent).
        #expect(try child.read(at: a, count: 2 * pageSize) == pattern(8, count: 2 * pageSize))
        let ram = child.pageTableEntry(a).pfn
        #expect(parent.pageTableEntry(a).kind == .present && parent.pageTableEntry(a).pfn == ram)
        #expect(memory.mapcount(ram) == 2)
        try parent.write(at: a, bytes: [0xAA])
        #expect(try child.read(at: a, count: 1) == [pattern(8, count: 1)[0]])
        #expect(try parent.read(at: a, count: 1) == [0xAA])
        child.exit()
        parent.exit()
        #expect(device.freePageCount == device.pageCount)
    }

    @Test func forkCopiesAPinnedPageForTheChild() throws {
        let memory = try makeMemory()
        let parent = AddressSpace(memory: memory)
        let a = try parent.mmap(length: pageSize)
        try parent.write(at: a, bytes: [6])
        let pins = try parent.pinUserPages(a, count: 1, write: true)
        let child = try parent.fork()
        #expect(child.pageTableEntry(a).pfn != pins[0])
        #expect(parent.pageTableEntry(a).isWritable)       // the parent keeps its exclusive page
        #expect(try child.read(at: a, count: 1) == [6])
        // copy_present_page: the child's copy is a new exclusive anonymous page of its VMA, mapped once.
        let copy = child.pageTableEntry(a).pfn
        #expect(memory.isAnon(copy) && memory.flags(copy).contains(.anonExclusive) && memory.mapcount(copy) == 1)
        let free = memory.freeRAMPageCount
        child.exit()
        #expect(memory.freeRAMPageCount == free + 1)
        memory.unpinUserPages(pins)
    }

    @Test func writeToAnUnsharedPageWithAnExtraReferenceCopiesIt() throws {
        // wp_can_reuse_anon_folio: a page no longer PageAnonExclusive (it was shared by fork)
        // is reused only when the mapping holds its only reference; another holder's
        // reference forces a copy, so that holder keeps the data it took.
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: [1])
        try mm.fork().exit()                                  // shared, then alone again
        let pfn = mm.pageTableEntry(a).pfn
        #expect(memory.mapcount(pfn) == 1 && !memory.flags(pfn).contains(.anonExclusive))
        memory.getPage(pfn)
        try mm.write(at: a, bytes: [2])
        #expect(mm.pageTableEntry(a).pfn != pfn && mm.faultCounters[.copyOnWrite] == 1)
        #expect(memory.bytes(pfn)!.load(as: UInt8.self) == 1)
        memory.putPage(pfn)
        #expect(memory.diagnostics.refcountUnderflowCount == 0)
    }

    @Test func forkSharesSharedAnonymousMemoryWithoutCopyOnWrite() throws {
        let memory = try makeMemory()
        let parent = AddressSpace(memory: memory)
        let a = try parent.mmap(.anonymousShared, length: 2 * pageSize)
        try parent.write(at: a, bytes: [1])
        let child = try parent.fork()
        #expect(child.pageTableEntry(a).isNone)            // shared mappings are not copied: faulted from shmem
        #expect(try child.read(at: a, count: 1) == [1])
        try child.write(at: a, bytes: [2])
        try child.write(at: a + UInt64(pageSize), bytes: [3])
        #expect(try parent.read(at: a, count: 1) == [2])
        #expect(try parent.read(at: a + UInt64(pageSize), count: 1) == [3])
        #expect(child.faultCounters[.copyOnWrite] == 0 && parent.faultCounters[.copyOnWrite] == 0)
        child.exit()
    }
}
