import DeviceEmu
import HostMM
import Testing

/// hmm-tests.c: migration to and from device memory (`HMM_DMIRROR_MIGRATE_TO_DEV` /
/// `_TO_SYS`, `RELEASE`), CPU faults back, and copy-on-write of device pages.
@Suite struct MirrorMigrateTests {
    /// A migrated buffer of `npages` pages holding `ptr[i] = i`.
    private func migrated(_ f: HMMFixture, npages: Int) throws -> HMMBuffer {
        let b = try f.buffer(size: npages * pageSize, filledWith: .index)
        #expect(hmmMigrateSysToDev(f.fd, b, npages) == 0)
        #expect(b.cpages == npages)
        #expect(b.mirrorMatches(.index))
        return b
    }

    @Test("migrate", arguments: MirrorKind.allCases)
    func migrate(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try migrated(f, npages: hmmBufferPages)
        #expect(f.device0.inUsePageCount == hmmBufferPages)
        let snap = try f.fd.snapshot(b.ptr, npages: hmmBufferPages)
        let local: MirrorProtection = kind.isCoherent ? .deviceCoherentLocal : .devicePrivateLocal
        #expect(snap.allSatisfy { $0 == local | .write })
        try b.free()
        #expect(f.device0.inUsePageCount == 0)                         // munmap freed the device pages
        f.teardown()
    }

    @Test("migrate_file_private", arguments: MirrorKind.allCases)
    func migrateFilePrivate(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        let file = PageCacheFile(memory: f.memory, pageCount: npages)
        let b = try HMMBuffer(f.mm, size: size, kind: .file(file, shared: false))
        try f.mm.fillInts(b.ptr, bytes: size, .index)                    // COW: anonymous pages in a file VMA
        #expect(hmmMigrateSysToDev(f.fd, b, npages) == 0)
        #expect(b.cpages == npages)
        #expect(b.mirrorMatches(.index))
        try b.free()                                                        // zaps device entries in a file VMA
        #expect(f.device0.inUsePageCount == 0)
        #expect(try file.read(offset: 0, count: 8) == [UInt8](repeating: 0, count: 8))   // the file never changed
        f.teardown()
    }

    @Test("migrate_fault", arguments: MirrorKind.allCases)
    func migrateFault(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        let b = try migrated(f, npages: npages)
        // Fault half the pages back: one migrateToRAM per private page, none for coherent.
        #expect(try f.mm.intsMatch(b.ptr, bytes: size / 2, .index))
        #expect(f.mm.faultCounters[.devicePrivate] == (kind.isCoherent ? 0 : npages / 2))
        #expect(hmmMigrateSysToDev(f.fd, b, npages) == 0)
        #expect(b.cpages == npages)
        #expect(b.mirrorMatches(.index))
        f.teardown()
    }

    @Test("migrate_release", arguments: MirrorKind.allCases)
    func migrateRelease(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        let b = try migrated(f, npages: npages)
        #expect(hmmDmirrorCmd(f.fd, .release, b, npages) == 0)
        #expect(b.cpages == 0 && b.faults == 0)
        #expect(f.device0.inUsePageCount == 0 && f.fd.mappedPageCount == 0)
        #expect(try f.mm.intsMatch(b.ptr, bytes: size / 2, .index))
        #expect(f.mm.faultCounters[.devicePrivate] == 0)                // evicted, not faulted
        // The device keeps working after a release.
        #expect(hmmMigrateSysToDev(f.fd, b, npages) == 0 && b.cpages == npages)
        f.teardown()
    }

    @Test("migrate_shared", arguments: MirrorKind.allCases)
    func migrateShared(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try HMMBuffer(f.mm, size: hmmBufferPages * pageSize, kind: .anonymousShared)
        #expect(hmmMigrateSysToDev(f.fd, b, hmmBufferPages) == negErrno(.noEntry))
        try f.mm.fillInts(b.ptr, bytes: pageSize, .index)                // shmem pages are refused too
        #expect(hmmMigrateSysToDev(f.fd, b, 1) == negErrno(.noEntry))
        #expect(f.device0.inUsePageCount == 0)
        f.teardown()
    }

    @Test("migrate_mixed", arguments: MirrorKind.allCases)
    func migrateMixed(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try HMMBuffer(f.mm, size: 6 * pageSize, protection: .none)
        let p = b.ptr
        #expect(hmmMigrateSysToDev(f.fd1, b, 6) == negErrno(.invalidArgument))   // PROT_NONE
        try f.mm.munmap(p + hmmPage, length: pageSize)
        #expect(hmmMigrateSysToDev(f.fd1, b, 3) == negErrno(.invalidArgument))   // hole
        try f.mm.mprotect(p + 2 * hmmPage, length: pageSize, protection: .read)
        #expect(try f.mm.ints(p + 2 * hmmPage, bytes: 4)[0] + 3 == 3)             // zero page
        try f.mm.mprotect(p + 3 * hmmPage, length: pageSize, protection: .readWrite)
        try f.mm.fillInts(p + 3 * hmmPage, bytes: 4, IntPattern(scale: 0, offset: 3))
        try f.mm.mprotect(p + 3 * hmmPage, length: pageSize, protection: .read)
        try f.mm.mprotect(p + 4 * hmmPage, length: 2 * pageSize, protection: .readWrite)
        try f.mm.fillInts(p + 4 * hmmPage, bytes: 4, IntPattern(scale: 0, offset: 3))
        try f.mm.fillInts(p + 5 * hmmPage, bytes: 4, IntPattern(scale: 0, offset: 3))
        b.ptr = p + 2 * hmmPage
        #expect(hmmMigrateSysToDev(f.fd1, b, 4) == 0)
        #expect(b.cpages == 4)
        #expect(f.fd1.entry(at: p + 2 * hmmPage)?.tag == .readOnly)          // no VM_WRITE: read-only
        #expect(f.fd1.entry(at: p + 3 * hmmPage)?.tag == .readOnly)
        #expect(f.fd1.entry(at: p + 4 * hmmPage)?.tag == .write)
        b.ptr = p + 5 * hmmPage
        #expect(hmmMigrateSysToDev(f.fd0, b, 1) == negErrno(.noEntry))       // it is on device 1
        #expect(try f.mm.ints(p + 3 * hmmPage, bytes: 4) == [3])
        f.teardown()
    }

    @Test("migrate_multiple", arguments: MirrorKind.allCases)
    func migrateMultiple(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        for _ in 0..<hmmNTimes {
            let b = try migrated(f, npages: npages)
            if kind.isCoherent {
                #expect(hmmMigrateDevToSys(f.fd, b, npages) == 0)
                #expect(b.cpages == npages)
            }
            #expect(try f.mm.intsMatch(b.ptr, bytes: size, .index))
            try b.free()
        }
        #expect(f.mm.faultCounters[.devicePrivate] == (kind.isCoherent ? 0 : hmmNTimes * npages))
        f.teardown()
    }

    /// The `use_thp = 0` half (MADV_NOHUGEPAGE), for each unmap offset.
    @Test("migrate_partial_unmap_fault", arguments: MirrorKind.allCases)
    func migratePartialUnmapFault(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let size = hmmPMDSize, npages = size / pageSize, unmapSize = size / 2
        for offset in [0, size / 4, size / 2] {
            let whole = try HMMBuffer(f.mm, size: 2 * size, mirrorSize: size)
            let map = hmmAlign(whole.ptr, size)
            try f.mm.madvise(map, length: size, advice: .noHugePage)
            let b = HMMBuffer(f.mm, at: map, size: size)
            try f.mm.fillInts(map, bytes: size, .index)
            #expect(hmmMigrateSysToDev(f.fd, b, npages) == 0)
            #expect(b.cpages == npages && b.mirrorMatches(.index))
            try f.mm.munmap(map + UInt64(offset), length: unmapSize)
            #expect(f.device0.inUsePageCount == npages - unmapSize / pageSize)
            if offset > 0 { #expect(try f.mm.intsMatch(map, bytes: offset, .index)) }
            let tail = offset + unmapSize
            if tail < size {
                #expect(try f.mm.intsMatch(map + UInt64(tail), bytes: size - tail, .index, firstIndex: tail / 4))
            }
            try whole.free()
        }
        f.teardown()
    }

    /// The `use_thp = 0` half: mremap(MAYMOVE | FIXED [| DONTUNMAP]) of a migrated (or
    /// about to be migrated) range, for each destination offset.
    @Test("migrate_remap_fault", arguments: MirrorKind.allCases)
    func migrateRemapFault(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let size = hmmPMDSize, npages = size / pageSize
        for before in [false, true] {
            for dontUnmap in [false, true] {
                for offset in [0, size / 4, size / 2] {
                    let flags: MremapFlags = dontUnmap ? [.mayMove, .fixed, .dontUnmap] : [.mayMove, .fixed]
                    let whole = try HMMBuffer(f.mm, size: 8 * size, mirrorSize: size)
                    let map = hmmAlign(whole.ptr, size)
                    try f.mm.madvise(map, length: size, advice: .noHugePage)
                    try f.mm.munmap(map + UInt64(size), length: 2 * size)
                    let b = HMMBuffer(f.mm, at: map, size: size)
                    b.fillMirror(IntPattern(scale: 0, offset: -1))
                    try f.mm.fillInts(map, bytes: size, .index)
                    let target = map + UInt64(size + offset)
                    if before {
                        b.ptr = try f.mm.mremap(map, oldLength: size, newLength: size, flags: flags, newAddress: target)
                        #expect(b.ptr == target)
                    }
                    #expect(hmmMigrateSysToDev(f.fd, b, npages) == 0)
                    #expect(b.cpages == npages && b.mirrorMatches(.index))
                    if !before {
                        b.ptr = try f.mm.mremap(map, oldLength: size, newLength: size, flags: flags, newAddress: target)
                        #expect(b.ptr == target)
                    }
                    #expect(try f.mm.intsMatch(b.ptr, bytes: size, .index))
                    try f.mm.munmap(b.ptr, length: size)
                    try whole.free()
                }
            }
        }
        #expect(f.device0.inUsePageCount == 0)
        f.teardown()
    }

    /// Not in hmm-tests (its FAIL_ALLOC cases need huge pages): the one-shot allocation
    /// failure on small pages, in each path that allocates.
    @Test("FLAGS FAIL_ALLOC on small pages", arguments: MirrorKind.allCases)
    func flagsFailAlloc(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        #expect(hmmDmirrorCmd(f.fd, .flags, b, 0) == negErrno(.invalidArgument))    // cannot clear
        #expect(hmmDmirrorCmd(f.fd, .flags, b, Int(MirrorFlags.failAllocation.rawValue)) == 0)
        #expect(f.fd.flags == .failAllocation)
        // To the device: the first page is not allocated, so it cannot be read back.
        #expect(hmmMigrateSysToDev(f.fd, b, 4) == negErrno(.noEntry))
        #expect(f.fd.flags.isEmpty)                                                     // one-shot
        #expect(f.device0.inUsePageCount == 3)
        #expect(hmmMigrateSysToDev(f.fd, b, 4) == 0 && b.cpages == 4)
        // Back to system memory: ENOMEM, and the batch stays on the device.
        try f.fd.setFlags(.failAllocation)
        #expect(hmmMigrateDevToSys(f.fd, b, 4) == negErrno(.outOfMemory))
        #expect(f.device0.inUsePageCount == 4)
        #expect(hmmMigrateDevToSys(f.fd, b, 4) == 0 && b.cpages == 4)
        #expect(f.device0.inUsePageCount == 0)
        if !kind.isCoherent {
            // A CPU fault on a private page: VM_FAULT_OOM, then the retry succeeds.
            #expect(hmmMigrateSysToDev(f.fd, b, 4) == 0)
            try f.fd.setFlags(.failAllocation)
            #expect(throws: HostMMError.outOfMemory) { try f.mm.ints(b.ptr, bytes: 4) }
            #expect(try f.mm.intsMatch(b.ptr, bytes: b.size, .index))
        }
        f.teardown()
    }

    /// System memory runs out in the middle of a MIGRATE_TO_SYS batch: ENOMEM, and the
    /// whole batch stays on the device and in the mirror, so a later MIGRATE_TO_DEV reads
    /// it back (its pages are skipped as device pages; only the mirror has them).
    @Test("MIGRATE_TO_SYS out of memory mid-batch", arguments: MirrorKind.allCases)
    func migrateToSystemOutOfMemory(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        #expect(hmmMigrateSysToDev(f.fd, b, 4) == 0)
        var hog: [PFN] = []
        while f.memory.freeRAMPageCount > 2, let p = f.memory.allocPage() { hog.append(p) }
        #expect(hmmMigrateDevToSys(f.fd, b, 4) == negErrno(.outOfMemory))
        #expect(f.memory.freeRAMPageCount == 2)                        // the batch's RAM pages went back
        #expect(f.device0.inUsePageCount == 4)
        #expect(f.fd.mappedPageCount == 4)
        for p in hog { f.memory.putPage(p) }
        b.fillMirror(.zero)
        #expect(hmmMigrateSysToDev(f.fd, b, 4) == 0 && b.cpages == 4 && b.mirrorMatches(.index))
        #expect(hmmMigrateDevToSys(f.fd, b, 4) == 0 && b.cpages == 4)
        #expect(try f.mm.intsMatch(b.ptr, bytes: b.size, .index))
        f.teardown()
    }

    /// MIGRATE_TO_SYS over a range with holes (never touched) and system pages: `cpages`
    /// counts only the pages that moved back (`dmirror_successful_migrated_pages`: VALID
    /// and MIGRATE), not the holes setup also marks MIGRATE.
    @Test("MIGRATE_TO_SYS cpages counts moved pages, not holes", arguments: MirrorKind.allCases)
    func migrateToSystemCountsOnlyMovedPages(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try HMMBuffer(f.mm, size: 12 * pageSize)
        try f.mm.fillInts(b.ptr, bytes: 8 * pageSize, .index)          // pages 8-11 stay holes
        #expect(hmmMigrateSysToDev(f.fd, b, 4) == 0 && b.cpages == 4)  // pages 0-3 on the device
        #expect(hmmMigrateDevToSys(f.fd, b, 12) == 0)
        #expect(b.cpages == 4)
        #expect(f.device0.inUsePageCount == 0)
        #expect(try f.mm.intsMatch(b.ptr, bytes: 8 * pageSize, .index))
        f.teardown()
    }

    /// A small-page analogue of `migrate_anon_huge_free`: MADV_FREE leaves device pages be;
    /// MADV_DONTNEED frees them.
    @Test("migrate_anon_huge_free (small pages)", arguments: MirrorKind.allCases)
    func migrateAnonFree(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = 512, size = npages * pageSize
        let b = try migrated(f, npages: npages)
        try f.mm.madvise(b.ptr, length: size, advice: .free)
        #expect(f.device0.inUsePageCount == npages)
        #expect(try f.mm.intsMatch(b.ptr, bytes: size / 2, .index))
        try f.mm.madvise(b.ptr, length: size, advice: .dontNeed)
        #expect(f.device0.inUsePageCount == 0)
        #expect(try f.mm.intsMatch(b.ptr, bytes: size, .zero))
        f.teardown()
    }

    @Test("hmm_cow_in_device", arguments: MirrorKind.allCases)
    func hmmCowInDevice(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = 4
        let b = try migrated(f, npages: npages)
        let child = try f.mm.fork()
        // The parent writes: private pages come back to RAM first, then are copied;
        // coherent pages are copied straight from device memory.
        try f.mm.fillInts(b.ptr, bytes: b.size, .index)
        #expect(f.mm.faultCounters[.copyOnWrite] == npages)
        child.exit()                                                        // SIGKILL + waitpid
        #expect(hmmDmirrorCmd(f.fd, .snapshot, b, npages) == 0)
        #expect(b.cpages == npages)
        #expect((0..<npages).allSatisfy { b.mirror[$0] == MirrorProtection.write.rawValue })
        f.teardown()
    }

    /// gup_test's four calls as HostMM's GUP: `GUP_BASIC` and `GUP_FAST` (get, write),
    /// `PIN_FAST` with `FOLL_LONGTERM` and `PIN_LONGTERM` (pin, long-term).
    @Test("hmm_gup_test", arguments: MirrorKind.allCases)
    func hmmGupTest(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = 4
        let b = try migrated(f, npages: npages)
        for k in 0..<2 {
            let got = try f.mm.getUserPages(b.ptr + UInt64(k) * hmmPage, count: 1, write: true)
            for page in got { f.memory.putPage(page) }
        }
        for k in 2..<4 {
            let pinned = try f.mm.pinUserPages(b.ptr + UInt64(k) * hmmPage, count: 1, write: true, longterm: true)
            f.memory.unpinUserPages(pinned)
        }
        #expect(hmmDmirrorCmd(f.fd, .snapshot, b, npages) == 0)
        #expect(b.cpages == npages)
        let first: MirrorProtection = kind.isCoherent ? .deviceCoherentLocal | .write : .write
        #expect(Array(b.mirror[0..<4]) == [first.rawValue, first.rawValue, 0x02, 0x02])
        #expect(try f.mm.intsMatch(b.ptr, bytes: b.size, .index))
        f.teardown()
    }
}
