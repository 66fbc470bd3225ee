import Foundation
import Testing
@testable import HostMM

/// Checked mode's protocol rules at their edges: one-page migrations, abandoned migrations
/// whose pages step never ran, and pages steps refused for a bad destination.
@Suite struct CheckedProtocolGapTests {
    private static let throwing = CheckedMode(isEnabled: true, throwsViolations: true)

    private func kinds(_ rig: CheckedRig) -> [PageTableEntry.Kind] {
        (0..<rig.pages).map { rig.mm.pageTableEntry(rig.a + UInt64($0 * pageSize)).kind }
    }

    /// A migration that collected a single page and was never finalized is abandoned too:
    /// a second setup on its arrays is refused.
    @Test func setupBeforeFinalizeOfAOnePageMigrationIsReported() throws {
        let rig = try CheckedRig(pages: 1, mode: Self.throwing)
        try rig.migration { args in
            try migrateVMASetup(&args)
            #expect(args.cpages == 1)
            var again = rig.args()
            #expect(throws: HostMMError.self) { try migrateVMASetup(&again) }   // the bug, refused
            migrateVMAFinalize(&args)
        }
        #expect(rig.rules == [.setupBeforeFinalize: 1])
        #expect(try rig.dataIntact())
    }

    /// Setup again on arrays whose migration has destinations but never ran its pages
    /// step: checked mode finishes the old one with its sources restored (the CPU keeps
    /// its pages; the destinations go back to the driver), not mapped to the destinations.
    @Test func anAbandonedMigrationWithoutItsPagesStepRestoresTheSources() throws {
        let rig = try CheckedRig()
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            var again = rig.args()
            try migrateVMASetup(&again)                                          // the bug
            migrateVMAFinalize(&again)
        }
        #expect(rig.rules == [.setupBeforeFinalize: 1])
        #expect(kinds(rig) == Array(repeating: .present, count: rig.pages))
        #expect(rig.device.freePageCount == 64)
        #expect(try rig.dataIntact())
        #expect(rig.memory.checkInvariants(addressSpaces: [rig.mm]) == [])
    }

    /// A pages step refused for an unlocked destination did not run: a finalize that
    /// follows with `.migrate` still on the sources is "finalize without pages", and the
    /// sources are restored rather than replaced by destinations that never got mapped.
    @Test func aPagesStepRefusedForAnUnlockedDestinationCountsAsNotRun() throws {
        let rig = try CheckedRig()
        try rig.migration { args in
            try rig.setupAndCopy(&args)
            let first = try #require(rig.dst[0].page)
            rig.memory.unlockPage(first)                                         // the bug
            #expect(throws: HostMMError.invalidArgument) { try migrateVMAPages(&args) }
            rig.memory.lockPage(first)
            migrateVMAFinalize(&args)                                            // a second bug: sources still armed
        }
        #expect(rig.rules == [.destinationNotLocked: 1, .finalizeWithoutPages: 1])
        #expect(kinds(rig) == Array(repeating: .present, count: rig.pages))
        #expect(rig.device.freePageCount == 64)
        #expect(try rig.dataIntact())
    }

    /// On the PFN path (no `exact` count), a pages step one entry short of what setup
    /// filled is reported and runs over setup's count: the last page moves too.
    @Test func aPFNPathPagesStepOneEntryShortIsReportedAndSetupsCountUsed() throws {
        let rig = try CheckedRig(pages: 4)
        try rig.device.migrateToDevice(rig.mm, rig.a, rig.a + UInt64(4 * pageSize))
        let first = rig.device.pagemap.firstPFN
        let last = (0..<4).map { rig.mm.pageTableEntry(rig.a + UInt64($0 * pageSize)).pfn.rawValue }.max()!
        let n = Int(last - first.rawValue) + 1
        try withBuffers(n) { src, dst in
            try rig.memory.migrateDeviceRange(src, start: first, npages: n)
            #expect(src[n - 1].contains(.migrate))
            for i in 0..<n where src[i].contains(.migrate) { rig.copyToRAM(src, dst, i) }
            try rig.memory.migrateDevicePages(src: src, dst: dst, npages: n - 1)   // the bug: one short
            rig.memory.migrateDeviceFinalize(src: src, dst: dst, npages: n)
        }
        #expect(rig.rules == [.wrongArrayLength: 1])
        #expect(kinds(rig) == Array(repeating: .present, count: 4))
        #expect(rig.device.freePageCount == 64)
        #expect(try rig.dataIntact())
    }

    /// A device mapping of one page, for the mapping oracle.
    private final class OneMapping: DeviceMappingOracle, @unchecked Sendable {
        let pfn: PFN
        init(_ pfn: PFN) { self.pfn = pfn }
        func deviceMapping(of pfn: PFN) -> UInt64? { pfn == self.pfn ? 0x7000 : nil }
    }

    /// A driver that got no destination at all finalizes right after setup (legal: nothing
    /// moves). A device entry mapping a source is then no "migrated page under a device
    /// mapping": the page did not move.
    @Test func aSourceWithoutDestinationIsNoMigratedPageUnderADeviceMapping() throws {
        let rig = try CheckedRig()
        let oracle = OneMapping(rig.mm.pageTableEntry(rig.a).pfn)
        rig.checker.register(oracle)
        try rig.migration { args in
            try migrateVMASetup(&args)
            #expect(args.cpages == 4)
            migrateVMAFinalize(&args)                                            // no memory: nothing moves
        }
        #expect(rig.rules == [:])
        #expect(kinds(rig) == Array(repeating: .present, count: 4))
        #expect(try rig.dataIntact())
        withExtendedLifetime(oracle) {}
    }

    /// A pages step refused for a fatal mistake gives up its claims on its destinations:
    /// when the driver frees them and another migration, while the first is still to be
    /// finalized, gets the same pages, they are no "destination set twice".
    @Test func destinationsOfARefusedPagesStepAreNotClaimedAnyMore() throws {
        let rig = try CheckedRig()
        func args(_ first: Int, _ src: UnsafeMutableBufferPointer<MigratePFN>,
                  _ dst: UnsafeMutableBufferPointer<MigratePFN>) -> MigrateVMA {
            let start = rig.a + UInt64(first * pageSize)
            return MigrateVMA(vma: rig.mm.findVMA(rig.a), start: start, end: start + UInt64(2 * pageSize), src: src, dst: dst,
                              pgmapOwner: rig.device.owner, flags: .selectSystem)
        }
        try withBuffers(2) { srcA, dstA in
            try withBuffers(2) { srcB, dstB in
                try rig.locked {
                    var a = args(0, srcA, dstA), b = args(2, srcB, dstB)
                    try migrateVMASetup(&a)
                    rig.device.copyToDevice(srcA, dstA, 2)
                    let given = [dstA[0].page!, dstA[1].page!]
                    rig.memory.unlockPage(given[0])                               // the bug: fatal
                    #expect(throws: HostMMError.invalidArgument) { try migrateVMAPages(&a) }
                    rig.memory.lockPage(given[0])
                    for i in 0..<2 {                                              // the driver's error path
                        rig.memory.unlockPage(given[i])
                        rig.memory.putPage(given[i])
                        dstA[i] = []
                        srcA[i].remove(.migrate)
                    }
                    try migrateVMASetup(&b)
                    rig.device.copyToDevice(srcB, dstB, 2)
                    #expect(Set([dstB[0].page!, dstB[1].page!]) == Set(given))      // the same pages again
                    try migrateVMAPages(&b)
                    migrateVMAFinalize(&b)
                    migrateVMAFinalize(&a)
                }
            }
        }
        #expect(rig.rules == [.destinationNotLocked: 1])
        #expect(kinds(rig) == [.present, .present, .devicePrivate, .devicePrivate])
        #expect(try rig.dataIntact())
    }
}
