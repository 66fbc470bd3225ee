import DeviceEmu
import HostMM
import Testing

/// hmm-tests.c: device reads and writes through the mirror (`HMM_DMIRROR_READ` / `WRITE`),
/// in both fixture variants.
@Suite struct MirrorReadWriteTests {
    /// The child's half of anon_write_child(_shared): it opens `/dev/hmm_dmirror0`, the
    /// device writes `-i` into the child's `npages` at `ptr`, the child sees them; it exits.
    static func childWritesNegated(_ f: HMMFixture, _ child: AddressSpace, at ptr: UInt64, npages: Int,
                                   sourceLocation: SourceLocation = #_sourceLocation) throws {
        let size = npages * pageSize
        let childFD = try f.privateDevice0.open(child)
        let cb = HMMBuffer(child, at: ptr, size: size)
        cb.fillMirror(.negated)
        #expect(hmmDmirrorCmd(childFD, .write, cb, npages) == 0, sourceLocation: sourceLocation)
        #expect(cb.cpages == npages && cb.faults == 1, sourceLocation: sourceLocation)
        #expect(try child.intsMatch(ptr, bytes: size, .negated), sourceLocation: sourceLocation)
        childFD.close()
        child.exit()
    }

    @Test("open_close", arguments: MirrorKind.allCases)
    func openClose(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        #expect(f.fd.isOpen)
        f.fd.close()
        #expect(!f.fd.isOpen)
        let b = try HMMBuffer(f.mm, size: pageSize)
        #expect(hmmDmirrorCmd(f.fd, .read, b, 1) == negErrno(.invalidArgument))   // a closed fd
        f.teardown()
    }

    @Test("anon_read", arguments: MirrorKind.allCases)
    func anonRead(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        let b = try HMMBuffer(f.mm, size: size)
        // Leave the first two pages zero (pte_none and the zero page).
        try f.mm.fillInts(b.ptr + 2 * hmmPage, bytes: size - 2 * pageSize, .index, firstIndex: 2 * pageSize / 4)
        try f.mm.mprotect(b.ptr, length: size, protection: .read)
        #expect(try f.mm.ints(b.ptr + hmmPage, bytes: 4) == [0])          // the zero page
        #expect(hmmDmirrorCmd(f.fd, .read, b, npages) == 0)
        #expect(b.cpages == npages && b.faults == 1)
        #expect(b.mirrorMatches(.zero, bytes: 2 * pageSize) && b.mirrorMatches(.index, offset: 2 * pageSize))
        f.teardown()
    }

    @Test("anon_read_prot", arguments: MirrorKind.allCases)
    func anonReadProt(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        let b = try f.buffer(size: size, filledWith: .index)
        b.fillMirror(.negated)
        try f.mm.mprotect(b.ptr, length: size, protection: .none)
        #expect(hmmDmirrorCmd(f.fd, .read, b, npages) == negErrno(.fault))
        try f.mm.mprotect(b.ptr, length: size, protection: .read)
        #expect(try f.mm.intsMatch(b.ptr, bytes: size, .index))
        #expect(b.mirrorMatches(.negated))                              // not written
        f.teardown()
    }

    @Test("anon_write", arguments: MirrorKind.allCases)
    func anonWrite(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        let b = try HMMBuffer(f.mm, size: size)
        b.fillMirror(.index)
        #expect(hmmDmirrorCmd(f.fd, .write, b, npages) == 0)
        #expect(b.cpages == npages && b.faults == 1)
        #expect(try f.mm.intsMatch(b.ptr, bytes: size, .index))
        f.teardown()
    }

    @Test("anon_write_prot", arguments: MirrorKind.allCases)
    func anonWriteProt(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        let b = try HMMBuffer(f.mm, size: size, protection: .read)
        #expect(hmmDmirrorCmd(f.fd, .read, b, 1) == 0)                     // a zero page
        #expect(b.cpages == 1 && b.faults == 1)
        b.fillMirror(.index)
        #expect(hmmDmirrorCmd(f.fd, .write, b, npages) == negErrno(.permissionDenied))
        #expect(try f.mm.intsMatch(b.ptr, bytes: size, .zero))
        try f.mm.mprotect(b.ptr, length: size, protection: .readWrite)
        #expect(hmmDmirrorCmd(f.fd, .write, b, npages) == 0)
        #expect(b.cpages == npages && b.faults == 1)
        #expect(try f.mm.intsMatch(b.ptr, bytes: size, .index))
        f.teardown()
    }

    /// The `use_thp = 0` half; the child always opens device 0 (private), as in the C test.
    @Test("anon_write_child", arguments: MirrorKind.allCases, [false, true])
    func anonWriteChild(_ kind: MirrorKind, migrate: Bool) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        let b = try HMMBuffer(f.mm, size: 2 * size, mirrorSize: size)
        try f.mm.fillInts(b.ptr, bytes: size, .index)
        b.fillMirror(.negated)
        if migrate {
            #expect(hmmMigrateSysToDev(f.fd, b, npages) == 0)
            #expect(b.cpages == npages)
        }
        let child = try f.mm.fork()
        // Child: sees the parent's values (private + migrate: one migrateToRAM per page).
        #expect(try child.intsMatch(b.ptr, bytes: size, .index))
        if !migrate { #expect(b.mirrorMatches(.negated)) }
        try Self.childWritesNegated(f, child, at: b.ptr, npages: npages)
        // Parent: its buffer did not change (copy-on-write).
        #expect(try f.mm.intsMatch(b.ptr, bytes: size, .index))
        f.teardown()
    }

    @Test("anon_write_child_shared", arguments: MirrorKind.allCases)
    func anonWriteChildShared(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        let b = try HMMBuffer(f.mm, size: size, kind: .anonymousShared)
        try f.mm.fillInts(b.ptr, bytes: size, .index)
        b.fillMirror(.negated)
        let child = try f.mm.fork()
        #expect(try child.intsMatch(b.ptr, bytes: size, .index))
        #expect(b.mirrorMatches(.negated))
        try Self.childWritesNegated(f, child, at: b.ptr, npages: npages)
        #expect(try f.mm.intsMatch(b.ptr, bytes: size, .negated))       // shared: no COW
        f.teardown()
    }

    /// Runs as 512 small pages: MADV_HUGEPAGE is accepted and changes nothing here.
    @Test("anon_write_huge", arguments: MirrorKind.allCases)
    func anonWriteHuge(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try HMMBuffer(f.mm, size: 2 * hmmPMDSize, mirrorSize: hmmPMDSize)
        let map = hmmAlign(b.ptr, hmmPMDSize)
        try f.mm.madvise(map, length: hmmPMDSize, advice: .hugePage)
        let hb = HMMBuffer(f.mm, at: map, size: hmmPMDSize)
        hb.fillMirror(.index)
        let npages = hmmPMDSize / pageSize
        #expect(hmmDmirrorCmd(f.fd, .write, hb, npages) == 0)
        #expect(hb.cpages == npages && hb.faults == 1)
        #expect(try f.mm.intsMatch(map, bytes: hmmPMDSize, .index))
        f.teardown()
    }

    @Test("file_read", arguments: MirrorKind.allCases)
    func fileRead(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        let file = PageCacheFile(memory: f.memory, pageCount: npages)
        let data = IntPattern.index.ints(count: size / 4, firstIndex: 0)
        try file.write(offset: 0, data.withUnsafeBytes { Array($0) })       // pwrite
        let b = try HMMBuffer(f.mm, size: size, kind: .file(file, shared: true), protection: .read)
        #expect(hmmDmirrorCmd(f.fd, .read, b, npages) == 0)
        #expect(b.cpages == npages && b.faults == 1)
        #expect(b.mirrorMatches(.index))
        f.teardown()
    }

    @Test("file_write", arguments: MirrorKind.allCases)
    func fileWrite(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        let file = PageCacheFile(memory: f.memory, pageCount: npages)
        let b = try HMMBuffer(f.mm, size: size, kind: .file(file, shared: true))
        b.fillMirror(.index)
        #expect(hmmDmirrorCmd(f.fd, .write, b, npages) == 0)
        #expect(b.cpages == npages && b.faults == 1)
        #expect(try f.mm.intsMatch(b.ptr, bytes: size, .index))
        let pread = try file.read(offset: 0, count: size)
        #expect(pread == IntPattern.index.ints(count: size / 4, firstIndex: 0).withUnsafeBytes { Array($0) })
        f.teardown()
    }

    @Test("anon_read_multiple", arguments: MirrorKind.allCases)
    func anonReadMultiple(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        for c in 0..<hmmNTimes {
            let b = try f.buffer(size: size, filledWith: .index(plus: c))
            #expect(hmmDmirrorCmd(f.fd, .read, b, npages) == 0)
            #expect(b.cpages == npages && b.faults == 1)
            #expect(b.mirrorMatches(.index(plus: c)))
            try b.free()
        }
        f.teardown()
    }

    /// A thread unmaps the second half after a random delay below 32 µs while the device
    /// reads; success must still mean a complete, correct read, and a failure must be
    /// EFAULT (or EBUSY, the range timeout).
    @Test("anon_teardown", arguments: MirrorKind.allCases)
    func anonTeardown(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages, size = npages * pageSize
        for c in 0..<hmmNTimes {
            let b = try f.buffer(size: size, filledWith: .index(plus: c))
            let unmapper = MirrorTestThread { [mm = f.mm, ptr = b.ptr] in
                MirrorTestThread.sleep(nanoseconds: UInt64.random(in: 0..<32_000))
                try? mm.munmap(ptr + UInt64(size / 2), length: size / 2)
            }
            let rc = hmmDmirrorCmd(f.fd, .read, b, npages)
            if rc == 0 {
                #expect(b.cpages == npages && b.faults == 1)
                #expect(b.mirrorMatches(.index(plus: c)))
            } else {
                // EFAULT: the read met the unmapped half. EBUSY: a 64-page batch ran past
                // dmirror_range_fault's timeout (1 s), which a loaded machine can make it do
                // (hmm-tests.c checks nothing when the read fails).
                #expect(rc == negErrno(.fault) || rc == negErrno(.busy), "rc \(rc)")
            }
            unmapper.join()
            try b.free()
        }
        f.teardown()
    }

    /// The checks `dmirror_fops_unlocked_ioctl` makes before dispatching any command.
    @Test("ioctl argument checks", arguments: MirrorKind.allCases)
    func ioctlArgumentChecks(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try HMMBuffer(f.mm, size: 4 * pageSize)
        let einval = negErrno(.invalidArgument)
        for command in MirrorCommand.allCases {
            #expect(hmmDmirrorCmd(f.fd, command, b, 0) == einval, "npages 0, \(command)")
            #expect(hmmDmirrorCmd(f.fd, command, b, -1) == einval, "wrapping range, \(command)")
            b.ptr += 1
            #expect(hmmDmirrorCmd(f.fd, command, b, 1) == einval, "unaligned, \(command)")
            b.ptr -= 1
            let high = HMMBuffer(f.mm, at: UInt64.max & ~4095, size: pageSize)
            #expect(hmmDmirrorCmd(f.fd, command, high, 2) == einval, "past 2^64, \(command)")
        }
        #expect(b.cpages == 0 && b.faults == 0)                         // nothing copied back
        #expect(MirrorCommand.read.ioctlNumber == 0xC028_4800 && MirrorCommand.flags.ioctlNumber == 0xC028_4808)
        // A short user buffer is EFAULT, and the read leaves it alone.
        let short = UnsafeMutableRawBufferPointer.allocate(byteCount: pageSize, alignment: 16)
        defer { short.deallocate() }
        #expect(throws: MirrorError.fault) { try f.fd.read(b.ptr, npages: 2, into: short) }
        #expect(throws: MirrorError.fault) { try f.fd.write(b.ptr, npages: 2, from: UnsafeRawBufferPointer(short)) }
        // `npages << PAGE_SHIFT` truncates to 64 bits: 2^52 + 1 pages is one page to the kernel.
        let truncated = (1 << 52) + 1
        #expect(hmmDmirrorCmd(f.fd, .read, b, truncated) == 0 && b.cpages == 1 && b.faults == 0)   // mirrored by the short read
        #expect(hmmDmirrorCmd(f.fd, .snapshot, b, truncated) == 0 && b.cpages == 1)
        #expect(hmmMigrateSysToDev(f.fd, b, truncated) == 0 && b.cpages == 1)
        b.ptr = 1 << 40                                                     // nothing mapped there
        #expect(hmmDmirrorCmd(f.fd, .read, b, 1) == negErrno(.fault))
        #expect(hmmDmirrorCmd(f.fd, .migrateToDevice, b, 1) == einval)
        #expect(hmmDmirrorCmd(f.fd, .snapshot, b, 1) == 0 && b.mirror[0] == MirrorProtection.error.rawValue)
        #expect(hmmDmirrorCmd(f.fd, .exclusive, b, 1) == negErrno(.fault))
        f.teardown()
    }
}
