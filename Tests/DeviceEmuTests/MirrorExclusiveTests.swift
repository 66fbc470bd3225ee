import DeviceEmu
import HostMM
import Testing

/// hmm-tests.c: device-exclusive access (`HMM_DMIRROR_EXCLUSIVE` / `CHECK_EXCLUSIVE`).
@Suite struct MirrorExclusiveTests {
    /// An anonymous buffer holding `ptr[i] = i`, taken exclusive by the fixture's fd.
    private func exclusive(_ f: HMMFixture, npages: Int) throws -> HMMBuffer {
        let b = try f.buffer(size: npages * pageSize, filledWith: .index)
        #expect(hmmDmirrorCmd(f.fd, .exclusive, b, npages) == 0)
        #expect(b.cpages == npages)
        #expect(b.mirrorMatches(.index))
        return b
    }

    /// `ptr[i]++` over the whole buffer, checking the old values.
    private func increment(_ mm: AddressSpace, _ b: HMMBuffer) throws -> Bool {
        let old = try mm.ints(b.ptr, bytes: b.size)
        let ok = old == IntPattern.index.ints(count: b.size / 4, firstIndex: 0)
        try mm.fillInts(b.ptr, bytes: b.size, .index(plus: 1))
        return ok
    }

    @Test("exclusive", arguments: MirrorKind.allCases)
    func exclusive(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages
        let b = try exclusive(f, npages: npages)
        #expect(f.fd.entry(at: b.ptr)?.tag == .atomic)
        #expect(hmmDmirrorCmd(f.fd, .checkExclusive, b, npages) == negErrno(.permissionDenied))
        #expect(try increment(f.mm, b))                                 // each first touch revokes
        #expect(f.mm.faultCounters[.deviceExclusive] == npages)
        #expect(try f.mm.intsMatch(b.ptr, bytes: b.size, .index(plus: 1)))
        #expect(hmmDmirrorCmd(f.fd, .checkExclusive, b, npages) == 0)
        f.teardown()
    }

    @Test("exclusive_mprotect", arguments: MirrorKind.allCases)
    func exclusiveMprotect(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = hmmBufferPages
        let b = try exclusive(f, npages: npages)
        try f.mm.mprotect(b.ptr, length: b.size, protection: .read)
        #expect(hmmDmirrorCmd(f.fd, .write, b, npages) == negErrno(.permissionDenied))
        f.teardown()
    }

    @Test("exclusive_cow", arguments: MirrorKind.allCases)
    func exclusiveCow(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try exclusive(f, npages: hmmBufferPages)
        let child = try f.mm.fork()
        #expect(f.fd.mappedPageCount == 0)                              // fork invalidated the mirror
        #expect(hmmDmirrorCmd(f.fd, .checkExclusive, b, hmmBufferPages) == 0)
        #expect(try increment(child, b))
        #expect(try child.intsMatch(b.ptr, bytes: b.size, .index(plus: 1)))
        #expect(try increment(f.mm, b))
        #expect(try f.mm.intsMatch(b.ptr, bytes: b.size, .index(plus: 1)))
        #expect(f.mm.faultCounters[.copyOnWrite] + child.faultCounters[.copyOnWrite] >= hmmBufferPages)
        child.exit()
        f.teardown()
    }

    /// `dmirror_exclusive` drops the reference `make_device_exclusive` returned each page
    /// with (`folio_unlock`, `folio_put`): once the CPU has taken the pages back and the
    /// buffer is unmapped, every page is free again, data intact until then.
    @Test("exclusive pages are freed by munmap", arguments: MirrorKind.allCases)
    func exclusivePagesAreFreedByMunmap(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let free = f.memory.freeRAMPageCount
        let b = try exclusive(f, npages: 8)
        #expect(f.memory.freeRAMPageCount == free - 8)
        #expect(try increment(f.mm, b))                                 // revokes every page
        #expect(f.mm.faultCounters[.deviceExclusive] == 8)
        #expect(try f.mm.intsMatch(b.ptr, bytes: b.size, .index(plus: 1)))
        try b.free()
        #expect(f.memory.freeRAMPageCount == free)
        f.teardown()
    }

    /// The device's own WRITE needs a writable entry: it faults atomic entries back.
    @Test("exclusive then device write revokes it", arguments: MirrorKind.allCases)
    func exclusiveThenWrite(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try exclusive(f, npages: 8)
        b.fillMirror(.negated)
        #expect(hmmDmirrorCmd(f.fd, .write, b, 8) == 0)
        #expect(b.cpages == 8 && b.faults == 1)
        #expect(hmmDmirrorCmd(f.fd, .checkExclusive, b, 8) == 0)
        #expect(try f.mm.intsMatch(b.ptr, bytes: b.size, .negated))
        f.teardown()
    }

    /// What `make_device_exclusive` refuses: shared memory is `EOPNOTSUPP`, a read-only
    /// mapping `EFAULT`; pages taken before the failure stay exclusive.
    /// CHECK_EXCLUSIVE looks at `[addr, addr + npages pages)` only: an atomic entry right
    /// after the range is not "still atomic" for it.
    @Test("CHECK_EXCLUSIVE stops at the range's end", arguments: MirrorKind.allCases)
    func checkExclusiveStopsAtTheRangesEnd(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let b = try f.buffer(size: 4 * pageSize, filledWith: .index)
        let tail = HMMBuffer(f.mm, at: b.ptr + 2 * hmmPage, size: 2 * pageSize)
        #expect(hmmDmirrorCmd(f.fd, .exclusive, tail, 2) == 0)             // pages 2-3 atomic
        #expect(hmmDmirrorCmd(f.fd, .checkExclusive, b, 2) == 0)          // pages 0-1: none
        #expect(hmmDmirrorCmd(f.fd, .checkExclusive, b, 3) == negErrno(.permissionDenied))
        f.teardown()
    }

    @Test("exclusive refusals", arguments: MirrorKind.allCases)
    func exclusiveRefusals(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let shared = try HMMBuffer(f.mm, size: 2 * pageSize, kind: .anonymousShared)
        #expect(hmmDmirrorCmd(f.fd, .exclusive, shared, 2) == negErrno(.notSupported))
        let ro = try HMMBuffer(f.mm, size: pageSize, protection: .read)
        #expect(hmmDmirrorCmd(f.fd, .exclusive, ro, 1) == negErrno(.fault))
        let a = try f.mm.mmap(length: 2 * pageSize)
        try f.mm.mprotect(a + hmmPage, length: pageSize, protection: .read)
        let mixed = HMMBuffer(f.mm, at: a, size: 2 * pageSize)
        #expect(hmmDmirrorCmd(f.fd, .exclusive, mixed, 2) == negErrno(.fault))
        #expect(f.mm.pageTableEntry(a).kind == .deviceExclusive)        // no rollback
        #expect(hmmDmirrorCmd(f.fd, .checkExclusive, mixed, 2) == negErrno(.permissionDenied))
        f.teardown()
    }
}
