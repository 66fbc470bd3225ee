import Testing
@testable import HostMM

/// Takes exclusive access like a driver does (`make_device_exclusive`, then unlock and put).
func makeExclusive(_ mm: AddressSpace, _ a: UInt64, owner: PgmapOwner? = nil) throws(HostMMError) -> PFN {
    let page = try mm.mmapLock.withReadLock { () throws(HostMMError) in try mm.makeDeviceExclusive(a, owner: owner) }
    mm.memory.unlockPage(page)
    mm.memory.putPage(page)
    return page
}

@Suite struct DeviceExclusiveTests {
    private let page = UInt64(pageSize)

    @Test func cpuWriteRevokesTheEntryWithAnOwnerlessExclusiveInvalidation() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: [1])
        let mirror = RecordingMirror(owner: PgmapOwner(rawValue: 7))
        _ = try mm.notifiers.insert(start: a, length: page, ops: mirror)
        let pfn = try makeExclusive(mm, a)
        #expect(mm.pageTableEntry(a).kind == .deviceExclusive && mm.pageTableEntry(a).pfn == pfn)
        #expect(mirror.events.withLockedValue { $0.map(\.0) == [.exclusive] && $0[0].1 == nil })
        #expect(memory.refcount(pfn) == 1 && memory.mapcount(pfn) == 1 && !memory.isPageLocked(pfn))
        try mm.write(at: a, bytes: [2])
        #expect(mm.pageTableEntry(a).kind == .present && mm.pageTableEntry(a).pfn == pfn && mm.pageTableEntry(a).isWritable)
        #expect(mirror.kinds == [.exclusive, .exclusive])                 // the restore invalidates too
        #expect(mm.faultCounters[.deviceExclusive] == 1)
        #expect(try mm.read(at: a, count: 1) == [2])
    }

    @Test func exclusiveOfAHoleOrZeroPageFaultsInAWritablePageFirst() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        _ = try mm.read(at: a + page, count: 1)                            // zero page
        let p0 = try makeExclusive(mm, a)
        let p1 = try makeExclusive(mm, a + page)
        #expect(p0 != memory.zeroPFN && p1 != memory.zeroPFN && memory.isAnon(p1))
        #expect(try mm.read(at: a, count: 2 * pageSize) == [UInt8](repeating: 0, count: 2 * pageSize))
    }

    @Test func exclusiveOfADevicePrivatePageBringsItBackFirst() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 4)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: [5])
        try device.migrateToDevice(mm, a, a + page)
        let pfn = try makeExclusive(mm, a)
        #expect(memory.isRAM(pfn) && device.cpuFaults.load(ordering: .relaxed) == 1)
        #expect(try mm.read(at: a, count: 1) == [5])
    }

    @Test func forkRestoresTheEntryAndBothProcessesCopyOnWrite() throws {
        let memory = try makeMemory()
        let parent = AddressSpace(memory: memory)
        let a = try parent.mmap(length: pageSize)
        try parent.write(at: a, bytes: [10])
        let pfn = try makeExclusive(parent, a)
        let child = try parent.fork()
        for mm in [parent, child] {
            let pte = mm.pageTableEntry(a)
            #expect(pte.kind == .present && pte.pfn == pfn && !pte.isWritable)
            #expect(pte.isDirty)                  // restore_exclusive_pte: a writable entry comes back dirty
        }
        #expect(memory.mapcount(pfn) == 2)
        try parent.write(at: a, bytes: [11])
        try child.write(at: a, bytes: [12])
        #expect(try parent.read(at: a, count: 1) == [11] && child.read(at: a, count: 1) == [12])
        #expect(parent.faultCounters[.copyOnWrite] == 1)
        #expect(parent.faultCounters[.deviceExclusive] == 0)             // fork restored it, not a fault
        child.exit()
    }

    @Test func mprotectReadOnlyLeavesAReadOnlyEntryThatReadsRestore() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: [3])
        _ = try makeExclusive(mm, a)
        try mm.mprotect(a, length: pageSize, protection: .read)
        #expect(mm.pageTableEntry(a).kind == .deviceExclusive && !mm.pageTableEntry(a).isWritable)
        #expect(try mm.read(at: a, count: 1) == [3])
        #expect(mm.pageTableEntry(a).kind == .present && !mm.pageTableEntry(a).isWritable)
    }

    @Test func privateFileMappingGetsItsCopyOnWritePageMadeExclusive() throws {
        let memory = try makeMemory()
        let file = PageCacheFile(memory: memory, pageCount: 1)
        try file.write(offset: 0, [7])
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.file(file, shared: false), length: pageSize)
        let pfn = try makeExclusive(mm, a)
        #expect(memory.isAnon(pfn) && pfn != file.cachedPage(0))
        #expect(try mm.read(at: a, count: 1) == [7])
    }

    enum Refusal: CaseIterable { case noVMA, protNone, readOnly, sharedAnonymous, sharedFile, pfnMap, hugetlb, unaligned }

    @Test(arguments: Refusal.allCases)
    func refusalsThrowWhatGUPAndTheAnonCheckReturn(_ c: Refusal) throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let expected: HostMMError
        var a: UInt64
        switch c {
        case .noVMA: a = try mm.mmap(length: pageSize) + page; expected = .fault
        case .protNone: a = try mm.mmap(length: pageSize, protection: .none); expected = .fault
        case .readOnly: a = try mm.mmap(length: pageSize, protection: .read); expected = .fault
        case .sharedAnonymous: a = try mm.mmap(.anonymousShared, length: pageSize); expected = .notSupported
        case .sharedFile:
            a = try mm.mmap(.file(PageCacheFile(memory: memory, pageCount: 1), shared: true), length: pageSize)
            expected = .notSupported
        case .pfnMap: a = try mm.mmap(.special(.pfnMap), length: pageSize); expected = .fault
        case .hugetlb: a = try mm.mmap(.hugetlb, length: pageSize); expected = .notSupported
        case .unaligned: a = try mm.mmap(length: pageSize) + 8; expected = .invalidArgument
        }
        #expect(throws: expected) { try makeExclusive(mm, a) }
        if c == .sharedAnonymous || c == .sharedFile {
            #expect(mm.pageTableEntry(a).kind == .present)                 // faulted in, left mapped
            #expect(!memory.isPageLocked(mm.pageTableEntry(a).pfn))
        }
    }

    @Test func withoutTheMmapLockIsRefused() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize)
        #expect(throws: HostMMError.mmapLockNotHeld) { try mm.makeDeviceExclusive(a) }
    }
}
