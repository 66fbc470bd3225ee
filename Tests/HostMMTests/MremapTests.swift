import Testing
@testable import HostMM

@Suite struct MremapTests {
    private let page = UInt64(pageSize)

    @Test func mayMoveCarriesPresentAndDevicePrivateEntriesToTheNewAddress() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        _ = try mm.mmap(length: pageSize, at: a + 4 * page)          // blocks growth in place
        let data = pattern(3, count: 4 * pageSize)
        try mm.write(at: a, bytes: data)
        try device.migrateToDevice(mm, a, a + 2 * page)                // pages 0-1 on the device
        let devicePFN = mm.pageTableEntry(a).pfn
        let ramPFN = mm.pageTableEntry(a + 2 * page).pfn

        let b = try mm.mremap(a, oldLength: 4 * pageSize, newLength: 8 * pageSize, flags: .mayMove)
        #expect(b != a)
        #expect(mm.pageTableEntry(b).kind == .devicePrivate && mm.pageTableEntry(b).pfn == devicePFN)
        #expect(mm.pageTableEntry(b + 2 * page).pfn == ramPFN)        // moved, not copied
        #expect(memory.mapcount(ramPFN) == 1 && memory.refcount(ramPFN) == 1)
        #expect(throws: HostMMError.segmentationFault(address: a, reason: .notMapped)) { try mm.read(at: a, count: 1) }
        #expect(try mm.read(at: b, count: 4 * pageSize) == data)       // device pages fault back at b
        #expect(device.cpuFaults.load(ordering: .relaxed) == 2)
        #expect(try mm.read(at: b + 4 * page, count: 4 * pageSize) == [UInt8](repeating: 0, count: 4 * pageSize))
        mm.exit()
        #expect(device.freePageCount == device.pageCount)
        #expect(memory.diagnostics.refcountUnderflowCount == 0)
    }

    @Test func movedDevicePagesAreFoundByEvictionAtTheirNewAddress() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let data = pattern(4, count: 4 * pageSize)
        try mm.write(at: a, bytes: data)
        try device.migrateToDevice(mm, a, a + 4 * page)
        let target = try mm.mmap(length: 16 * pageSize)                  // a free hole to move into
        try mm.munmap(target, length: 16 * pageSize)
        let b = try mm.mremap(a, oldLength: 4 * pageSize, newLength: 4 * pageSize,
                              flags: [.mayMove, .fixed], newAddress: target + 8 * page)
        #expect(b == target + 8 * page)
        #expect(try device.evictAll() == 4)                            // rmap walks the new VMA
        #expect(mm.pageTableEntry(b).kind == .present)
        #expect(try mm.read(at: b, count: 4 * pageSize) == data)
        #expect(device.cpuFaults.load(ordering: .relaxed) == 0)
    }

    @Test func fixedMoveReplacesTheTargetAndShrinks() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let t = try mm.mmap(length: 2 * pageSize)
        try mm.write(at: a, bytes: pattern(5, count: 4 * pageSize))
        try mm.write(at: t, bytes: [9])
        let b = try mm.mremap(a, oldLength: 4 * pageSize, newLength: 2 * pageSize,
                              flags: [.mayMove, .fixed], newAddress: t)
        #expect(b == t)
        #expect(try mm.read(at: t, count: 2 * pageSize) == Array(pattern(5, count: 4 * pageSize)[0..<(2 * pageSize)]))
        #expect(mm.vmaList.count == 1 && mm.vmaList[0].start == t && mm.vmaList[0].end == t + 2 * page)
        #expect(memory.diagnostics.refcountUnderflowCount == 0)
    }

    @Test func dontUnmapLeavesTheOldRangeMappedAndEmpty() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        let data = pattern(6, count: 2 * pageSize)
        try mm.write(at: a, bytes: data)
        let mirror = RecordingMirror()
        _ = try mm.notifiers.insert(start: a, length: 2 * page, ops: mirror)
        let b = try mm.mremap(a, oldLength: 2 * pageSize, newLength: 2 * pageSize, flags: [.mayMove, .dontUnmap])
        #expect(b != a)
        #expect(mirror.kinds == [.unmap])
        #expect(try mm.read(at: b, count: 2 * pageSize) == data)
        #expect(try mm.read(at: a, count: 2 * pageSize) == [UInt8](repeating: 0, count: 2 * pageSize))
        try mm.write(at: a, bytes: [1])                                   // a fresh page, not b's
        #expect(try mm.read(at: b, count: 1) == [data[0]])
        #expect(mm.vmaList.count == 2)
    }

    @Test func growsInPlaceWhenTheRoomAfterIsFreeAndShrinksInPlace() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: 2 * pageSize)
        try mm.write(at: a, bytes: [7])
        #expect(try mm.mremap(a, oldLength: 2 * pageSize, newLength: 6 * pageSize) == a)
        try mm.write(at: a + 5 * page, bytes: [8])
        #expect(try mm.mremap(a, oldLength: 6 * pageSize, newLength: pageSize) == a)
        #expect(try mm.read(at: a, count: 1) == [7])
        #expect(throws: HostMMError.segmentationFault(address: a + page, reason: .notMapped)) { try mm.read(at: a + page, count: 1) }
    }

    @Test func growthWithoutRoomNeedsMayMove() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: 2 * pageSize)
        _ = try mm.mmap(length: pageSize, at: a + 2 * page)
        #expect(throws: HostMMError.outOfMemory) { try mm.mremap(a, oldLength: 2 * pageSize, newLength: 3 * pageSize) }
        #expect(mm.vmaList.count == 2)
    }

    @Test func growsInPlaceUpToAMappingThatStartsRightAtTheNewEnd() throws {
        // vma_expandable: the room [old end, new end) must be free; a VMA starting at the new end does not overlap it.
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: 2 * pageSize)
        let next = try mm.mmap(length: pageSize, at: a + 4 * page)
        try mm.write(at: a, bytes: [7])
        #expect(try mm.mremap(a, oldLength: 2 * pageSize, newLength: 4 * pageSize) == a)
        #expect(mm.vmaList.map(\.start) == [a, next] && mm.vmaList[0].end == next)
        #expect(try mm.read(at: a, count: 1) == [7])
    }

    @Test func fixedTargetEndingRightAtTheSourceIsNotAnOverlap() throws {
        // mremap_to: EINVAL only when [new, new + newLen) and [old, old + oldLen) intersect.
        let mm = AddressSpace(memory: try makeMemory())
        let hole = try mm.mmap(length: 6 * pageSize)
        try mm.munmap(hole, length: 2 * pageSize)
        let a = hole + 2 * page                                         // [a, a + 4 pages) stays mapped
        try mm.write(at: a, bytes: [9])
        #expect(try mm.mremap(a, oldLength: 2 * pageSize, newLength: 2 * pageSize,
                              flags: [.mayMove, .fixed], newAddress: hole) == hole)
        #expect(try mm.read(at: hole, count: 1) == [9])
        #expect(throws: HostMMError.segmentationFault(address: a, reason: .notMapped)) { try mm.read(at: a, count: 1) }
    }

    enum BadCase: CaseIterable { case unknownFlag, fixedWithoutMayMove, dontUnmapResize, dontUnmapWithoutMayMove,
                                     unaligned, zeroNewLength, overlap, noVMA, pastVMA, pfnMapGrowth, hugetlb }

    @Test(arguments: BadCase.allCases)
    func badArgumentsThrowTheKernelsErrno(_ c: BadCase) throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: 4 * pageSize)
        let expected: HostMMError
        let call: () throws -> UInt64
        switch c {
        case .unknownFlag:
            expected = .invalidArgument
            call = { try mm.mremap(a, oldLength: pageSize, newLength: pageSize, flags: MremapFlags(rawValue: 1 << 9)) }
        case .fixedWithoutMayMove:
            expected = .invalidArgument
            call = { try mm.mremap(a, oldLength: pageSize, newLength: pageSize, flags: .fixed, newAddress: a + 8 * page) }
        case .dontUnmapResize:
            expected = .invalidArgument
            call = { try mm.mremap(a, oldLength: pageSize, newLength: 2 * pageSize, flags: [.mayMove, .dontUnmap]) }
        case .dontUnmapWithoutMayMove:
            expected = .invalidArgument
            call = { try mm.mremap(a, oldLength: pageSize, newLength: pageSize, flags: .dontUnmap) }
        case .unaligned:
            expected = .invalidArgument
            call = { try mm.mremap(a + 1, oldLength: pageSize, newLength: pageSize) }
        case .zeroNewLength:
            expected = .invalidArgument
            call = { try mm.mremap(a, oldLength: pageSize, newLength: 0) }
        case .overlap:
            expected = .invalidArgument
            call = { try mm.mremap(a, oldLength: 2 * pageSize, newLength: 2 * pageSize, flags: [.mayMove, .fixed], newAddress: a + page) }
        case .noVMA:
            expected = .fault
            call = { try mm.mremap(a + 64 * page, oldLength: pageSize, newLength: pageSize) }
        case .pastVMA:
            expected = .fault
            call = { try mm.mremap(a + 2 * page, oldLength: 4 * pageSize, newLength: 4 * pageSize) }
        case .pfnMapGrowth:
            let s = try mm.mmap(.special(.pfnMap), length: pageSize)
            expected = .fault
            call = { try mm.mremap(s, oldLength: pageSize, newLength: 2 * pageSize, flags: .mayMove) }
        case .hugetlb:
            let h = try mm.mmap(.hugetlb, length: pageSize)
            expected = .invalidArgument
            call = { try mm.mremap(h, oldLength: pageSize, newLength: pageSize, flags: [.mayMove, .fixed], newAddress: a + 64 * page) }
        }
        let before = mm.vmaList.map { [$0.start, $0.end] }
        #expect(throws: expected) { _ = try call() }
        #expect(mm.vmaList.map { [$0.start, $0.end] } == before)   // nothing changed
    }
}
