import Foundation
import NIOConcurrencyHelpers
import Synchronization
import Testing
@testable import HostMM

/// A device-coherent pgmap: CPU-reachable bytes owned by the "driver".
final class CoherentDevice: DevicePagemapOps, @unchecked Sendable {
    let memory: PhysicalMemory
    private(set) var pagemap: DevicePagemap!
    let bytes: UnsafeMutableRawPointer
    private let lock = NIOLock()
    private var freeList: [PFN] = []
    var owner: PgmapOwner { PgmapOwner(self) }

    init(memory: PhysicalMemory, pageCount: Int = 64) throws {
        self.memory = memory
        bytes = .allocate(byteCount: pageCount * pageSize, alignment: pageSize)
        pagemap = try memory.registerPagemap(type: .deviceCoherent, pageCount: pageCount, owner: PgmapOwner(self),
                                             ops: self, coherentBytes: bytes)
        freeList = Array(pagemap.pfns.reversed())
    }
    deinit { bytes.deallocate() }

    func allocPage() -> PFN? {
        guard let pfn = lock.withLock({ freeList.popLast() }) else { return nil }
        try! memory.zoneDevicePageInit(pfn)
        return pfn
    }
    func pageFree(_ pfn: PFN, pagemap: DevicePagemap) { lock.withLock { freeList.append(pfn) } }
    func migrateToRAM(_ fault: VMFault) -> VMFaultResult { .sigbus }   // never called: coherent pages are present

    func migrate(_ mm: AddressSpace, _ a: UInt64, pages n: Int) throws {
        try withMigrateSetup(mm, a, pages: n, owner: owner, flags: .selectSystem) { args, src, dst in
            for i in 0..<n where src[i].contains(.migrate) {
                let d = allocPage()!
                memcpy(memory.bytes(d)!, memory.bytes(src[i].page!)!, pageSize)
                dst[i] = MigratePFN(pfn: d)
            }
            try migrateVMAPages(&args)
            migrateVMAFinalize(&args)
        }
    }
}

/// Runs setup on `[a, a + n pages)` and returns the src entries and cpages; then finalizes
/// without destinations, which restores everything.
func collect(_ mm: AddressSpace, _ a: UInt64, pages n: Int, owner: PgmapOwner?, flags: MigrateVMA.Flags) throws -> ([MigratePFN], Int) {
    try withMigrateSetup(mm, a, pages: n, owner: owner, flags: flags) { args, src, _ in
        let result = (Array(src[0..<n]), args.cpages)
        migrateVMAFinalize(&args)
        return result
    }
}

/// A driver's migration of `[a, a + n pages)` up to setup: under the mmap read lock, with
/// zeroed buffers, runs `migrateVMASetup`, then `body` with the arguments and the src and
/// dst buffers (the rest of the steps, down to finalize, are `body`'s).
func withMigrateSetup<T>(_ mm: AddressSpace, _ a: UInt64, pages n: Int, owner: PgmapOwner?, flags: MigrateVMA.Flags,
                         _ body: (inout MigrateVMA, UnsafeMutableBufferPointer<MigratePFN>,
                                  UnsafeMutableBufferPointer<MigratePFN>) throws -> T) throws -> T {
    try mm.mmapLock.withReadLock {
        try withBuffers(n) { src, dst in
            var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + UInt64(n * pageSize),
                                  src: src, dst: dst, pgmapOwner: owner, flags: flags)
            try migrateVMASetup(&args)
            return try body(&args, src, dst)
        }
    }
}

@Suite struct MigrateSelectionTests {
    /// RAM, a 16-page device and a process with `pages` untouched anonymous pages at `a`.
    static func machine(pages: Int) throws -> (memory: PhysicalMemory, device: TestDevice, mm: AddressSpace, a: UInt64) {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pages * pageSize)
        return (memory, device, mm, a)
    }

    @Test func ownerFilterSkipsAnotherDriversDevicePages() throws {
        let memory = try makeMemory()
        let a1 = try TestDevice(memory: memory, pageCount: 16)
        let b = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        try mm.write(at: a, bytes: pattern(3, count: 4 * pageSize))
        try a1.migrateToDevice(mm, a, a + UInt64(4 * pageSize))
        let (other, otherCount) = try collect(mm, a, pages: 4, owner: b.owner, flags: .selectDevicePrivate)
        #expect(other.allSatisfy { $0 == [] } && otherCount == 0)
        let (own, ownCount) = try collect(mm, a, pages: 4, owner: a1.owner, flags: .selectDevicePrivate)
        #expect(ownCount == 4)
        #expect(own.allSatisfy { $0.contains([.valid, .migrate, .write]) && memory.isDevicePrivate($0.page!) })
        // Finalize without destinations restored the device entries.
        #expect(mm.pageTableEntry(a).kind == .devicePrivate)
        #expect(try mm.read(at: a, count: 4 * pageSize) == pattern(3, count: 4 * pageSize))
    }

    @Test func selectDevicePrivateCollectsOnlyDevicePages() throws {
        let (_, device, mm, a) = try Self.machine(pages: 4)
        try mm.touch(a, length: 4 * pageSize, write: true)
        try device.migrateToDevice(mm, a, a + UInt64(2 * pageSize))
        let (src, cpages) = try collect(mm, a, pages: 4, owner: device.owner, flags: .selectDevicePrivate)
        #expect(cpages == 2)
        #expect(src[0].contains(.migrate) && src[1].contains(.migrate))
        #expect(src[2] == [] && src[3] == [])
    }

    @Test func selectSystemSkipsDevicePrivatePages() throws {
        let (memory, device, mm, a) = try Self.machine(pages: 4)
        try mm.touch(a, length: 4 * pageSize, write: true)
        try device.migrateToDevice(mm, a, a + UInt64(2 * pageSize))
        let (src, cpages) = try collect(mm, a, pages: 4, owner: device.owner, flags: .selectSystem)
        #expect(cpages == 2)
        #expect(src[0] == [] && src[1] == [])
        #expect(src[2].contains(.migrate) && memory.isRAM(src[2].page!))
    }

    @Test func selectDeviceCoherentCollectsOwnCoherentPagesOnly() throws {
        let memory = try makeMemory()
        let coherent = try CoherentDevice(memory: memory)
        let other = try CoherentDevice(memory: memory)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        try mm.write(at: a, bytes: pattern(9, count: 2 * pageSize))
        try coherent.migrate(mm, a, pages: 2)
        let pte = mm.pageTableEntry(a)
        #expect(pte.kind == .present && pte.isDevmap && memory.isDeviceCoherent(pte.pfn))
        // The CPU reaches coherent memory without faulting.
        #expect(try mm.read(at: a, count: 2 * pageSize) == pattern(9, count: 2 * pageSize))
        #expect(try collect(mm, a, pages: 2, owner: coherent.owner, flags: .selectSystem).1 == 0)
        #expect(try collect(mm, a, pages: 2, owner: other.owner, flags: .selectDeviceCoherent).1 == 0)
        let (src, cpages) = try collect(mm, a, pages: 2, owner: coherent.owner, flags: .selectDeviceCoherent)
        #expect(cpages == 2 && src.allSatisfy { memory.isDeviceCoherent($0.page!) })
    }

    @Test func pinnedPageIsNotMigratedAndStaysMapped() throws {
        let (memory, device, mm, a) = try Self.machine(pages: 4)
        try mm.touch(a, length: 4 * pageSize, write: true)
        let pinned = try mm.pinUserPages(a + UInt64(pageSize), count: 1, write: true)
        #expect(memory.refcount(pinned[0]) == 1 + Int(gupPinCountingBias))
        #expect(try device.migrateToDevice(mm, a, a + UInt64(4 * pageSize)) == 3)
        let pte = mm.pageTableEntry(a + UInt64(pageSize))
        #expect(pte.kind == .present && pte.pfn == pinned[0] && pte.isWritable)
        memory.unpinUserPages(pinned)
        #expect(memory.refcount(pinned[0]) == 1)
        #expect(try device.migrateToDevice(mm, a + UInt64(pageSize), a + UInt64(2 * pageSize)) == 1)
    }

    @Test func pageWithExtraReferenceIsRestoredBySetup() throws {
        let (memory, device, mm, a) = try Self.machine(pages: 2)
        try mm.write(at: a, bytes: pattern(4, count: 2 * pageSize))
        let held = try mm.getUserPages(a, count: 1, write: false)
        let (src, cpages) = try collect(mm, a, pages: 2, owner: device.owner, flags: .selectSystem)
        #expect(src[0] == [] && src[1].contains(.migrate) && cpages == 1)
        #expect(mm.pageTableEntry(a).pfn == held[0] && mm.pageTableEntry(a).isPresent)
        #expect(!memory.isPageLocked(held[0]))
        memory.putPage(held[0])
        #expect(try mm.read(at: a, count: 2 * pageSize) == pattern(4, count: 2 * pageSize))
    }

    @Test func pageLockedElsewhereIsSkipped() throws {
        let (memory, device, mm, a) = try Self.machine(pages: 2)
        try mm.touch(a, length: 2 * pageSize, write: true)
        let busy = mm.pageTableEntry(a).pfn
        memory.lockPage(busy)
        let (src, cpages) = try collect(mm, a, pages: 2, owner: device.owner, flags: .selectSystem)
        #expect(src[0] == [] && cpages == 1)
        #expect(mm.pageTableEntry(a).isPresent && mm.pageTableEntry(a).pfn == busy)
        #expect(memory.isPageLocked(busy))
        memory.unlockPage(busy)
        #expect(memory.refcount(busy) == 1)
    }

    @Test func referenceTakenAfterSetupFailsThePagesStep() throws {
        let (memory, device, mm, a) = try Self.machine(pages: 1)
        try mm.write(at: a, bytes: [7])
        try withMigrateSetup(mm, a, pages: 1, owner: device.owner, flags: .selectSystem) { args, src, dst in
            let page = src[0].page!
            memory.getPage(page)                  // a racing user appears
            device.copyToDevice(src, dst, 1)
            try migrateVMAPages(&args)
            #expect(!src[0].contains(.migrate))
            migrateVMAFinalize(&args)
            memory.putPage(page)
        }
        #expect(mm.pageTableEntry(a).isPresent)
        #expect(device.freePageCount == device.pageCount)    // the unused destination went back
        #expect(try mm.read(at: a, count: 1) == [7])
    }

    @Test func pagesStepRejectsAnUnlockedDestination() throws {
        let (memory, device, mm, a) = try Self.machine(pages: 1)
        try mm.write(at: a, bytes: [7])
        try withMigrateSetup(mm, a, pages: 1, owner: device.owner, flags: .selectSystem) { args, _, dst in
            let d = device.allocPage()!
            memory.unlockPage(d)
            dst[0] = MigratePFN(pfn: d)
            #expect(throws: HostMMError.invalidArgument) { try migrateVMAPages(&args) }
            memory.lockPage(d)
            try migrateVMAPages(&args)
            migrateVMAFinalize(&args)
        }
        #expect(mm.pageTableEntry(a).kind == .devicePrivate)
    }

    /// The error path the driver guide prescribes after a refused pages step: drop
    /// `.migrate` from every entry, then finalize. Every source is mapped again with its
    /// data and every destination goes back to the driver (the guide's earlier path,
    /// finalize alone, mapped destinations whose page state never moved).
    @Test func finalizeAfterARefusedPagesStepRestoresEverySource() throws {
        let (memory, device, mm, a) = try Self.machine(pages: 2)
        try mm.write(at: a, bytes: pattern(5, count: 2 * pageSize))
        try withMigrateSetup(mm, a, pages: 2, owner: device.owner, flags: .selectSystem) { args, src, dst in
            device.copyToDevice(src, dst, 2)
            memory.unlockPage(dst[1].page!)                                      // the driver's bug
            #expect(throws: HostMMError.invalidArgument) { try migrateVMAPages(&args) }
            #expect(src[0].contains(.migrate) && src[1].contains(.migrate))      // the step changed nothing
            for i in 0..<args.npages { src[i].remove(.migrate) }
            migrateVMAFinalize(&args)
        }
        #expect(mm.pageTableEntry(a).kind == .present && mm.pageTableEntry(a + UInt64(pageSize)).kind == .present)
        #expect(device.freePageCount == 16)
        #expect(try mm.read(at: a, count: 2 * pageSize) == pattern(5, count: 2 * pageSize))
        #expect(memory.diagnostics.unlocksOfUnlockedPages == 1)                  // finalize unlocked the bad one
        #expect(memory.diagnostics.refcountUnderflowCount == 0)
    }

    /// A finalize straight after a refused pages step, or with no pages step at all (the
    /// kernel would map destinations whose page state never moved, and the CPU would then
    /// fault on them for ever), restores every source with its data and releases every
    /// destination.
    @Test(arguments: [true, false])
    func finalizeWithoutASuccessfulPagesStepRestoresEverySource(pagesRefused: Bool) throws {
        let (memory, device, mm, a) = try Self.machine(pages: 2)
        try mm.write(at: a, bytes: pattern(6, count: 2 * pageSize))
        try withMigrateSetup(mm, a, pages: 2, owner: device.owner, flags: .selectSystem) { args, src, dst in
            device.copyToDevice(src, dst, 2)
            if pagesRefused {
                memory.unlockPage(dst[1].page!)                                  // the driver's bug
                #expect(throws: HostMMError.invalidArgument) { try migrateVMAPages(&args) }
            }
            migrateVMAFinalize(&args)
            #expect(!src[0].contains(.migrate) && !src[1].contains(.migrate))
        }
        // Checked first: a CPU read of a destination mapped without its page state never ends.
        try #require(mm.pageTableEntry(a).kind == .present && mm.pageTableEntry(a + UInt64(pageSize)).kind == .present)
        #expect(device.freePageCount == 16)
        #expect(try mm.read(at: a, count: 2 * pageSize) == pattern(6, count: 2 * pageSize))
        #expect(memory.diagnostics.unlocksOfUnlockedPages == (pagesRefused ? 1 : 0))
        #expect(memory.diagnostics.refcountUnderflowCount == 0)
    }

    @Test func copyOnWritePagesOfAPrivateFileMappingMigrateButCachePagesDoNot() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let file = PageCacheFile(memory: memory, pageCount: 4)
        try file.write(offset: 0, pattern(9, count: 4 * pageSize))
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.file(file, shared: false), length: 4 * pageSize)
        try mm.write(at: a, bytes: pattern(10, count: 2 * pageSize))   // pages 0-1: anonymous COW copies
        _ = try mm.read(at: a + UInt64(2 * pageSize), count: 1)        // page 2: page cache, read-only; page 3: hole
        #expect(try device.migrateToDevice(mm, a, a + UInt64(4 * pageSize)) == 2)
        #expect(mm.pageTableEntry(a).kind == .devicePrivate && mm.pageTableEntry(a + UInt64(pageSize)).kind == .devicePrivate)
        #expect(mm.pageTableEntry(a + UInt64(2 * pageSize)).pfn == file.cachedPage(2))
        #expect(mm.pageTableEntry(a + UInt64(3 * pageSize)).isNone)
        #expect(try mm.read(at: a, count: 2 * pageSize) == pattern(10, count: 2 * pageSize))
        try device.migrateToDevice(mm, a, a + UInt64(2 * pageSize))
        try mm.munmap(a, length: 4 * pageSize)                          // zap device-private entries in a file VMA
        #expect(device.freePageCount == 16)
        #expect(try file.read(offset: 0, count: 2 * pageSize) == Array(pattern(9, count: 4 * pageSize)[0..<(2 * pageSize)]))
    }
}
