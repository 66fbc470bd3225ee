import Foundation
import NIOConcurrencyHelpers
import Synchronization
import Testing
@testable import HostMM

/// A checked machine with a memcpy device and `pages` pattern pages at `a`, and the
/// textbook migration split into its steps so that each test can break exactly one.
final class CheckedRig {
    let memory: PhysicalMemory
    let device: TestDevice
    let mm: AddressSpace
    let a: UInt64
    let pages: Int
    let src: UnsafeMutableBufferPointer<MigratePFN>
    let dst: UnsafeMutableBufferPointer<MigratePFN>
    var checker: ProtocolChecker { memory.checker! }

    init(pages: Int = 4, mode: CheckedMode = .on) throws {
        memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 16, checked: mode)
        device = try TestDevice(memory: memory, pageCount: 64)
        mm = AddressSpace(memory: memory)
        self.pages = pages
        a = try mm.mmap(length: pages * pageSize)
        for p in 0..<pages { try mm.write(at: a + UInt64(p * pageSize), bytes: pattern(p, count: pageSize)) }
        src = .allocate(capacity: pages)
        dst = .allocate(capacity: pages)
        src.initialize(repeating: [])
        dst.initialize(repeating: [])
    }

    deinit {
        src.deallocate()
        dst.deallocate()
    }

    /// A driver's copy of a collected device page out of VRAM: a locked RAM page holding
    /// `src[i]`'s bytes, stored in `dst[i]` and returned.
    @discardableResult
    func copyToRAM(_ src: UnsafeMutableBufferPointer<MigratePFN>, _ dst: UnsafeMutableBufferPointer<MigratePFN>, _ i: Int) -> PFN {
        let ram = memory.allocPage()!
        memory.lockPage(ram)
        memcpy(memory.bytes(ram)!, device.bytes(src[i].page!), pageSize)
        dst[i] = MigratePFN(pfn: ram)
        return ram
    }

    func args() -> MigrateVMA {
        MigrateVMA(vma: mm.findVMA(a), start: a, end: a + UInt64(pages * pageSize), src: src, dst: dst,
                   pgmapOwner: device.owner, flags: .selectSystem)
    }

    /// Runs `body` with the mmap lock held for read, as a driver's migration does.
    func locked<T>(_ body: () throws -> T) rethrows -> T {
        mm.mmapLock.readLock()
        defer { mm.mmapLock.readUnlock() }
        return try body()
    }

    /// One migration: `body` runs with fresh arguments over every page of the rig and the
    /// mmap lock held for read, and takes the steps (setup … finalize) itself.
    func migration(_ body: (inout MigrateVMA) throws -> Void) throws {
        var args = args()
        try locked { try body(&args) }
    }

    /// The correct first steps: setup, then the device allocates and copies every collected page.
    func setupAndCopy(_ args: inout MigrateVMA) throws {
        try migrateVMASetup(&args)
        device.copyToDevice(src, dst, args.npages)
    }

    /// The data of page `p`, read by the CPU (faulting it back if it is on the device).
    func cpuPage(_ p: Int) throws -> [UInt8] { try mm.read(at: a + UInt64(p * pageSize), count: pageSize) }

    /// Every page still holds its pattern.
    func dataIntact() throws -> Bool { try (0..<pages).allSatisfy { try cpuPage($0) == pattern($0, count: pageSize) } }

    var rules: [ProtocolRule: Int] { checker.countsByRule }
}

@Suite struct CheckedModeTests {
    // MARK: The correct driver

    @Test func correctDriverRunsCleanThroughEveryPath() throws {
        let rig = try CheckedRig(pages: 8)
        let moved = try rig.device.migrateToDevice(rig.mm, rig.a, rig.a + UInt64(8 * pageSize))
        #expect(moved == 8)
        #expect(try rig.cpuPage(3) == pattern(3, count: pageSize))           // migrateToRAM through a fault
        let child = try rig.mm.fork()
        #expect(try rig.device.evictAll() == 7)                                 // migrate_device_* by PFN
        #expect(try child.read(at: rig.a, count: pageSize) == pattern(0, count: pageSize))
        try rig.device.migrateToDevice(rig.mm, rig.a, rig.a + UInt64(8 * pageSize))
        try rig.mm.munmap(rig.a, length: 8 * pageSize)
        child.exit()
        #expect(rig.checker.violationCount == 0, "\(rig.checker.violations)")
        #expect(rig.memory.diagnostics.protocolViolationCount == 0)
        #expect(rig.checker.unfinishedMigrations == 0)
    }

    @Test func offMeansNoCheckerAndNoReports() throws {
        let memory = try PhysicalMemory(ramBytes: 16 << 20, maxDevicePages: 1024, checked: .off)
        #expect(memory.checker == nil)
        let page = try #require(memory.allocPage())
        memory.putPage(page)
        memory.putPage(page)                                                    // underflow: counted, not recorded
        #expect(memory.diagnostics.refcountUnderflowCount == 1)
        #expect(memory.diagnostics.protocolViolationCount == 0)
    }

    // MARK: Destinations

    @Test func unlockedDestinationIsReportedAndRefused() throws {
        let rig = try CheckedRig()
        try rig.migration { args in
            try migrateVMASetup(&args)
            let page = try #require(rig.device.allocPage())
            memcpy(rig.device.bytes(page), rig.memory.bytes(rig.src[0].page!)!, pageSize)
            rig.memory.unlockPage(page)                                         // the bug
            rig.dst[0] = MigratePFN(pfn: page)
            #expect(throws: HostMMError.invalidArgument) { try migrateVMAPages(&args) }
            rig.memory.putPage(page)                                            // the driver's error path
            rig.dst[0] = []
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.destinationNotLocked: 1])
        let v = try #require(rig.checker.violations.first)
        #expect(v.address == rig.a && v.pfn != nil && v.site.hasPrefix("HostMMTests/CheckedModeTests.swift:"))
        #expect(try rig.dataIntact())
    }

    @Test func freeDestinationIsReported() throws {
        let rig = try CheckedRig()
        try rig.migration { args in
            try migrateVMASetup(&args)
            rig.dst[1] = MigratePFN(pfn: rig.device.pagemap.firstPFN + 60)     // never allocated
            #expect(throws: HostMMError.invalidArgument) { try migrateVMAPages(&args) }
            rig.dst[1] = []
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.destinationNotAllocated: 1])
        #expect(rig.checker.violations.first?.address == rig.a + UInt64(pageSize))
        #expect(try rig.dataIntact())
    }

    @Test func destinationForAnEntryWithoutMigrateIsReportedAndFreed() throws {
        let rig = try CheckedRig()
        let pinned = try rig.mm.pinUserPages(rig.a + UInt64(2 * pageSize), count: 1, write: true)
        try rig.migration { args in
            try migrateVMASetup(&args)
            #expect(!rig.src[2].contains(.migrate))                             // pinned: not collected
            rig.device.copyToDevice(rig.src, rig.dst, args.npages)
            let page = try #require(rig.device.allocPage())
            rig.dst[2] = MigratePFN(pfn: page)                                  // the bug
            try migrateVMAPages(&args)
            migrateVMAFinalize(&args)
        }
        rig.memory.unpinUserPages(pinned)
        #expect(rig.rules == [.destinationWithoutMigrate: 1])
        #expect(rig.device.freePageCount == 64 - 3)                             // the stray destination was freed
        #expect(try rig.dataIntact())
    }

    @Test func destinationSetTwiceIsReportedAndTheRepeatDropped() throws {
        let rig = try CheckedRig()
        try rig.migration { args in
            try migrateVMASetup(&args)
            rig.device.copyToDevice(rig.src, rig.dst, 1)
            rig.dst[1] = rig.dst[0]                                             // the bug
            try migrateVMAPages(&args)
            #expect(rig.src[0].contains(.migrate) && !rig.src[1].contains(.migrate))
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.destinationSetTwice: 1])
        #expect(rig.mm.pageTableEntry(rig.a).kind == .devicePrivate)
        #expect(rig.mm.pageTableEntry(rig.a + UInt64(pageSize)).kind == .present)
        #expect(try rig.dataIntact())
        #expect(rig.memory.diagnostics.unlocksOfUnlockedPages == 0 && rig.memory.diagnostics.refcountUnderflowCount == 0)
    }

    /// One device page handed to two migrations in progress at once (a driver allocator
    /// race, e.g. two pipelined batches): the later pages step reports it and drops the
    /// entry, which stays in RAM; nothing is unlocked or released twice. Both orders.
    @Test(arguments: [false, true])
    func destinationOfTwoMigrationsInProgressIsReported(laterPagesStepFirst: Bool) throws {
        let rig = try CheckedRig()
        let half = UInt64(2 * pageSize)
        let buffers = (0..<4).map { _ in UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 2) }
        defer { for b in buffers { b.deallocate() } }
        for b in buffers { b.initialize(repeating: []) }
        func args(_ k: Int) -> MigrateVMA {
            MigrateVMA(vma: rig.mm.findVMA(rig.a), start: rig.a + UInt64(k) * half, end: rig.a + UInt64(k + 1) * half,
                       src: buffers[2 * k], dst: buffers[2 * k + 1], pgmapOwner: rig.device.owner, flags: .selectSystem)
        }
        var first = args(0), second = args(1)
        let shared = try rig.locked { () throws -> PFN in
            try migrateVMASetup(&first)
            rig.device.copyToDevice(first.src, first.dst, 2)
            try migrateVMASetup(&second)
            rig.device.copyToDevice(second.src, second.dst, 2)
            // The bug: second's first page is also first's (its own one goes back to the allocator).
            let own = try #require(second.dst[0].page)
            rig.memory.unlockPage(own)
            rig.memory.putPage(own)
            let shared = try #require(first.dst[0].page)
            second.dst[0] = first.dst[0]
            if laterPagesStepFirst {
                try migrateVMAPages(&second)
                try migrateVMAPages(&first)
            } else {
                try migrateVMAPages(&first)
                try migrateVMAPages(&second)
            }
            migrateVMAFinalize(&first)
            migrateVMAFinalize(&second)
            return shared
        }
        try #require(rig.rules == [.destinationSetTwice: 1])   // else the pages are in no state to go on
        let v = try #require(rig.checker.violations.first)
        // The pages step that ran second reports; its entry 0 is dropped and stays in RAM.
        let dropped = laterPagesStepFirst ? rig.a : rig.a + half
        let kept = laterPagesStepFirst ? rig.a + half : rig.a
        #expect(v.pfn == shared && v.address == dropped && v.detail.contains("still in progress"))
        #expect(rig.mm.pageTableEntry(dropped).kind == .present)
        #expect(rig.mm.pageTableEntry(kept).kind == .devicePrivate)
        #expect(rig.mm.pageTableEntry(kept).pfn == shared)
        #expect(rig.memory.diagnostics.unlocksOfUnlockedPages == 0 && rig.memory.diagnostics.refcountUnderflowCount == 0)
        #expect(try rig.device.evictAll() == 3)                                 // pages 1, 3 and the shared one
        // The dropped entry kept its page and data; the shared page holds the first
        // migration's page 0 (the report is the warning: with the later pages step first,
        // the second migration's page now reads it); the other pages are intact.
        let droppedIndex = laterPagesStepFirst ? 0 : 2, keptIndex = 2 - droppedIndex
        #expect(try rig.cpuPage(droppedIndex) == pattern(droppedIndex, count: pageSize))
        #expect(try rig.cpuPage(keptIndex) == pattern(0, count: pageSize))
        #expect(try rig.cpuPage(1) == pattern(1, count: pageSize) && rig.cpuPage(3) == pattern(3, count: pageSize))
        // Once both are finalized the page is free to be a destination again.
        try rig.mm.write(at: rig.a + UInt64(keptIndex * pageSize), bytes: pattern(keptIndex, count: pageSize))
        #expect(try rig.device.migrateToDevice(rig.mm, rig.a, rig.a + UInt64(4 * pageSize)) == 4)
        #expect(rig.device.freePageCount == 64 - 4)
        #expect(try rig.dataIntact())                                           // faults all four back
        #expect(rig.device.freePageCount == 64)
        #expect(rig.rules == [.destinationSetTwice: 1])
        #expect(rig.checker.unfinishedMigrations == 0)
    }

    // MARK: Sources

    @Test func sourceWrittenAfterSetupIsReported() throws {
        let rig = try CheckedRig()
        try rig.migration { args in
            try migrateVMASetup(&args)
            rig.memory.bytes(rig.src[3].page!)!.storeBytes(of: 0xBAD, toByteOffset: 128, as: UInt32.self)   // the bug
            rig.device.copyToDevice(rig.src, rig.dst, args.npages)
            try migrateVMAPages(&args)
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.sourceModifiedAfterSetup: 1])
        let v = try #require(rig.checker.violations.first)
        #expect(v.address == rig.a + UInt64(3 * pageSize))
    }

    @Test func throwingModeRefusesThePagesStepBeforeItChangesAnything() throws {
        let rig = try CheckedRig(mode: CheckedMode(isEnabled: true, throwsViolations: true))
        try rig.migration { args in
            try migrateVMASetup(&args)
            rig.memory.bytes(rig.src[0].page!)!.storeBytes(of: 1, as: UInt8.self)
            rig.device.copyToDevice(rig.src, rig.dst, args.npages)
            do {
                try migrateVMAPages(&args)
                Issue.record("expected a protocol violation")
            } catch {
                guard case HostMMError.protocolViolation(let v)? = error as? HostMMError else { throw error }
                #expect(v.rule == .sourceModifiedAfterSetup && v.pfn == rig.src[0].page)
            }
            #expect(rig.src[0].contains(.migrate))                              // untouched
            for i in 0..<args.npages { rig.dst[i].page.map { rig.memory.unlockPage($0); rig.memory.putPage($0) }; rig.dst[i] = [] }
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.sourceModifiedAfterSetup: 1])
        #expect(rig.mm.pageTableEntry(rig.a).kind == .present)
    }

    // MARK: Order and arrays

    @Test func pagesWithoutSetupIsReportedAndSkipped() throws {
        let rig = try CheckedRig()
        var args = rig.args()
        args.npages = rig.pages
        let page = rig.mm.pageTableEntry(rig.a).pfn
        rig.src[0] = MigratePFN(pfn: page).union(.migrate)                      // never collected
        try rig.locked { try migrateVMAPages(&args) }                           // the bug: no setup
        #expect(rig.rules == [.pagesWithoutSetup: 1])
        args.npages = 0
        try rig.locked { try migrateVMAPages(&args) }                           // a no-op after a failed setup
        #expect(rig.rules == [.pagesWithoutSetup: 1])
        #expect(!rig.memory.isPageLocked(page) && rig.mm.pageTableEntry(rig.a).kind == .present)
        // The PFN path too: arrays full of entries nobody collected are not touched.
        rig.src[0] = MigratePFN(pfn: rig.device.pagemap.firstPFN).union(.migrate)
        try rig.memory.migrateDevicePages(src: rig.src, dst: rig.dst, npages: 1)
        #expect(rig.rules == [.pagesWithoutSetup: 2])
    }

    @Test func pagesTwiceIsReportedAndTheSecondSkipped() throws {
        let rig = try CheckedRig()
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            try migrateVMAPages(&args)
            try migrateVMAPages(&args)                                          // the bug
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.pagesTwice: 1])
        #expect(try rig.dataIntact())
    }

    @Test func finalizeWithoutSetupIsReportedAndSkipped() throws {
        let rig = try CheckedRig()
        var args = rig.args()
        args.npages = 2
        let page = rig.mm.pageTableEntry(rig.a).pfn
        rig.src[0] = MigratePFN(pfn: page).union(.migrate)                      // never collected
        rig.locked { migrateVMAFinalize(&args) }                                // the bug
        #expect(rig.memory.refcount(page) == 1)                                 // not released
        #expect(rig.rules == [.finalizeWithoutSetup: 1])
        #expect(rig.memory.diagnostics.unlocksOfUnlockedPages == 0)
    }

    @Test func finalizeWithoutPagesRestoresTheSources() throws {
        let rig = try CheckedRig()
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            migrateVMAFinalize(&args)                                           // the bug: no pages step
        }
        #expect(rig.rules == [.finalizeWithoutPages: 1])
        #expect(rig.mm.pageTableEntry(rig.a).kind == .present)
        #expect(rig.device.freePageCount == 64)
        #expect(try rig.dataIntact())
    }

    @Test func finalizeTwiceIsReportedAndTheSecondSkipped() throws {
        let rig = try CheckedRig()
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            try migrateVMAPages(&args)
            migrateVMAFinalize(&args)
            migrateVMAFinalize(&args)                                           // the bug
        }
        #expect(rig.rules == [.finalizeTwice: 1])
        #expect(rig.memory.diagnostics.unlocksOfUnlockedPages == 0 && rig.memory.diagnostics.refcountUnderflowCount == 0)
        #expect(try rig.dataIntact())
    }

    @Test func setupBeforeFinalizeIsReported() throws {
        // Throwing mode: the second setup is refused, so the driver can still finish the first.
        let rig = try CheckedRig(mode: CheckedMode(isEnabled: true, throwsViolations: true))
        try rig.migration { args in
            try migrateVMASetup(&args)
            var again = rig.args()
            do {
                try migrateVMASetup(&again)                                     // the bug
                Issue.record("expected a protocol violation")
            } catch {
                guard case HostMMError.protocolViolation(let v)? = error as? HostMMError else { throw error }
                #expect(v.rule == .setupBeforeFinalize && v.address == rig.a)
            }
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.setupBeforeFinalize: 1])
        #expect(try rig.dataIntact())
    }

    @Test func wrongArrayLengthIsReportedAndSetupsCountUsed() throws {
        let rig = try CheckedRig()
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            args.npages -= 1                                                    // the bug
            try migrateVMAPages(&args)
            args.npages += 1
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.wrongArrayLength: 1])
        #expect((0..<4).allSatisfy { rig.mm.pageTableEntry(rig.a + UInt64($0 * pageSize)).kind == .devicePrivate })
        #expect(try rig.dataIntact())
    }

    // MARK: References, locks, frees

    @Test func refcountUnderflowNamesThePageAndTheCaller() throws {
        let rig = try CheckedRig()
        let page = try #require(rig.memory.allocPage())
        rig.memory.putPage(page)
        rig.memory.putPage(page); let line = #line                              // the bug
        #expect(rig.rules == [.refcountUnderflow: 1])
        let v = try #require(rig.checker.violations.first)
        #expect(v.pfn == page && v.site == "HostMMTests/CheckedModeTests.swift:\(line)")
        #expect(rig.memory.diagnostics.refcountUnderflowCount == 1)
    }

    @Test func unlockOfAnUnlockedPageIsReported() throws {
        let rig = try CheckedRig()
        let page = try #require(rig.memory.allocPage())
        rig.memory.unlockPage(page)                                             // the bug
        rig.memory.putPage(page)
        #expect(rig.rules == [.unlockOfUnlockedPage: 1])
        #expect(rig.checker.violations.first?.pfn == page)
    }

    @Test func devicePageLeftAtTeardownIsALeak() throws {
        let rig = try CheckedRig()
        let page = try #require(rig.device.allocPage())                         // never freed: the bug
        #expect(throws: HostMMError.busy) { try rig.memory.unregisterPagemap(rig.device.pagemap) }
        #expect(throws: HostMMError.busy) { try rig.memory.unregisterPagemap(rig.device.pagemap) }
        #expect(rig.rules == [.devicePageLeaked: 1])                            // once, however often retried
        #expect(rig.checker.violations.first?.pfn == page)
        rig.memory.unlockPage(page)
        rig.memory.putPage(page)
        try rig.memory.unregisterPagemap(rig.device.pagemap)
        #expect(rig.rules == [.devicePageLeaked: 1])
    }

    // MARK: Device mappings

    /// A driver that maps pages on its device without an MMU notifier: the bug behind
    /// both device-mapping rules.
    private final class NotifierlessMirror: DeviceMappingOracle, @unchecked Sendable {
        let table = NIOLockedValueBox<[PFN: UInt64]>([:])
        func map(_ mm: AddressSpace, _ address: UInt64) throws {
            let pfns = try mm.getUserPages(address, count: 1, write: false)
            table.withLockedValue { $0[pfns[0]] = address }
            mm.memory.putPage(pfns[0])                                           // entries hold no reference
        }
        func deviceMapping(of pfn: PFN) -> UInt64? { table.withLockedValue { $0[pfn] } }
    }

    @Test func pageFreedUnderADeviceMappingIsReported() throws {
        let rig = try CheckedRig()
        let mirror = NotifierlessMirror()
        rig.checker.register(mirror)
        try mirror.map(rig.mm, rig.a + UInt64(pageSize))
        try rig.mm.munmap(rig.a, length: 4 * pageSize)
        #expect(rig.rules == [.devicePTEMapsFreedPage: 1])
        #expect(rig.checker.violations.first?.address == rig.a + UInt64(pageSize))
    }

    @Test func pageMigratedUnderADeviceMappingIsReportedOnce() throws {
        let rig = try CheckedRig()
        let mirror = NotifierlessMirror()
        rig.checker.register(mirror)
        try mirror.map(rig.mm, rig.a)
        try rig.device.migrateToDevice(rig.mm, rig.a, rig.a + UInt64(4 * pageSize))
        #expect(rig.rules == [.devicePTEMapsMigratedPage: 1])                  // its free is not reported again
        let v = try #require(rig.checker.violations.first)
        #expect(v.site.hasPrefix("HostMMTests/TestDevice.swift:"))
    }

    @Test func inFlightOracleIsAskedAtFinalize() throws {
        // A copy engine that never completes the copy into dst[0]: finalize must say so.
        final class StuckCopy: InFlightCopyOracle, @unchecked Sendable {
            let page = NIOLockedValueBox<PFN?>(nil)
            func copiesInFlight(_ pfn: PFN) -> CopyDirections { page.withLockedValue { $0 } == pfn ? .into : [] }
        }
        let rig = try CheckedRig()
        let engine = StuckCopy()
        rig.checker.register(engine)
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            engine.page.withLockedValue { $0 = rig.dst[0].page }
            try migrateVMAPages(&args)
            migrateVMAFinalize(&args)                                           // the bug: no fence wait
        }
        #expect(rig.rules == [.finalizeWithCopyInFlight: 1])
        #expect(rig.checker.violations.first?.address == rig.a)
        rig.checker.unregister(engine)
    }

    @Test func violationsCanBeLoggedCountedAndReset() throws {
        let rig = try CheckedRig()
        let page = try #require(rig.memory.allocPage())
        rig.memory.unlockPage(page)
        rig.memory.putPage(page)
        rig.memory.putPage(page)
        #expect(rig.checker.violationCount == 2 && rig.checker.count(of: .refcountUnderflow) == 1)
        let drained = rig.checker.reset()
        #expect(drained.map(\.rule) == [.unlockOfUnlockedPage, .refcountUnderflow])
        #expect(rig.checker.violationCount == 0 && rig.checker.violations.isEmpty)
        #expect(drained[1].description.contains("refcount-underflow"))
    }
}
