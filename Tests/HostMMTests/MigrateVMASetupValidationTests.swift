import Testing
@testable import HostMM

/// Every `-EINVAL` of `migrate_vma_setup`, plus the model's own argument checks.
@Suite struct MigrateVMASetupValidationTests {
    enum Case: String, CaseIterable, Sendable {
        case noVMA, hugetlbVMA, specialVMA, daxVMA, emptyRange, negativeRange, subPageRange
        case startBelowVMA, startAtVMAEnd, endAboveVMA, noSource, noDestination, faultPageNotDevicePrivate
        case detachedVMA, unknownFlags, shortBuffers
    }

    @Test(arguments: Case.allCases)
    func setupRejects(_ c: Case) throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let file = PageCacheFile(memory: memory, pageCount: 4)
        let anon = try mm.mmap(length: 4 * pageSize)
        let page = UInt64(pageSize)
        var vmaAddress = anon
        switch c {
        case .hugetlbVMA: vmaAddress = try mm.mmap(.hugetlb, length: 4 * pageSize)
        case .specialVMA: vmaAddress = try mm.mmap(.special(.io), length: 4 * pageSize)
        case .daxVMA: vmaAddress = try mm.mmap(.dax(file), length: 4 * pageSize)
        default: break
        }
        let vma = mm.mmapLock.withReadLock { mm.findVMA(vmaAddress) }!
        if c == .detachedVMA { try mm.munmap(anon, length: 4 * pageSize) }
        let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 4)
        let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 4)
        defer { src.deallocate(); dst.deallocate() }
        let none = UnsafeMutableBufferPointer<MigratePFN>(start: nil, count: 0)
        let base = vma.start
        var args = MigrateVMA(vma: vma, start: base, end: base + 2 * page, src: src, dst: dst, flags: .selectSystem)
        switch c {
        case .noVMA: args.vma = nil
        case .emptyRange: args.end = args.start
        case .negativeRange: args.end = args.start - page
        case .subPageRange: args.end = args.start + page - 1          // nr_pages computed before rounding
        case .startBelowVMA: args.start = base - page
        case .startAtVMAEnd: args.start = vma.end; args.end = vma.end + page
        case .endAboveVMA: args.end = vma.end + page
        case .noSource: args.src = none
        case .noDestination: args.dst = none
        case .faultPageNotDevicePrivate: args.faultPage = PFN(5)
        case .unknownFlags: args.flags = MigrateVMA.Flags(rawValue: 1 << 9)
        case .shortBuffers: args.end = base + 4 * page; args.src = UnsafeMutableBufferPointer(rebasing: src[0..<2])
        default: break
        }
        _ = mm.mmapLock.withReadLock {
            #expect(throws: HostMMError.invalidArgument) { try migrateVMASetup(&args) }
        }
    }

    @Test func setupWithoutTheMmapLockIsRefused() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize)
        let vma = mm.mmapLock.withReadLock { mm.findVMA(a) }
        withBuffers(1) { src, dst in
            var args = MigrateVMA(vma: vma, start: a, end: a + UInt64(pageSize), src: src, dst: dst, flags: .selectSystem)
            #expect(throws: HostMMError.mmapLockNotHeld) { try migrateVMASetup(&args) }
        }
    }

    @Test func unalignedBoundsAreRoundedDown() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: 4 * pageSize)
        try mm.touch(a, length: 4 * pageSize, write: true)
        try mm.mmapLock.withReadLock {
            try withBuffers(4) { src, dst in
                var args = MigrateVMA(vma: mm.findVMA(a), start: a + 10, end: a + UInt64(2 * pageSize) + 10,
                                      src: src, dst: dst, flags: .selectSystem)
                try migrateVMASetup(&args)
                #expect(args.start == a && args.end == a + UInt64(2 * pageSize) && args.npages == 2)
                migrateVMAFinalize(&args)
            }
        }
    }
}
