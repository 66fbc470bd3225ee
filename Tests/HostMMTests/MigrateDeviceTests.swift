import Glibc
import Testing
@testable import HostMM

@Suite struct MigrateDeviceTests {
    @Test func evictionByPFNBringsEveryPageBackWithoutCPUFaults() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 64)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 40 * pageSize)
        let data = pattern(11, count: 40 * pageSize)
        try mm.write(at: a, bytes: data)
        #expect(try device.migrateToDevice(mm, a, a + UInt64(40 * pageSize)) == 40)
        #expect(try device.evictAll() == 40)
        #expect(device.freePageCount == 64 && device.freed.load(ordering: .relaxed) == 40)
        for i in 0..<40 { #expect(mm.pageTableEntry(a + UInt64(i * pageSize)).kind == .present) }
        #expect(try mm.read(at: a, count: data.count) == data)
        #expect(device.cpuFaults.load(ordering: .relaxed) == 0)
    }

    @Test func evictionFindsMappingsInEveryForkedAddressSpace() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let parent = AddressSpace(memory: memory)
        let a = try parent.mmap(length: pageSize)
        try parent.write(at: a, bytes: [0x5A])
        try device.migrateToDevice(parent, a, a + UInt64(pageSize))
        let child = try parent.fork()
        #expect(try device.evictAll() == 1)
        let pfn = parent.pageTableEntry(a).pfn
        #expect(child.pageTableEntry(a).pfn == pfn && memory.mapcount(pfn) == 2 && memory.refcount(pfn) == 2)
        #expect(try child.read(at: a, count: 1) == [0x5A])
        #expect(device.freePageCount == 16)
    }

    @Test func evictionSkipsFreeAndLockedPages() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 4)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        try mm.touch(a, length: 2 * pageSize, write: true)
        try device.migrateToDevice(mm, a, a + UInt64(2 * pageSize))
        let locked = mm.pageTableEntry(a).pfn
        memory.lockPage(locked)
        try withBuffers(4) { src, dst in
            try memory.migrateDeviceRange(src, start: device.pagemap.firstPFN, npages: 4)
            let collected = (0..<4).compactMap { src[$0].contains(.migrate) ? src[$0].page : nil }
            #expect(collected == [mm.pageTableEntry(a + UInt64(pageSize)).pfn])
            #expect(mm.pageTableEntry(a + UInt64(pageSize)).kind == .migration)
            memory.migrateDeviceFinalize(src: src, dst: dst, npages: 4)   // no destinations: restore
        }
        memory.unlockPage(locked)
        #expect(mm.pageTableEntry(a + UInt64(pageSize)).kind == .devicePrivate)
        #expect(memory.diagnostics.unlocksOfUnlockedPages == 0)
    }

    /// Eviction whose pages step threw (or was skipped) and whose driver finalized anyway,
    /// MIGRATE still set: the kernel would map the RAM destinations, which never received
    /// the device pages' state. Here every device page stays mapped with its data, and
    /// every RAM destination is freed.
    @Test(arguments: [true, false])
    func finalizeWithoutASuccessfulPagesStepKeepsTheDevicePages(pagesRefused: Bool) throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 4)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        let data = pattern(12, count: 2 * pageSize)
        try mm.write(at: a, bytes: data)
        try device.migrateToDevice(mm, a, a + UInt64(2 * pageSize))
        let freeRAM = memory.freeRAMPageCount
        try withBuffers(4) { src, dst in
            try memory.migrateDeviceRange(src, start: device.pagemap.firstPFN, npages: 4)
            for i in 0..<4 where src[i].contains(.migrate) {
                let ram = try #require(memory.allocPage())
                memory.lockPage(ram)
                memcpy(memory.bytes(ram)!, device.bytes(src[i].page!), pageSize)
                dst[i] = MigratePFN(pfn: ram)
            }
            if pagesRefused {
                memory.unlockPage(dst[1].page!)                                  // the driver's bug
                #expect(throws: HostMMError.invalidArgument) { try memory.migrateDevicePages(src: src, dst: dst, npages: 4) }
            }
            memory.migrateDeviceFinalize(src: src, dst: dst, npages: 4)
            #expect((0..<4).allSatisfy { !src[$0].contains(.migrate) })
        }
        try #require(mm.pageTableEntry(a).kind == .devicePrivate && mm.pageTableEntry(a + UInt64(pageSize)).kind == .devicePrivate)
        #expect(memory.freeRAMPageCount == freeRAM)
        #expect(try mm.read(at: a, count: data.count) == data)                  // through migrateToRAM
        #expect(device.cpuFaults.load(ordering: .relaxed) == 2)
        #expect(memory.diagnostics.refcountUnderflowCount == 0)
    }

    @Test func deviceRangeRejectsUnknownPFNs() throws {
        let memory = try makeMemory()
        withBuffers(4) { src, dst in
            #expect(throws: HostMMError.invalidArgument) {
                try memory.migrateDeviceRange(src, start: PFN(memory.maxPFN - 1), npages: 4)
            }
            #expect(throws: HostMMError.invalidArgument) { try memory.migrateDeviceRange(src, start: PFN(1), npages: 0) }
            dst[0] = MigratePFN(pfn: PFN(memory.maxPFN + 5))
            #expect(throws: HostMMError.invalidArgument) { try memory.migrateDevicePages(src: src, dst: dst, npages: 1) }
        }
    }

    @Test func failedMigrateToRAMRaisesSigbus() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 4)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try device.migrateToDevice(mm, a, a + UInt64(pageSize))
        device.failMigrateToRAM.store(true, ordering: .relaxed)
        #expect(throws: HostMMError.busError(address: a)) { try mm.read(at: a, count: 1) }
        #expect(mm.faultCounters[.sigbus] == 1)
        #expect(mm.pageTableEntry(a).kind == .devicePrivate)
    }

    @Test func deviceExclusiveEntryIsRestoredByTheNextCPUAccess() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 4)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: [3])
        let mirror = RecordingMirror()
        _ = try mm.notifiers.insert(start: a, length: UInt64(pageSize), ops: mirror)
        let page = try mm.mmapLock.withReadLock { () throws(HostMMError) in try mm.makeDeviceExclusive(a, owner: device.owner) }
        memory.unlockPage(page)
        memory.putPage(page)
        #expect(mm.pageTableEntry(a).kind == .deviceExclusive)
        #expect(mirror.events.withLockedValue { $0.last!.0 == .exclusive && $0.last!.1 == device.owner })
        #expect(try mm.read(at: a, count: 1) == [3])
        #expect(mm.pageTableEntry(a).kind == .present && mm.pageTableEntry(a).pfn == page)
        // restore_exclusive_pte: a writable entry comes back writable and dirty, even for a read.
        #expect(mm.pageTableEntry(a).isWritable && mm.pageTableEntry(a).isDirty)
        #expect(mm.faultCounters[.deviceExclusive] == 1)
    }
}

extension MigrateDeviceTests {
    /// `migrate_device_range`: a page it cannot trylock gets `src[i] = 0`, and the
    /// reference it took for it (`folio_get_nontail_page`) is dropped again (`folio_put`).
    /// The page keeps exactly its references, so once its holder unlocks it nothing looks
    /// pinned and a later eviction moves it.
    @Test func aPageLockedElsewhereKeepsItsReferenceCount() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 2)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: [0x3C])
        #expect(try device.migrateToDevice(mm, a, a + UInt64(pageSize)) == 1)
        let page = mm.pageTableEntry(a).pfn
        let before = memory.refcount(page)
        #expect(before == 1)
        memory.lockPage(page)
        try withBuffers(2) { src, dst in
            try memory.migrateDeviceRange(src, start: device.pagemap.firstPFN, npages: 2)
            #expect(src[0] == [] && src[1] == [])   // one locked elsewhere, one free
            #expect(memory.refcount(page) == before)
            memory.migrateDeviceFinalize(src: src, dst: dst, npages: 2)
        }
        memory.unlockPage(page)
        #expect(memory.refcount(page) == before)
        #expect(try device.evictAll() == 1)
        #expect(device.freePageCount == 2)
        #expect(try mm.read(at: a, count: 1) == [0x3C])
    }
}
