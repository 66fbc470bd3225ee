import DeviceEmu
import HostMM
import Testing

/// The gotchas of docs/dmirror-spec.md §5 that the ported hmm-tests cases do not pin on
/// their own, one test each, named after the gotcha.
@Suite struct MirrorGotchaTests {
    /// G3: a failing command copies nothing out: the user buffer keeps its contents.
    @Test("G3: a failing migrate or exclusive leaves the user buffer alone", arguments: MirrorKind.allCases)
    func failureCopiesNothing(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let shared = try HMMBuffer(f.mm, size: 2 * pageSize, kind: .anonymousShared)
        try f.mm.fillInts(shared.ptr, bytes: shared.size, .index)
        shared.fillMirror(.negated)
        #expect(hmmMigrateSysToDev(f.fd, shared, 2) == negErrno(.noEntry))
        #expect(shared.mirrorMatches(.negated))
        let a = try f.mm.mmap(length: 2 * pageSize)
        try f.mm.fillInts(a, bytes: 2 * pageSize, .index)
        try f.mm.mprotect(a + hmmPage, length: pageSize, protection: .read)
        let mixed = HMMBuffer(f.mm, at: a, size: 2 * pageSize)
        mixed.fillMirror(.negated)
        #expect(hmmDmirrorCmd(f.fd, .exclusive, mixed, 2) == negErrno(.fault))
        #expect(mixed.mirrorMatches(.negated))
        f.teardown()
    }

    /// G4: FLAGS assigns `npages` to the flags of this open only; it does not OR.
    @Test("G4: FLAGS assigns, per open", arguments: MirrorKind.allCases)
    func flagsAssign(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try f.buffer(size: pageSize, filledWith: .index)
        #expect(hmmDmirrorCmd(f.fd, .flags, b, 1) == 0 && b.cpages == 0 && b.faults == 0)
        #expect(hmmDmirrorCmd(f.fd, .flags, b, 2) == 0)
        #expect(f.fd.flags.rawValue == 2)                                // FAIL_ALLOC replaced
        #expect(f.fd1.flags.isEmpty)
        #expect(hmmMigrateSysToDev(f.fd, b, 1) == 0 && b.cpages == 1)   // nothing armed
        f.teardown()
    }

    /// G5, G6: `make_device_exclusive` fires an ownerless EXCLUSIVE invalidation that every
    /// mirror obeys — the device's own included — and it reaches one page past the range.
    @Test("G5/G6: the device's own exclusive access invalidates, one page past", arguments: MirrorKind.allCases)
    func exclusiveInvalidates(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        #expect(hmmDmirrorCmd(f.fd0, .read, b, 4) == 0 && hmmDmirrorCmd(f.fd1, .read, b, 4) == 0)
        let one = HMMBuffer(f.mm, at: b.ptr, size: pageSize)
        #expect(hmmDmirrorCmd(f.fd0, .exclusive, one, 1) == 0 && one.cpages == 1)
        #expect(f.fd0.entry(at: b.ptr)?.tag == .atomic)
        #expect(f.fd0.entry(at: b.ptr + hmmPage) == nil)
        #expect(f.fd0.entry(at: b.ptr + 2 * hmmPage)?.tag == .write)
        #expect(f.fd1.entry(at: b.ptr) == nil && f.fd1.entry(at: b.ptr + hmmPage) == nil)
        #expect(f.fd1.entry(at: b.ptr + 2 * hmmPage) != nil)
        f.teardown()
    }

    /// G8: PROT_NONE gives each command its own answer.
    @Test("G8: PROT_NONE and holes, command by command", arguments: MirrorKind.allCases)
    func protNonePerCommand(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try HMMBuffer(f.mm, size: 4 * pageSize, protection: .none)
        b.fillMirror(.negated)
        #expect(hmmDmirrorCmd(f.fd, .read, b, 4) == negErrno(.fault))
        #expect(hmmDmirrorCmd(f.fd, .write, b, 4) == negErrno(.fault))
        #expect(hmmMigrateSysToDev(f.fd, b, 4) == negErrno(.invalidArgument))
        #expect(hmmMigrateDevToSys(f.fd, b, 4) == negErrno(.invalidArgument))
        #expect(hmmDmirrorCmd(f.fd, .exclusive, b, 4) == negErrno(.fault))
        #expect(hmmDmirrorCmd(f.fd, .checkExclusive, b, 4) == 0)
        #expect(b.mirrorMatches(.negated))
        #expect(hmmDmirrorCmd(f.fd, .snapshot, b, 4) == 0 && b.cpages == 4 && b.faults == 0)
        #expect(Array(b.mirror[0..<4]) == [UInt8](repeating: MirrorProtection.error.rawValue, count: 4))
        try b.free()                                                        // now a hole
        #expect(hmmDmirrorCmd(f.fd, .write, b, 4) == negErrno(.fault))
        #expect(hmmMigrateDevToSys(f.fd, b, 4) == negErrno(.invalidArgument))
        f.teardown()
    }

    /// G10: migrations walk VMA by VMA in batches of 512; a hole is EINVAL when reached,
    /// and the batches before it stay migrated (and mirrored).
    @Test("G10: the batches before a hole stay migrated", arguments: MirrorKind.allCases)
    func migrateStopsAtHole(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = 600
        let b = try HMMBuffer(f.mm, size: (npages + 1) * pageSize)
        try f.mm.fillInts(b.ptr, bytes: npages * pageSize, .index)
        try f.mm.munmap(b.ptr + UInt64(npages) * hmmPage, length: pageSize)
        #expect(hmmMigrateSysToDev(f.fd, b, npages + 1) == negErrno(.invalidArgument))
        #expect(f.device0.inUsePageCount == npages)                     // 512 + 88, not rolled back
        #expect(f.fd.mappedPageCount == npages)
        let local: MirrorProtection = kind.isCoherent ? .deviceCoherentLocal : .devicePrivateLocal
        #expect(try f.fd.snapshot(b.ptr, npages: npages).allSatisfy { $0 == local | .write })
        #expect(try f.mm.intsMatch(b.ptr, bytes: npages * pageSize, .index))
        f.teardown()
    }

    /// G11: pinned pages are restored, not migrated (then ENOENT through the read-back);
    /// the zero page moves as a cleared page, writable in a writable VMA; pte_none of a
    /// shared file mapping is skipped.
    @Test("G11: what migrate-to-device skips", arguments: MirrorKind.allCases)
    func migrateSkips(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        let pinned = try f.mm.pinUserPages(b.ptr + hmmPage, count: 1, write: true)
        #expect(hmmMigrateSysToDev(f.fd, b, 4) == negErrno(.noEntry))
        #expect(f.device0.inUsePageCount == 3)
        #expect(f.mm.pageTableEntry(b.ptr + hmmPage).kind == .present)
        f.memory.unpinUserPages(pinned)
        #expect(hmmMigrateSysToDev(f.fd, b, 4) == 0 && b.cpages == 4 && b.mirrorMatches(.index))

        let z = try HMMBuffer(f.mm, size: pageSize)
        #expect(try f.mm.ints(z.ptr, bytes: 4) == [0])                 // the zero page
        #expect(hmmMigrateSysToDev(f.fd, z, 1) == 0 && z.cpages == 1)
        #expect(f.fd.entry(at: z.ptr)?.tag == .write)

        let file = PageCacheFile(memory: f.memory, pageCount: 2)
        let fb = try HMMBuffer(f.mm, size: 2 * pageSize, kind: .file(file, shared: true))
        #expect(hmmMigrateSysToDev(f.fd, fb, 2) == negErrno(.noEntry))
        #expect(f.device0.inUsePageCount == 5)
        f.teardown()
    }

    /// G12: HMM reports this device's pages as they are; a second mirror of the device maps
    /// them without a CPU fault and reads their data.
    @Test("G12: a mirror reads its device's pages in place", arguments: MirrorKind.allCases)
    func readsOwnDevicePages(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let sibling = try f.device0.open(f.mm)
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        #expect(hmmMigrateSysToDev(f.fd, b, 4) == 0)
        b.fillMirror(.zero)
        #expect(hmmDmirrorCmd(sibling, .read, b, 4) == 0)
        #expect(b.cpages == 4 && b.faults == 1 && b.mirrorMatches(.index))
        #expect(f.mm.faultCounters[.devicePrivate] == 0 && f.device0.inUsePageCount == 4)
        #expect(sibling.entry(at: b.ptr)?.page == f.fd.entry(at: b.ptr)?.page)
        sibling.close()
        f.teardown()
    }

    /// G13: a device WRITE over another device's pages: private ones are faulted back to
    /// RAM first, coherent ones are written in place.
    @Test("G13: device write over another device's pages", arguments: MirrorKind.allCases)
    func writeRemotePages(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        #expect(hmmMigrateSysToDev(f.fd1, b, 4) == 0)
        b.fillMirror(.negated)
        #expect(hmmDmirrorCmd(f.fd0, .write, b, 4) == 0)
        #expect(b.cpages == 4 && b.faults == 1)
        #expect(f.device1.inUsePageCount == (kind.isCoherent ? 4 : 0))
        #expect(f.mm.faultCounters[.devicePrivate] == (kind.isCoherent ? 0 : 4))
        #expect(try f.mm.intsMatch(b.ptr, bytes: b.size, .negated))
        f.teardown()
    }

    /// G14: READ uses atomic entries as they are; exclusivity stays.
    @Test("G14: the device reads through atomic entries", arguments: MirrorKind.allCases)
    func readKeepsExclusive(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        #expect(hmmDmirrorCmd(f.fd, .exclusive, b, 4) == 0)
        b.fillMirror(.zero)
        #expect(hmmDmirrorCmd(f.fd, .read, b, 4) == 0)
        #expect(b.cpages == 4 && b.faults == 0 && b.mirrorMatches(.index))
        #expect(hmmDmirrorCmd(f.fd, .checkExclusive, b, 4) == negErrno(.permissionDenied))
        #expect(f.mm.pageTableEntry(b.ptr).kind == .deviceExclusive)
        f.teardown()
    }

    /// G18: migrate_to_ram of a page shared after fork unmaps it from both processes; the
    /// other pages stay on the device.
    @Test("G18: migrate_to_ram unmaps the page from every process")
    func migrateToRAMUnmapsAll() throws {
        let f = try HMMFixture(.devicePrivate)
        let b = try f.buffer(size: 2 * pageSize, filledWith: .index)
        #expect(hmmMigrateSysToDev(f.fd, b, 2) == 0)
        let child = try f.mm.fork()
        #expect(try child.ints(b.ptr, bytes: 4) == [0])
        #expect(child.faultCounters[.devicePrivate] == 1 && f.device0.inUsePageCount == 1)
        let parentPTE = f.mm.pageTableEntry(b.ptr)
        #expect(parentPTE.kind == .present && !parentPTE.isWritable)   // fork made it read-only
        #expect(parentPTE.pfn == child.pageTableEntry(b.ptr).pfn)
        #expect(f.mm.pageTableEntry(b.ptr + hmmPage).kind == .devicePrivate)
        #expect(try f.mm.intsMatch(b.ptr, bytes: pageSize, .index))
        #expect(f.mm.faultCounters[.devicePrivate] == 0)
        child.exit()
        f.teardown()
    }

    /// G19: the free list is LIFO: a freed page is the next one handed out.
    @Test("G19: a freed device page is reused first", arguments: MirrorKind.allCases)
    func freeListIsLIFO(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let a = try f.buffer(size: 2 * pageSize, filledWith: .index)
        #expect(hmmMigrateSysToDev(f.fd, a, 2) == 0)
        let freed = try #require(f.fd.entry(at: a.ptr + hmmPage)?.page)
        try f.mm.munmap(a.ptr + hmmPage, length: pageSize)
        let b = try f.buffer(size: pageSize, filledWith: .index)
        #expect(hmmMigrateSysToDev(f.fd, b, 1) == 0)
        #expect(f.fd.entry(at: b.ptr)?.page == freed)
        f.teardown()
    }

    /// G20: a descriptor inherited over fork still mirrors the parent's address space.
    @Test("G20: an inherited mirror stays on the parent", arguments: MirrorKind.allCases)
    func inheritedMirrorIsParents(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try f.buffer(size: pageSize, filledWith: .index)
        let child = try f.mm.fork()
        try child.fillInts(b.ptr, bytes: pageSize, .negated)
        #expect(hmmDmirrorCmd(f.fd, .read, b, 1) == 0 && b.mirrorMatches(.index))
        let childFD = try f.device0.open(child)
        #expect(hmmDmirrorCmd(childFD, .read, b, 1) == 0 && b.mirrorMatches(.negated))
        childFD.close()
        child.exit()
        f.teardown()
    }

    /// G21: migrate and exclusive copy out after the work: a short user buffer is EFAULT,
    /// and the pages are on the device (or exclusive) all the same.
    @Test("G21: the work is done before the copy-out fails", arguments: MirrorKind.allCases)
    func copyOutAfterWork(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let short = UnsafeMutableRawBufferPointer.allocate(byteCount: pageSize, alignment: 16)
        defer { short.deallocate() }
        let a = try f.buffer(size: 2 * pageSize, filledWith: .index)
        #expect(throws: MirrorError.fault) { try f.fd.migrateToDevice(a.ptr, npages: 2, into: short) }
        #expect(f.device0.inUsePageCount == 2 && f.fd.mappedPageCount == 2)
        let e = try f.buffer(size: 2 * pageSize, filledWith: .index)
        #expect(throws: MirrorError.fault) { try f.fd.makeExclusive(e.ptr, npages: 2, into: short) }
        #expect(f.mm.pageTableEntry(e.ptr + hmmPage).kind == .deviceExclusive)
        #expect(hmmDmirrorCmd(f.fd, .checkExclusive, e, 2) == negErrno(.permissionDenied))
        f.teardown()
    }

    /// G23: a read fault of untouched anonymous memory mirrors the shared zero page; the
    /// CPU's first write replaces it and invalidates the mirror.
    @Test("G23: the zero page is mirrored until the CPU writes", arguments: MirrorKind.allCases)
    func zeroPageMirrored(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try HMMBuffer(f.mm, size: 2 * pageSize)
        #expect(hmmDmirrorCmd(f.fd, .read, b, 2) == 0 && b.faults == 1 && b.mirrorMatches(.zero))
        #expect(f.fd.entry(at: b.ptr)?.page == f.memory.zeroPFN)
        #expect(f.fd.entry(at: b.ptr)?.tag == .readOnly)
        try f.mm.fillInts(b.ptr, bytes: pageSize, .index)
        #expect(f.fd.entry(at: b.ptr) == nil)
        #expect(hmmDmirrorCmd(f.fd, .read, b, 2) == 0 && b.faults == 1)
        #expect(b.mirrorMatches(.index, bytes: pageSize) && b.mirrorMatches(.zero, offset: pageSize))
        f.teardown()
    }
}
