import DeviceEmu
import HostMM
import Testing

/// Behaviours of test_hmm.c's driver that hmm-tests does not check directly but that the
/// ported cases rely on (the spec's gotchas), in both kinds where they apply.
@Suite struct MirrorDeviceTests {
    @Test("migrate_to_ram moves one page and clears the migrating mirror's entry")
    func migrateToRAMIsOnePage() throws {
        let f = try HMMFixture(.devicePrivate)
        let sibling = try f.device0.open(f.mm)                         // mirror B of device 0
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        #expect(hmmDmirrorCmd(f.fd, .read, b, 4) == 0)                 // mirror A maps the RAM pages
        #expect(hmmMigrateSysToDev(sibling, b, 4) == 0)                // B migrates them
        #expect(try f.mm.ints(b.ptr + hmmPage, bytes: 4) == [Int32(pageSize / 4)])   // a CPU fault on page 1
        #expect(f.mm.faultCounters[.devicePrivate] == 1 && f.device0.inUsePageCount == 3)
        #expect(sibling.entry(at: b.ptr + hmmPage) == nil)             // the migrating mirror lost it
        #expect(sibling.entry(at: b.ptr)?.tag == .write)               // its neighbours stay
        #expect(f.fd.entry(at: b.ptr + hmmPage) != nil)                // A is never told (the kernel's stale entry)
        sibling.close()
        f.teardown()
    }

    @Test("mirrors of one device share its owner; other devices' migrations invalidate")
    func ownerIsTheDevice() throws {
        let f = try HMMFixture(.devicePrivate)
        let sibling = try f.device0.open(f.mm)                         // a second open of device 0
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        #expect(hmmDmirrorCmd(sibling, .read, b, 4) == 0 && hmmDmirrorCmd(f.fd1, .read, b, 4) == 0)
        #expect(hmmMigrateSysToDev(f.fd, b, 4) == 0)
        #expect(sibling.mappedPageCount == 4)                         // not invalidated: the same owner
        #expect(f.fd1.mappedPageCount == 0)                           // device 1's mirror was
        sibling.close()
        f.teardown()
    }

    @Test("an invalidation also drops the entry after its range", arguments: MirrorKind.allCases)
    func invalidationEndIsInclusive(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        #expect(hmmDmirrorCmd(f.fd, .read, b, 4) == 0)
        try f.mm.madvise(b.ptr + hmmPage, length: pageSize, advice: .dontNeed)
        #expect(f.fd.entry(at: b.ptr) != nil && f.fd.entry(at: b.ptr + 3 * hmmPage) != nil)
        #expect(f.fd.entry(at: b.ptr + hmmPage) == nil && f.fd.entry(at: b.ptr + 2 * hmmPage) == nil)
        #expect(hmmDmirrorCmd(f.fd, .read, b, 4) == 0 && b.faults == 1)
        f.teardown()
    }

    @Test("close evicts every page of the device, from every process", arguments: MirrorKind.allCases)
    func closeEvictsEverything(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let other = AddressSpace(memory: f.memory)
        let otherFD = try f.device0.open(other)
        let a = try HMMBuffer(f.mm, size: 4 * pageSize)
        let o = try HMMBuffer(other, size: 4 * pageSize)
        try f.mm.fillInts(a.ptr, bytes: a.size, .index)
        try other.fillInts(o.ptr, bytes: o.size, .negated)
        #expect(hmmMigrateSysToDev(f.fd, a, 4) == 0 && hmmMigrateSysToDev(otherFD, o, 4) == 0)
        #expect(f.device0.inUsePageCount == 8)
        otherFD.close()
        #expect(f.device0.inUsePageCount == 0)
        #expect(try f.mm.intsMatch(a.ptr, bytes: a.size, .index) && other.intsMatch(o.ptr, bytes: o.size, .negated))
        #expect(f.mm.faultCounters[.devicePrivate] == 0 && other.faultCounters[.devicePrivate] == 0)
        #expect(f.mm.pageTableEntry(a.ptr).isWritable)                 // the migration entry kept write permission
        other.exit()
        f.teardown()
    }

    @Test("commands after the process exits", arguments: MirrorKind.allCases)
    func afterExit(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try f.buffer(size: 2 * pageSize, filledWith: .index)
        #expect(hmmDmirrorCmd(f.fd, .read, b, 2) == 0)
        f.mm.exit()
        #expect(f.fd.mappedPageCount == 0)                            // RELEASE dropped everything
        #expect(hmmDmirrorCmd(f.fd, .read, b, 2) == negErrno(.fault))
        #expect(hmmDmirrorCmd(f.fd, .write, b, 2) == negErrno(.fault))
        #expect(hmmMigrateSysToDev(f.fd, b, 2) == negErrno(.invalidArgument))
        #expect(hmmMigrateDevToSys(f.fd, b, 2) == negErrno(.invalidArgument))
        #expect(hmmDmirrorCmd(f.fd, .snapshot, b, 2) == negErrno(.invalidArgument))
        #expect(hmmDmirrorCmd(f.fd, .exclusive, b, 2) == negErrno(.invalidArgument))
        #expect(throws: MirrorError.invalidArgument) { try f.device0.open(f.mm) }
        f.teardown()
    }

    @Test("the HMM retry loops give up with EBUSY after the range timeout")
    func rangeTimeout() throws {
        let memory = try PhysicalMemory(ramBytes: 16 << 20, maxDevicePages: 4096)
        let device = try MirrorDevice(memory: memory, configuration: .init(vramSize: 4 << 20, chunkSize: 4 << 20,
                                                                            rangeTimeout: .zero))
        let mm = AddressSpace(memory: memory)
        let fd = try device.open(mm)
        let b = try HMMBuffer(mm, size: pageSize)
        #expect(hmmDmirrorCmd(fd, .read, b, 1) == negErrno(.busy))
        #expect(hmmDmirrorCmd(fd, .snapshot, b, 1) == negErrno(.busy))
        fd.close()
    }

    @Test("a shut-down device refuses opens and has given its pages back")
    func shutdown() throws {
        let f = try HMMFixture(.devicePrivate)
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        #expect(hmmMigrateSysToDev(f.fd1, b, 4) == 0)
        f.device1.shutdown()
        #expect(f.device1.inUsePageCount == 0)
        #expect(throws: MirrorError.invalidArgument) { try f.device1.open(f.mm) }
        #expect(try f.mm.intsMatch(b.ptr, bytes: b.size, .index))
        #expect(hmmMigrateSysToDev(f.fd1, b, 4) == negErrno(.noEntry))   // nothing to allocate from
        f.teardown()
    }

    @Test("bad device configurations are refused")
    func badConfiguration() throws {
        let memory = try PhysicalMemory(ramBytes: 16 << 20, maxDevicePages: 4096)
        #expect(throws: MirrorError.invalidArgument) {
            try MirrorDevice(memory: memory, configuration: .init(vramSize: 6 << 20, chunkSize: 4 << 20))
        }
        #expect(throws: MirrorError.invalidArgument) {
            try MirrorDevice(memory: memory, configuration: .init(vramSize: 0, chunkSize: 4 << 20))
        }
    }

    /// Bounded: 3 threads × 40 rounds over 64 pages, then every byte is checked.
    @Test("concurrent migrations, CPU faults and device reads keep the data", arguments: MirrorKind.allCases)
    func concurrentTraffic(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = 64
        let b = try f.buffer(size: npages * pageSize, filledWith: .index)
        let rounds = 40
        let (mm, fd0, fd1, ptr, size) = (f.mm, f.fd0, f.fd1, b.ptr, b.size)
        let migrator = MirrorTestThread {
            for _ in 0..<rounds {
                _ = try? fd0.migrateToDevice(ptr, npages: npages)
                _ = try? fd0.migrateToSystem(ptr, npages: npages)
            }
        }
        let cpu = MirrorTestThread {
            for _ in 0..<rounds { _ = try? mm.ints(ptr, bytes: size) }
        }
        let reader = HMMBuffer(mm, at: ptr, size: size)
        var readsOK = true
        for _ in 0..<rounds {
            if hmmDmirrorCmd(fd1, .read, reader, npages) == 0 { readsOK = readsOK && reader.mirrorMatches(.index) }
        }
        migrator.join()
        cpu.join()
        #expect(readsOK)
        #expect(try f.mm.intsMatch(b.ptr, bytes: b.size, .index))
        f.teardown()
    }

    @Test("a mirror dropped without close is closed", arguments: MirrorKind.allCases)
    func droppedMirrorCloses(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        weak var dropped: Mirror?
        do {
            let fd = try f.device1.open(f.mm)
            dropped = fd
            #expect(hmmMigrateSysToDev(fd, b, 4) == 0)
            #expect(f.device1.inUsePageCount == 4)
        }
        #expect(dropped == nil)
        #expect(f.device1.inUsePageCount == 0)                        // its close evicted
        try f.mm.munmap(b.ptr, length: b.size)                        // no invalidation reaches it
        f.teardown()
    }
}
