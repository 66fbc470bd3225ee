import Testing
@testable import HostMM

@Suite struct InsertPageTests {
    @Test func insertingMakesTheVMAMixedMapSoForkCopiesTheEntry() throws {
        // vm_insert_page sets VM_MIXEDMAP on a VMA that lacks it; vma_needs_copy then copies
        // the inserted entry into a forked child, which reads the same page.
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.special([.dontExpand, .shared]), length: pageSize)
        let page = try #require(memory.allocPage(zeroed: true))
        memory.bytes(page)!.storeBytes(of: 0x3C, as: UInt8.self)
        try mm.insertPage(a, page: page)
        memory.putPage(page)
        #expect(mm.vmaList[0].flags.contains(.mixedMap))
        let child = try mm.fork()
        #expect(child.pageTableEntry(a).pfn == page && memory.mapcount(page) == 2)
        #expect(try child.read(at: a, count: 1) == [0x3C])
        child.exit()
        mm.exit()
    }

    @Test func insertedPageIsAReadOnlyRefcountedMappingInAPrivateMixedMap() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.special(.mixedMap), length: pageSize)
        let page = try #require(memory.allocPage(zeroed: true))
        memory.bytes(page)!.storeBytes(of: 0x5A, as: UInt8.self)
        try mm.insertPage(a, page: page)
        memory.putPage(page)                                    // the driver's reference
        let pte = mm.pageTableEntry(a)
        #expect(pte.kind == .present && pte.pfn == page && !pte.isWritable && !pte.isSpecial)
        #expect(memory.refcount(page) == 1 && memory.mapcount(page) == 1)
        #expect(try mm.read(at: a, count: 1) == [0x5A])
        #expect(throws: HostMMError.busy) { try mm.insertPage(a, page: page) }
        let free = memory.freeRAMPageCount
        try mm.munmap(a, length: pageSize)
        #expect(memory.freeRAMPageCount == free + 1)
    }

    @Test func hmmWalksMixedMapsAndReportsTheInsertedPage() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.special(.mixedMap), length: 2 * pageSize)
        let page = try #require(memory.allocPage(zeroed: true))
        try mm.insertPage(a, page: page)
        let n = try mm.notifiers.insert(start: a, length: UInt64(2 * pageSize), ops: NullMirror())
        #expect(try hmm(mm, n, a, pages: 2) == [HMMPFN(pfn: page, flags: .valid), []])
        #expect(throws: HostMMError.fault) { try hmm(mm, n, a, pages: 2, request: .requestFault) }  // SIGBUS hole
    }

    @Test func badPagesAndPlacesAreRefused() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.special(.mixedMap), length: pageSize)
        let p = try mm.mmap(.special(.pfnMap), length: pageSize)
        let page = try #require(memory.allocPage())
        let anon = try mm.mmap(length: pageSize)
        try mm.write(at: anon, bytes: [1])
        #expect(throws: HostMMError.invalidArgument) { try mm.insertPage(a + 1, page: page) }
        #expect(throws: HostMMError.fault) { try mm.insertPage(a + 64 * UInt64(pageSize), page: page) }
        #expect(throws: HostMMError.invalidArgument) { try mm.insertPage(p, page: page) }
        #expect(throws: HostMMError.invalidArgument) { try mm.insertPage(a, page: memory.zeroPFN) }
        #expect(throws: HostMMError.invalidArgument) { try mm.insertPage(a, page: mm.pageTableEntry(anon).pfn) }
        #expect(throws: HostMMError.invalidArgument) { try mm.insertPage(a, page: PFN(memory.maxPFN + 5)) }
        memory.putPage(page)
        #expect(throws: HostMMError.invalidArgument) { try mm.insertPage(a, page: page) }   // free now
    }
}
