import Testing
@testable import HostMM

/// Page accounting across the mm operations: after the first `k` steps of a mixed
/// sequence (migration to the device, exclusive access, fork, COW, mremap, madvise,
/// mprotect, pins, eviction, shared and PFN mappings) and the exit of every process,
/// every RAM frame and device page is free again.
@Suite struct PageAccountingTests {
    /// The shared zero page is `PageReserved`: a driver's `put_page` too many on it must not
    /// free it into the allocator (single or batched put), or its next owner's stores would
    /// show in every hole read.
    @Test func strayPutsOfTheZeroPageNeverHandItOut() throws {
        let memory = try makeMemory()
        let free = memory.freeRAMPageCount
        [memory.zeroPFN].withUnsafeBufferPointer { memory.putPages($0) }   // release_pages path: refcount 0
        memory.getPage(memory.zeroPFN)
        memory.putPage(memory.zeroPFN)                                       // put_page path: refcount 0 again
        #expect(memory.freeRAMPageCount == free)
        let page = try #require(memory.allocPage())
        #expect(page != memory.zeroPFN)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        #expect(try mm.read(at: a, count: 1) == [0] && mm.pageTableEntry(a).pfn == memory.zeroPFN)
    }

    @Test(arguments: 0...20) func everyPageIsFreeAfterExit(_ k: Int) throws {
        let memory = try makeMemory()
        let ram = memory.freeRAMPageCount
        let device = try TestDevice(memory: memory, pageCount: 64)
        do {
            let mm = AddressSpace(memory: memory)
            var child: AddressSpace?
            var grand: AddressSpace?
            let n = 16
            let a = try mm.mmap(length: n * pageSize)
            var b = a
            var c = a
            var pins: [PFN] = []
            try mm.write(at: a, bytes: pattern(1, count: n * pageSize))
            let steps: [() throws -> Void] = [
                { try device.migrateToDevice(mm, a, a + UInt64(8 * pageSize)) },
                { try mm.mmapLock.withReadLock { () throws in let p = try mm.makeDeviceExclusive(a + UInt64(9 * pageSize)); memory.unlockPage(p); memory.putPage(p) } },
                { child = try mm.fork() },
                { _ = try child?.read(at: a, count: pageSize) },
                { try child?.write(at: a + UInt64(pageSize), bytes: [9]) },
                { try mm.write(at: a + UInt64(9 * pageSize), bytes: [7]) },
                { b = try mm.mremap(a, oldLength: n * pageSize, newLength: 2 * n * pageSize, flags: .mayMove) },
                { try mm.madvise(b + UInt64(2 * pageSize), length: 2 * pageSize, advice: .dontNeed) },
                { try mm.mprotect(b, length: 4 * pageSize, protection: .read) },
                { c = try child?.mremap(a, oldLength: 4 * pageSize, newLength: 4 * pageSize, flags: [.mayMove, .dontUnmap]) ?? a },
                { _ = try child?.read(at: c, count: 4 * pageSize) },
                { pins = try mm.pinUserPages(b + UInt64(10 * pageSize), count: 2, write: false) },
                { grand = try child?.fork() },
                { try grand?.write(at: c, bytes: [1]) },
                { try device.evictAll() },
                { try device.migrateToDevice(mm, b, b + UInt64(4 * pageSize)) },
                { if child == nil { child = try mm.fork() }; try child!.write(at: b, bytes: [3]) },
                { _ = try mm.mremap(b, oldLength: 4 * pageSize, newLength: 2 * pageSize, flags: [.mayMove, .fixed], newAddress: b + UInt64(20 * pageSize)) },
                { try mm.madvise(b + UInt64(20 * pageSize), length: 12 * pageSize, advice: .free) },
                { let f = try mm.mmap(.anonymousShared, length: 4 * pageSize); try mm.write(at: f, bytes: [1]); let g = try mm.fork(); try g.write(at: f + 4096, bytes: [2]); try device.migrateToDevice(g, f, f + 8192); g.exit() },
                { let fr = memory.allocPage()!; let p = try mm.mmap(.special([.pfnMap]), length: pageSize); try mm.remapPFNRange(p, pfn: fr, count: 1); try mm.write(at: p, bytes: [1]); let g = try mm.fork(); try g.write(at: p, bytes: [2]); g.exit(); memory.putPage(fr) },
            ]
            for s in steps.prefix(k + 1) { try s() }
            memory.unpinUserPages(pins)
            grand?.exit(); child?.exit(); mm.exit()
        }
        #expect(device.freePageCount == 64)
        #expect(memory.freeRAMPageCount == ram)
    }
}
