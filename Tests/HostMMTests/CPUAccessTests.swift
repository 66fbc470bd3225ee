import Testing
@testable import HostMM

@Suite struct CPUAccessTests {
    @Test func anonymousReadMapsTheZeroPageAndWriteAllocates() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        #expect(try mm.read(at: a, count: 16) == [UInt8](repeating: 0, count: 16))
        #expect(mm.pageTableEntry(a).pfn == memory.zeroPFN)
        #expect(mm.faultCounters[.zeroPage] == 1)
        try mm.write(at: a + 100, bytes: [1, 2, 3])
        #expect(mm.faultCounters[.copyOnWrite] == 1)   // the zero page is copied on write
        #expect(try mm.read(at: a + 99, count: 5) == [0, 1, 2, 3, 0])
        try mm.write(at: a + UInt64(pageSize), bytes: [9])
        #expect(mm.faultCounters[.anonymousPage] == 1)
        let pfn = mm.pageTableEntry(a + UInt64(pageSize)).pfn
        #expect(memory.refcount(pfn) == 1 && memory.mapcount(pfn) == 1)
        #expect(memory.flags(pfn).contains(.anonExclusive))
    }

    @Test func accessAcrossPagesRoundTrips() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: 5 * pageSize)
        let data = pattern(7, count: 3 * pageSize + 123)
        try mm.write(at: a + 1000, bytes: data)
        #expect(try mm.read(at: a + 1000, count: data.count) == data)
    }

    @Test func unmappedAddressRaisesSegvMapErr() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize)
        #expect(throws: HostMMError.segmentationFault(address: a + UInt64(pageSize), reason: .notMapped)) {
            try mm.read(at: a + UInt64(pageSize), count: 1)
        }
        #expect(mm.faultCounters[.sigsegv] == 1)
        #expect("\(HostMMError.segmentationFault(address: a + UInt64(pageSize), reason: .notMapped))"
                == "SIGSEGV (SEGV_MAPERR) at 0x\(String(a + UInt64(pageSize), radix: 16)): no mapping")
        #expect("\(HostMMError.mmapLockNotHeld)" == "the caller does not hold the mmap lock")
    }

    /// A count past the mapping faults where the mapping ends, as a load there would; it
    /// trapped before ("failed to allocate … bytes") because the array was allocated at
    /// `count` bytes before the first page was touched.
    @Test func readOfACountPastTheMappingFaultsInsteadOfTrapping() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: 2 * pageSize)
        try mm.write(at: a, bytes: [1, 2, 3])
        let end = a + UInt64(2 * pageSize)
        #expect(mm.mappedLength(at: a, upTo: .max) == 2 * pageSize)
        #expect(mm.mappedLength(at: a + 10, upTo: 5) == 5)
        #expect(mm.mappedLength(at: end, upTo: .max) == 0)
        #expect(mm.mappedLength(at: .max - 1, upTo: .max) == 0)
        for count in [Int.max, 1 << 44, 2 * pageSize + 1] {
            #expect(throws: HostMMError.segmentationFault(address: end, reason: .notMapped)) {
                try mm.read(at: a, count: count)
            }
        }
        #expect(mm.faultCounters[.sigsegv] == 3)
        #expect(try mm.read(at: a, count: 2 * pageSize).prefix(4) == [1, 2, 3, 0])
        // A mapping right after the first one: the read crosses into it.
        let b = try mm.mmap(length: pageSize, at: end)
        #expect(b == end)
        try mm.write(at: b, bytes: [9])
        #expect(mm.mappedLength(at: a, upTo: .max) == 3 * pageSize)
        let all = try mm.read(at: a, count: 3 * pageSize)
        #expect(all.count == 3 * pageSize && all[2 * pageSize] == 9)
    }

    @Test func writeToReadOnlyMappingRaisesSegvAccErr() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize, protection: .read)
        #expect(throws: HostMMError.segmentationFault(address: a, reason: .accessDenied)) {
            try mm.write(at: a, bytes: [1])
        }
    }

    @Test func specialMappingWithoutPFNsRaisesSigbus() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(.special([.io, .pfnMap]), length: pageSize)
        #expect(throws: HostMMError.busError(address: a)) { try mm.read(at: a, count: 1) }
    }

    @Test func hugetlbFaultsAreRefused() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(.hugetlb, length: pageSize)
        #expect(throws: HostMMError.notSupported) { try mm.read(at: a, count: 1) }
    }

    @Test func sharedFileMappingSeesFileContentsAndWritesThrough() throws {
        let memory = try makeMemory()
        let file = PageCacheFile(memory: memory, pageCount: 2)
        try file.write(offset: 10, [5, 6, 7])
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.file(file, shared: true), length: 2 * pageSize)
        #expect(try mm.read(at: a + 10, count: 3) == [5, 6, 7])
        try mm.write(at: a + 11, bytes: [42])
        #expect(try file.read(offset: 10, count: 3) == [5, 42, 7])
        #expect(mm.faultCounters[.filePage] == 1)
    }

    @Test func privateFileMappingCopiesOnWrite() throws {
        let memory = try makeMemory()
        let file = PageCacheFile(memory: memory, pageCount: 1)
        try file.write(offset: 0, [1, 1, 1])
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.file(file, shared: false), length: pageSize)
        #expect(try mm.read(at: a, count: 3) == [1, 1, 1])
        try mm.write(at: a + 1, bytes: [2])
        #expect(try mm.read(at: a, count: 3) == [1, 2, 1])
        #expect(try file.read(offset: 0, count: 3) == [1, 1, 1])
        #expect(mm.faultCounters[.copyOnWrite] == 1)
    }

    @Test func readPastEndOfFileRaisesSigbus() throws {
        let memory = try makeMemory()
        let file = PageCacheFile(memory: memory, pageCount: 1)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.file(file, shared: true), length: 2 * pageSize)
        #expect(throws: HostMMError.busError(address: a + UInt64(pageSize))) {
            try mm.read(at: a + UInt64(pageSize), count: 1)
        }
    }

    @Test func munmapFreesAnonymousFrames() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let before = memory.freeRAMPageCount
        let a = try mm.mmap(length: 16 * pageSize)
        try mm.touch(a, length: 16 * pageSize, write: true)
        #expect(memory.freeRAMPageCount == before - 16)
        try mm.munmap(a, length: 16 * pageSize)
        #expect(memory.freeRAMPageCount == before)
        #expect(throws: HostMMError.segmentationFault(address: a, reason: .notMapped)) { try mm.read(at: a, count: 1) }
    }
}

@Suite struct RemapPFNRangeTests {
    @Test func pfnMapIsReadableButNeverMigratedOrRefcounted() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let frame = memory.allocPage(zeroed: true)!
        memory.bytes(frame)!.storeBytes(of: 0xC3, as: UInt8.self)
        let a = try mm.mmap(.special([.io, .pfnMap]), length: pageSize)
        try mm.remapPFNRange(a, pfn: frame, count: 1)
        #expect(try mm.read(at: a, count: 1) == [0xC3])
        #expect(memory.refcount(frame) == 1 && memory.mapcount(frame) == 0)
        #expect(throws: HostMMError.busy) { try mm.remapPFNRange(a, pfn: frame, count: 1) }
        mm.mmapLock.withReadLock {
            withBuffers(1) { src, dst in
                var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + UInt64(pageSize), src: src, dst: dst, flags: .selectSystem)
                #expect(throws: HostMMError.invalidArgument) { try migrateVMASetup(&args) }
            }
        }
        try mm.munmap(a, length: pageSize)
        #expect(memory.refcount(frame) == 1)
        let anon = try mm.mmap(length: pageSize)
        #expect(throws: HostMMError.invalidArgument) { try mm.remapPFNRange(anon, pfn: frame, count: 1) }
    }
}

@Suite struct BadInputTests {
    @Test func pageCallsWithAnOutOfRangePFNAreIgnoredAndCounted() throws {
        let memory = try makeMemory()
        let bad = PFN(memory.maxPFN + 10)
        #expect(memory.refcount(bad) == 0 && memory.flags(bad) == [] && !memory.trylockPage(bad))
        memory.lockPage(bad)
        memory.unlockPage(bad)
        memory.putPage(bad)
        #expect(memory.bytes(bad) == nil && !memory.isValid(bad))
        #expect(memory.diagnostics.invalidPFNCount >= 5)
        #expect(throws: HostMMError.invalidArgument) { try memory.zoneDevicePageInit(bad) }
        #expect(throws: HostMMError.invalidArgument) { try memory.zoneDevicePageInit(PFN(1)) }
    }

    @Test func physicalMemoryRejectsBadSizes() {
        #expect(throws: HostMMError.invalidArgument) { try PhysicalMemory(ramBytes: 4097) }
        #expect(throws: HostMMError.invalidArgument) { try PhysicalMemory(ramBytes: 4096) }
    }

    @Test func pagemapRegistrationChecksItsArguments() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 4)
        #expect(throws: HostMMError.invalidArgument) {
            try memory.registerPagemap(type: .devicePrivate, pageCount: 0, owner: device.owner, ops: device)
        }
        #expect(throws: HostMMError.invalidArgument) {
            try memory.registerPagemap(type: .deviceCoherent, pageCount: 4, owner: device.owner, ops: device)
        }
        let page = device.allocPage()!
        #expect(throws: HostMMError.busy) { try memory.zoneDevicePageInit(page) }
        #expect(throws: HostMMError.busy) { try memory.unregisterPagemap(device.pagemap) }
        memory.unlockPage(page)
        memory.putPage(page)
        try memory.unregisterPagemap(device.pagemap)
        #expect(memory.pagemap(of: page) == nil)
        #expect(throws: HostMMError.invalidArgument) { try memory.unregisterPagemap(device.pagemap) }  // twice
    }

    @Test func readUnderProtReadMapsTheZeroPageAndMprotectWriteCopiesIt() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize, protection: .read)
        #expect(try mm.read(at: a + UInt64(pageSize), count: 8) == [UInt8](repeating: 0, count: 8))
        let pte = mm.pageTableEntry(a + UInt64(pageSize))
        #expect(pte.pfn == memory.zeroPFN && pte.isSpecial && !pte.isWritable)
        #expect(mm.pageTableEntry(a).isNone)
        #expect(mm.faultCounters[.zeroPage] == 1 && mm.faultCounters[.anonymousPage] == 0)
        try mm.mprotect(a, length: 2 * pageSize, protection: .readWrite)
        try mm.write(at: a + UInt64(pageSize), bytes: [1])
        #expect(mm.faultCounters[.copyOnWrite] == 1)
        #expect(mm.pageTableEntry(a + UInt64(pageSize)).pfn != memory.zeroPFN)
    }
}

@Suite struct PinUserPagesTests {
    @Test func aReadPinOfUntouchedMemoryPinsARealPageNotTheZeroPage() throws {
        // The model's pins fault as a write wherever the VMA allows it: a read pin of a hole
        // gets the page later CPU writes land in, never the shared zero page.
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        let pins = try mm.pinUserPages(a, count: 1, write: false)
        #expect(pins[0] != memory.zeroPFN && mm.pageTableEntry(a).pfn == pins[0])
        try mm.write(at: a, bytes: [8])
        #expect(memory.bytes(pins[0])!.load(as: UInt8.self) == 8)
        memory.unpinUserPages(pins)
        #expect(memory.refcount(pins[0]) == 1)
    }

    @Test func aPinThatFailsPartWayDropsThePinsItTook() throws {
        // The model's pinUserPages is all or nothing: on a failure past the first page it
        // releases what it pinned (unpin_user_pages) before throwing, leaving no reference behind.
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        try mm.write(at: a, bytes: pattern(2, count: 2 * pageSize))
        let pages = [mm.pageTableEntry(a).pfn, mm.pageTableEntry(a + UInt64(pageSize)).pfn]
        #expect(throws: HostMMError.fault) { try mm.pinUserPages(a, count: 3, write: true) }
        #expect(pages.allSatisfy { memory.refcount($0) == 1 && !memory.maybeDMAPinned($0) })
        let free = memory.freeRAMPageCount
        try mm.munmap(a, length: 2 * pageSize)
        #expect(memory.freeRAMPageCount == free + 2)
    }

    @Test func longtermPinMovesADeviceCoherentPageToRAMFirst() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16, type: .deviceCoherent)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        try mm.write(at: a, bytes: pattern(4, count: 2 * pageSize))
        try device.migrateToDevice(mm, a, a + UInt64(2 * pageSize))
        #expect(memory.isDeviceCoherent(mm.pageTableEntry(a).pfn))
        let plain = try mm.pinUserPages(a, count: 1, write: true)
        #expect(memory.isDeviceCoherent(plain[0]))                       // a short-term pin stays
        memory.unpinUserPages(plain)
        let long = try mm.pinUserPages(a + UInt64(pageSize), count: 1, write: true, longterm: true)
        #expect(memory.isRAM(long[0]) && mm.pageTableEntry(a + UInt64(pageSize)).pfn == long[0])
        #expect(mm.pageTableEntry(a + UInt64(pageSize)).isWritable)
        #expect(device.freePageCount == 15)                              // the coherent page went back
        memory.unpinUserPages(long)
        #expect(try mm.read(at: a, count: 2 * pageSize) == pattern(4, count: 2 * pageSize))
        mm.exit()
        #expect(device.freePageCount == 16)
    }
}
