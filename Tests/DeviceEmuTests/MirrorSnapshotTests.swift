import DeviceEmu
import HostMM
import Testing

/// hmm-tests.c: what the device sees without faulting (`HMM_DMIRROR_SNAPSHOT`), and two
/// devices mirroring the same memory.
@Suite struct MirrorSnapshotTests {
    @Test("mixedmap", arguments: MirrorKind.allCases)
    func mixedmap(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let address = try f.fd.mmap(length: pageSize)               // mmap of the device fd, MAP_PRIVATE
        let b = HMMBuffer(f.mm, at: address, size: pageSize, mirrorSize: 1)
        #expect(hmmDmirrorCmd(f.fd, .snapshot, b, 1) == 0)
        #expect(b.cpages == 1)
        #expect(b.mirror[0] == MirrorProtection.read.rawValue)
        #expect(hmmMigrateSysToDev(f.fd, b, 1) == negErrno(.invalidArgument))   // VM_MIXEDMAP: refused
        try b.free()
        f.teardown()
    }

    @Test("snapshot", arguments: MirrorKind.allCases)
    func snapshot(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = 7
        let b = try HMMBuffer(f.mm, size: npages * pageSize, protection: .none)   // C: malloc(npages), overrun by migrate
        let p = b.ptr
        try f.mm.munmap(p + hmmPage, length: pageSize)
        try f.mm.mprotect(p + 2 * hmmPage, length: pageSize, protection: .read)
        #expect(try f.mm.ints(p + 2 * hmmPage, bytes: 4) == [0])
        try f.mm.mprotect(p + 3 * hmmPage, length: pageSize, protection: .readWrite)
        try f.mm.fillInts(p + 3 * hmmPage, bytes: 4, IntPattern(scale: 0, offset: 3))
        try f.mm.mprotect(p + 3 * hmmPage, length: pageSize, protection: .read)
        try f.mm.mprotect(p + 4 * hmmPage, length: 3 * pageSize, protection: .readWrite)
        try f.mm.fillInts(p + 4 * hmmPage, bytes: 4, IntPattern(scale: 0, offset: 3))
        b.ptr = p + 5 * hmmPage
        #expect(hmmMigrateSysToDev(f.fd0, b, 1) == 0 && b.cpages == 1)
        b.ptr = p + 6 * hmmPage
        #expect(hmmMigrateSysToDev(f.fd1, b, 1) == 0 && b.cpages == 1)
        b.ptr = p
        #expect(hmmDmirrorCmd(f.fd0, .snapshot, b, npages) == 0)
        #expect(b.cpages == npages)
        var expected: [MirrorProtection] = [.error, .error, .zero | .read, .read, .write]
        if kind.isCoherent {
            expected += [.deviceCoherentLocal | .write, .deviceCoherentRemote | .write]
        } else {
            expected += [.devicePrivateLocal | .write, .none]
        }
        #expect(Array(b.mirror[0..<npages]) == expected.map(\.rawValue))
        #expect(f.fd0.mappedPageCount == 1)                         // snapshot faults nothing in
        try f.mm.munmap(p, length: npages * pageSize)
        f.teardown()
    }

    /// More than one 32-page batch, and what fork and exclusive access look like.
    @Test("snapshot of fork and exclusive entries", arguments: MirrorKind.allCases)
    func snapshotForkAndExclusive(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = 40
        let b = try f.buffer(size: npages * pageSize, filledWith: .index)
        #expect(hmmMigrateSysToDev(f.fd, b, 2) == 0)
        let child = try f.mm.fork()
        let localRO: MirrorProtection = kind.isCoherent ? .deviceCoherentLocal | .read : .devicePrivateLocal | .read
        b.ptr += 2 * hmmPage
        #expect(hmmDmirrorCmd(f.fd, .exclusive, b, 1) == 0)        // page 2: COW-broken, then exclusive
        b.ptr -= 2 * hmmPage
        #expect(hmmDmirrorCmd(f.fd, .snapshot, b, npages) == 0 && b.cpages == npages)
        #expect(Array(b.mirror[0..<4]) == [localRO.rawValue, localRO.rawValue, MirrorProtection.none.rawValue,
                                            MirrorProtection.read.rawValue])
        #expect(b.mirror[npages - 1] == MirrorProtection.read.rawValue)   // the second batch
        child.exit()
        f.teardown()
    }

    @Test("double_map", arguments: MirrorKind.allCases)
    func doubleMap(_ kind: MirrorKind) throws {
        let f = try HMMFixture(kind)
        let npages = 6, size = npages * pageSize
        let b = try f.buffer(size: size, filledWith: .index)
        try f.mm.mprotect(b.ptr, length: size, protection: .read)
        #expect(hmmDmirrorCmd(f.fd0, .read, b, npages) == 0)
        #expect(b.cpages == npages && b.faults == 1 && b.mirrorMatches(.index))
        #expect(hmmDmirrorCmd(f.fd1, .read, b, npages) == 0)
        #expect(b.cpages == npages && b.faults == 1 && b.mirrorMatches(.index))
        #expect(hmmMigrateSysToDev(f.fd1, b, npages) == 0)
        #expect(b.cpages == npages)
        // Device 1's migration is not device 0's own: device 0's mirror was invalidated.
        #expect(f.fd0.mappedPageCount == 0)
        b.fillMirror(.zero)
        #expect(hmmDmirrorCmd(f.fd0, .read, b, npages) == 0)
        #expect(b.cpages == npages && b.faults == 1 && b.mirrorMatches(.index))
        // Private: device 0's fault migrated device 1's pages back; coherent: mapped directly.
        #expect(f.device1.inUsePageCount == (kind.isCoherent ? npages : 0))
        f.teardown()
    }
}
