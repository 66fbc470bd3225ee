import Foundation
import Testing
@testable import HostMM

/// Audit of checked mode as a driver author relies on it: each mistake in the variants
/// that hide it (last page of a batch, after the pages step, the 2017 API, the PFN path),
/// reported with its rule, page and the driver's call site, and the machine left
/// consistent; and unusual but correct drivers reported clean.
@Suite struct CheckedAuditTests {
    static let throwing = CheckedMode(isEnabled: true, throwsViolations: true)

    /// Every invariant holds and no page is left locked or leaked.
    static func consistent(_ rig: CheckedRig) -> [String] { rig.memory.checkInvariants(addressSpaces: [rig.mm]) }

    // MARK: Mistakes in the variants that hide them

    @Test(arguments: [CheckedMode.on, throwing])
    func unlockedDestinationOnTheLastPageOfABatch(mode: CheckedMode) throws {
        let rig = try CheckedRig(pages: 8, mode: mode)
        var line: UInt = 0
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            rig.memory.unlockPage(rig.dst[7].page!)                              // the bug
            line = #line + 1
            do { try migrateVMAPages(&args) } catch {}
            rig.memory.lockPage(rig.dst[7].page!)
            // The driver's error path: give back every destination; finalize restores the sources.
            for i in 0..<8 { if let p = rig.dst[i].page { rig.memory.unlockPage(p); rig.memory.putPage(p) }; rig.dst[i] = [] }
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.destinationNotLocked: 1])
        let v = try #require(rig.checker.violations.first)
        #expect(v.address == rig.a + UInt64(7 * pageSize))
        #expect(v.site == "HostMMTests/CheckedAuditTests.swift:\(line)")
        #expect(Self.consistent(rig) == [])
        #expect(try rig.dataIntact())
    }

    @Test func unlockingADestinationBetweenPagesAndFinalizeNamesTheFinalizeCall() throws {
        let rig = try CheckedRig(pages: 4)
        var line: UInt = 0
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            try migrateVMAPages(&args)
            rig.memory.unlockPage(rig.dst[3].page!)                              // the bug
            line = #line + 1
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.unlockOfUnlockedPage: 1])
        let v = try #require(rig.checker.violations.first)
        #expect(v.pfn == rig.dst[3].page)
        #expect(v.site == "HostMMTests/CheckedAuditTests.swift:\(line)")
        #expect(Self.consistent(rig) == [])
        #expect(try rig.dataIntact())
    }

    @Test func droppingADestinationReferenceBeforeFinalizeNamesTheFinalizeCall() throws {
        let rig = try CheckedRig(pages: 4)
        var line: UInt = 0
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            rig.src[2].remove(.migrate)                                          // the driver gives up on page 2…
            try migrateVMAPages(&args)
            rig.memory.unlockPage(rig.dst[2].page!)
            rig.memory.putPage(rig.dst[2].page!)                                 // …and frees its destination: the bug
            rig.memory.lockPage(rig.dst[2].page!)
            line = #line + 1
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.destinationWithoutMigrate: 1, .refcountUnderflow: 1])
        let v = try #require(rig.checker.violations.first { $0.rule == .refcountUnderflow })
        #expect(v.site == "HostMMTests/CheckedAuditTests.swift:\(line)")
    }

    @Test func setupBeforeFinalizeInRecordingModeLeavesNothingLocked() throws {
        let rig = try CheckedRig()
        try rig.migration { args in
            try migrateVMASetup(&args)
            var again = rig.args()
            try migrateVMASetup(&again)                                          // the bug: the first is lost
            rig.device.copyToDevice(rig.src, rig.dst, again.npages)
            try migrateVMAPages(&again)
            migrateVMAFinalize(&again)
        }
        #expect(rig.rules == [.setupBeforeFinalize: 1])
        #expect(Self.consistent(rig) == [])
        #expect(rig.checker.unfinishedMigrations == 0)
    }

    /// Recording mode finishes an abandoned migration before a new setup reuses its arrays;
    /// a destination that finish frees is the driver's again at once, and another thread
    /// may hand it to a migration in progress right away (here from `pageFree`): the
    /// abandoned migration is over, so that pages step is clean and keeps the page.
    @Test func aDestinationFreedWhileFinishingAnAbandonedMigrationMayBeReusedAtOnce() throws {
        let rig = try CheckedRig()
        let half = UInt64(2 * pageSize)
        let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 2)
        let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 2)
        defer { src.deallocate(); dst.deallocate() }
        src.initialize(repeating: [])
        dst.initialize(repeating: [])
        func args(_ k: Int, _ s: UnsafeMutableBufferPointer<MigratePFN>, _ d: UnsafeMutableBufferPointer<MigratePFN>) -> MigrateVMA {
            MigrateVMA(vma: rig.mm.findVMA(rig.a), start: rig.a + UInt64(k) * half, end: rig.a + UInt64(k + 1) * half,
                       src: s, dst: d, pgmapOwner: rig.device.owner, flags: .selectSystem)
        }
        var reused: PFN?
        try rig.locked {
            var first = args(0, rig.src, rig.dst)
            try migrateVMASetup(&first)
            rig.device.copyToDevice(rig.src, rig.dst, 2)
            try migrateVMAPages(&first)
            rig.src[0].remove(.migrate)               // its copy failed after the pages step: finalize frees dst[0]
            var second = args(1, src, dst)
            try migrateVMASetup(&second)
            rig.device.copyToDevice(src, dst, 2)
            rig.device.afterPageFree = { _ in        // the driver's other thread takes the page freed just now
                rig.device.afterPageFree = nil
                guard let page = rig.device.allocPage(), let own = dst[0].page else { return }
                memcpy(rig.device.bytes(page), rig.memory.bytes(src[0].page!)!, pageSize)
                dst[0] = MigratePFN(pfn: page)
                reused = page
                try? migrateVMAPages(&second)
                rig.memory.unlockPage(own)
                rig.memory.putPage(own)
                migrateVMAFinalize(&second)
            }
            var again = args(0, rig.src, rig.dst)
            try migrateVMASetup(&again)              // the bug: `first` was never finalized
            rig.device.copyToDevice(rig.src, rig.dst, 2)
            try migrateVMAPages(&again)
            migrateVMAFinalize(&again)
        }
        let page = try #require(reused)
        #expect(rig.rules == [.setupBeforeFinalize: 1])
        #expect(rig.mm.pageTableEntry(rig.a + half).kind == .devicePrivate)
        #expect(rig.mm.pageTableEntry(rig.a + half).pfn == page)
        #expect(Self.consistent(rig) == [])
        #expect(rig.checker.unfinishedMigrations == 0)
        #expect(rig.device.freePageCount == 64 - 4)
        #expect(try rig.dataIntact())
    }

    /// Recorded in recording mode (the first migration is lost), and nothing stays locked.
    @Test func setupBeforeFinalizeOnAShorterRangeLeavesNothingLocked() throws {
        let rig = try CheckedRig()
        try rig.migration { args in
            try migrateVMASetup(&args)
            var other = MigrateVMA(vma: rig.mm.findVMA(rig.a), start: rig.a, end: rig.a + UInt64(pageSize),
                                   src: rig.src, dst: rig.dst, pgmapOwner: rig.device.owner, flags: .selectSystem)
            try migrateVMASetup(&other)                                          // the bug
            migrateVMAFinalize(&other)
        }
        #expect(rig.rules == [.setupBeforeFinalize: 1])
        #expect(Self.consistent(rig) == [])
        #expect(try rig.dataIntact())
    }

    /// The PFN path (eviction): a second `migrateDeviceRange` on arrays whose migration ran its
    /// pages step but was never finalized. Recording mode finishes that migration into the
    /// destinations its pages step took (they used to stay locked and referenced for ever: the
    /// PFN path's setup has no `dst` to find them in), and the driver's `dst` array, which the
    /// PFN path's setup does not clear, still names them: with `clears` false the driver sets
    /// only the entries it migrates again (none: the pages are in RAM now), so its finalize
    /// meets the stale ones, which are dropped instead of released a second time.
    @Test(arguments: [false, true])
    func setupBeforeFinalizeOnThePFNPathLeavesNoDestinationBehind(clears: Bool) throws {
        let rig = try CheckedRig(pages: 4)
        try rig.device.migrateToDevice(rig.mm, rig.a, rig.a + UInt64(4 * pageSize))
        let free = rig.memory.freeRAMPageCount
        var collected: [Int] = []
        try withBuffers(64) { src, dst in
            func evict() throws {
                try rig.memory.migrateDeviceRange(src, start: rig.device.pagemap.firstPFN, npages: 64)
                if clears { for i in 0..<64 { dst[i] = [] } }
                collected.append((0..<64).filter { src[$0].contains(.migrate) }.count)
                for i in 0..<64 where src[i].contains(.migrate) { rig.copyToRAM(src, dst, i) }
                try rig.memory.migrateDevicePages(src: src, dst: dst, npages: 64)
            }
            try evict()
            try evict()                                                          // the bug: the first is never finalized
            rig.memory.migrateDeviceFinalize(src: src, dst: dst, npages: 64)
        }
        #expect(collected == [4, 0])                                             // the first eviction was finished
        #expect(rig.rules == [.setupBeforeFinalize: 1])
        #expect(Self.consistent(rig) == [])
        #expect(rig.checker.unfinishedMigrations == 0)
        #expect(rig.memory.freeRAMPageCount == free - 4)                         // the four pages, nothing else held
        #expect(rig.device.freePageCount == 64)
        #expect(try rig.dataIntact())
    }

    /// The stale `dst` entries that recording mode drops after it finished an abandoned
    /// migration on the PFN path are told from the driver's new choices by page number
    /// alone. A destination that finish released comes back from the allocator (LIFO) at
    /// once: the next migration's driver may lock it as its new destination at the same
    /// index, and if that page then fails to move (an extra reference on its source, taken
    /// between setup and the pages step), finalize must release it, not drop it as stale.
    @Test func aRecoveredDestinationReallocatedAtTheSameIndexIsReleasedByFinalize() throws {
        let rig = try CheckedRig(pages: 4)
        try rig.device.migrateToDevice(rig.mm, rig.a, rig.a + UInt64(4 * pageSize))
        let free = rig.memory.freeRAMPageCount
        var destinations: [[Int: PFN]] = []
        try withBuffers(64) { src, dst in
            func evict() throws {
                try rig.memory.migrateDeviceRange(src, start: rig.device.pagemap.firstPFN, npages: 64)
                let h = try #require((0..<64).first { src[$0].contains(.migrate) })
                var chosen: [Int: PFN] = [:]
                for i in 0..<64 where src[i].contains(.migrate) { chosen[i] = rig.copyToRAM(src, dst, i) }
                destinations.append(chosen)
                let held = src[h].page!
                rig.memory.getPage(held)                                         // a racing user: this page stays
                try rig.memory.migrateDevicePages(src: src, dst: dst, npages: 64)
                rig.memory.putPage(held)
            }
            try evict()
            try evict()                                                          // the first is never finalized
            rig.memory.migrateDeviceFinalize(src: src, dst: dst, npages: 64)
        }
        #expect(destinations.map(\.count) == [4, 1])
        let (index, page) = try #require(destinations.last?.first)
        #expect(destinations.first?[index] == page)                              // the premise: same page, same index
        #expect(rig.rules == [.setupBeforeFinalize: 1])
        #expect(Self.consistent(rig) == [])
        #expect(rig.checker.unfinishedMigrations == 0)
        #expect(rig.memory.freeRAMPageCount == free - 3)                         // three pages moved, nothing else held
        #expect(rig.device.freePageCount == 63)
        #expect(!rig.memory.isPageLocked(page))
        #expect(try rig.dataIntact())
    }

    /// The other side of the stale-destination rule: when no pages step judged the
    /// recovered entries (the new collection found nothing, and the driver went straight
    /// to finalize), a stale `dst` entry is dropped even though its page is locked — by
    /// whoever holds it now (here the page the abandoned migration moved the data into,
    /// locked by another user). Releasing it would unlock that user's page and drop the
    /// reference of its mapping.
    @Test func aStaleRecoveredDestinationLockedByAnotherUserIsNotReleasedByFinalize() throws {
        let rig = try CheckedRig(pages: 4)
        try rig.device.migrateToDevice(rig.mm, rig.a, rig.a + UInt64(4 * pageSize))
        var held = PFN(0)
        try withBuffers(64) { src, dst in
            try rig.memory.migrateDeviceRange(src, start: rig.device.pagemap.firstPFN, npages: 64)
            for i in 0..<64 where src[i].contains(.migrate) { rig.copyToRAM(src, dst, i) }
            try rig.memory.migrateDevicePages(src: src, dst: dst, npages: 64)
            // Never finalized: the next setup finishes it, and the data is in RAM.
            try rig.memory.migrateDeviceRange(src, start: rig.device.pagemap.firstPFN, npages: 64)
            #expect((0..<64).allSatisfy { !src[$0].contains(.migrate) })
            let i = try #require((0..<64).first { dst[$0].page != nil })
            held = dst[i].page!
            #expect(rig.memory.trylockPage(held))                                // another user holds it now
            let refs = rig.memory.refcount(held)
            rig.memory.migrateDeviceFinalize(src: src, dst: dst, npages: 64)     // nothing collected: no pages step
            #expect(rig.memory.isPageLocked(held))
            #expect(rig.memory.refcount(held) == refs)
            rig.memory.unlockPage(held)
        }
        #expect(rig.rules == [.setupBeforeFinalize: 1])
        #expect(Self.consistent(rig) == [])
        #expect(rig.checker.unfinishedMigrations == 0)
        #expect(try rig.dataIntact())
    }

    @Test func sourceWrittenBetweenPagesAndFinalizeOnTheLastPage() throws {
        let rig = try CheckedRig(pages: 8)
        var line: UInt = 0
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            try migrateVMAPages(&args)
            rig.memory.bytes(rig.src[7].page!)!.storeBytes(of: 0xBAD, toByteOffset: 4092, as: UInt32.self)  // the bug
            line = #line + 1
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.sourceModifiedAfterSetup: 1])
        let v = try #require(rig.checker.violations.first)
        #expect(v.address == rig.a + UInt64(7 * pageSize) && v.site == "HostMMTests/CheckedAuditTests.swift:\(line)")
        #expect(Self.consistent(rig) == [])
    }

    // MARK: Correct but unusual drivers

    @Test func pipelinedBatchesOnTwoArrayPairsAreClean() throws {
        let rig = try CheckedRig(pages: 8)
        try withBuffers(4) { s2, d2 in
            try rig.locked {
                let vma = rig.mm.findVMA(rig.a)
                var one = MigrateVMA(vma: vma, start: rig.a, end: rig.a + UInt64(4 * pageSize), src: rig.src, dst: rig.dst,
                                     pgmapOwner: rig.device.owner, flags: .selectSystem)
                var two = MigrateVMA(vma: vma, start: rig.a + UInt64(4 * pageSize), end: rig.a + UInt64(8 * pageSize),
                                     src: s2, dst: d2, pgmapOwner: rig.device.owner, flags: .selectSystem)
                try migrateVMASetup(&one)
                rig.device.copyToDevice(rig.src, rig.dst, 4)
                try migrateVMAPages(&one)
                try migrateVMASetup(&two)
                rig.device.copyToDevice(s2, d2, 4)
                try migrateVMAPages(&two)
                migrateVMAFinalize(&one)
                migrateVMAFinalize(&two)
            }
        }
        #expect(rig.rules == [:], "\(rig.checker.violations)")
        #expect(Self.consistent(rig) == [])
        #expect(try rig.dataIntact())
    }

    @Test func allOrNothingRefusalAndHandledCopyFailuresAreClean() throws {
        let rig = try CheckedRig(pages: 8)
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            for i in 0..<8 { if let p = rig.dst[i].page { rig.memory.unlockPage(p); rig.memory.putPage(p) }; rig.dst[i] = [] }
            try migrateVMAPages(&args)
            migrateVMAFinalize(&args)
        }
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            for i in [0, 7] { rig.memory.unlockPage(rig.dst[i].page!); rig.memory.putPage(rig.dst[i].page!); rig.dst[i] = [] }
            try migrateVMAPages(&args)
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [:], "\(rig.checker.violations)")
        #expect(Self.consistent(rig) == [])
        #expect(try rig.dataIntact())
    }

    @Test func coherentDeviceMemoryRoundTripIsClean() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 16, checked: .on)
        let device = try TestDevice(memory: memory, pageCount: 64, type: .deviceCoherent)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 8 * pageSize)
        for p in 0..<8 { try mm.write(at: a + UInt64(p * pageSize), bytes: pattern(p, count: pageSize)) }
        #expect(try device.migrateToDevice(mm, a, a + UInt64(8 * pageSize)) == 8)
        #expect(try mm.read(at: a, count: pageSize) == pattern(0, count: pageSize))
        let pinned = try mm.pinUserPages(a + UInt64(pageSize), count: 1, write: true, longterm: true)
        memory.unpinUserPages(pinned)
        #expect(try device.evictAll() >= 6)
        for p in 0..<8 { #expect(try mm.read(at: a + UInt64(p * pageSize), count: pageSize) == pattern(p, count: pageSize)) }
        #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations ?? [])")
        #expect(memory.checkInvariants(addressSpaces: [mm]) == [])
    }

    // MARK: The 2017 API, eviction, frees

    /// A 2017 driver whose allocAndCopy forgets to lock its last destination.
    final class ForgetfulLegacyOps: MigrateVMAOps {
        let device: TestDevice
        init(_ device: TestDevice) { self.device = device }
        func allocAndCopy(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeMutableBufferPointer<MigratePFN>,
                          start: UInt64, end: UInt64) {
            device.copyToDevice(UnsafeMutableBufferPointer(mutating: src), dst, src.count)
            device.memory.unlockPage(dst[dst.count - 1].page!)                   // the bug
        }
        func finalizeAndMap(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeBufferPointer<MigratePFN>,
                            start: UInt64, end: UInt64) {}
    }

    @Test(arguments: [CheckedMode.on, throwing])
    func legacyDriverWithAnUnlockedDestinationIsReportedAndRestored(mode: CheckedMode) throws {
        let rig = try CheckedRig(pages: 4, mode: mode)
        let ops = ForgetfulLegacyOps(rig.device)
        var line: UInt = 0
        var thrown: (any Error)?
        rig.locked {
            line = #line + 1
            do { try migrateVMA(ops: ops, vma: rig.mm.findVMA(rig.a), start: rig.a, end: rig.a + UInt64(4 * pageSize), src: rig.src, dst: rig.dst) } catch { thrown = error }
        }
        #expect(thrown != nil)
        #expect(rig.rules == [.destinationNotLocked: 1])
        let v = try #require(rig.checker.violations.first)
        #expect(v.address == rig.a + UInt64(3 * pageSize) && v.site == "HostMMTests/CheckedAuditTests.swift:\(line)")
        #expect(Self.consistent(rig) == [])
        #expect(rig.device.freePageCount == 64)
        #expect(try rig.dataIntact())
    }

    @Test(arguments: [CheckedMode.on, throwing])
    func evictionWithAnUnlockedDestinationOnTheLastPage(mode: CheckedMode) throws {
        let rig = try CheckedRig(pages: 4, mode: mode)
        try rig.device.migrateToDevice(rig.mm, rig.a, rig.a + UInt64(4 * pageSize))
        var line: UInt = 0
        var last: PFN?
        try withBuffers(64) { src, dst in
            try rig.memory.migrateDeviceRange(src, start: rig.device.pagemap.firstPFN, npages: 64)
            for i in 0..<64 where src[i].contains(.migrate) { last = rig.copyToRAM(src, dst, i) }
            rig.memory.unlockPage(last!)                                         // the bug
            line = #line + 1
            do { try rig.memory.migrateDevicePages(src: src, dst: dst, npages: 64) } catch {}
            for i in 0..<64 { if let p = dst[i].page { if p != last { rig.memory.unlockPage(p) }; rig.memory.putPage(p) }; dst[i] = [] }
            rig.memory.migrateDeviceFinalize(src: src, dst: dst, npages: 64)
        }
        #expect(rig.rules == [.destinationNotLocked: 1])
        let v = try #require(rig.checker.violations.first)
        #expect(v.pfn == last && v.address == rig.a + UInt64(3 * pageSize))
        #expect(v.site == "HostMMTests/CheckedAuditTests.swift:\(line)")
        #expect(Self.consistent(rig) == [])
        #expect(try rig.dataIntact())
    }

    final class Mapped: DeviceMappingOracle, @unchecked Sendable {
        let pfn: PFN
        init(_ pfn: PFN) { self.pfn = pfn }
        func deviceMapping(of pfn: PFN) -> UInt64? { pfn == self.pfn ? 0x1000 : nil }
    }

    @Test func aDriverFreeingAPageItsDeviceStillMapsIsNamedAtItsPut() throws {
        let rig = try CheckedRig()
        let page = try #require(rig.device.allocPage())
        let oracle = Mapped(page)
        rig.checker.register(oracle)
        rig.memory.unlockPage(page)
        rig.memory.putPage(page); let line = #line                               // the bug
        #expect(rig.rules == [.devicePTEMapsFreedPage: 1])
        #expect(rig.checker.violations.first?.site == "HostMMTests/CheckedAuditTests.swift:\(line)")
        rig.checker.unregister(oracle)
    }
}
