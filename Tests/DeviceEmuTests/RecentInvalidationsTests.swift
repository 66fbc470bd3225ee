@testable import DeviceEmu
import Testing

/// `RecentInvalidations`, the ranges a batch checks at map time.
@Suite struct RecentInvalidationsTests {
    @Test func tellsNoneSomeAndAll() {
        var r = RecentInvalidations()
        let mark = r.mark()
        #expect(r.overlapping(0x10000 ..< 0x20000, since: mark) == .none)
        r.record(0x30000 ..< 0x31000)
        #expect(r.overlapping(0x10000 ..< 0x20000, since: mark) == .none)
        r.record(0x11000 ..< 0x12000)
        #expect(r.overlapping(0x10000 ..< 0x20000, since: mark) == .some)
        #expect(r.covers(0x11000, since: mark) && !r.covers(0x12000, since: mark))
        #expect(r.overlapping(0x10000 ..< 0x20000, since: r.mark()) == .none, "a later mark sees none")
        r.record(0 ..< 0x40000)
        #expect(r.overlapping(0x10000 ..< 0x20000, since: mark) == .all)
    }

    @Test func tooManyToTellIsAll() {
        var r = RecentInvalidations()
        let mark = r.mark()
        // Apart from each other: touching ranges would widen one record.
        for k in 0..<RecentInvalidations.capacity { r.record(UInt64(0x100000 + k * 0x2000) ..< UInt64(0x101000 + k * 0x2000)) }
        #expect(r.overlapping(0x10000 ..< 0x20000, since: mark) == .none, "capacity ranges are all still known")
        r.record(0x900000 ..< 0x901000)
        #expect(r.overlapping(0x10000 ..< 0x20000, since: mark) == .all)
        #expect(r.covers(0x10000, since: mark))
    }

    /// Page-by-page invalidations (an eviction's rmap walk) widen one record while no batch
    /// took a mark in between; a mark between them keeps them apart.
    @Test func touchingRangesWidenTheLatestUnlessMarkedBetween() {
        var r = RecentInvalidations()
        let mark = r.mark()
        for k in 0..<(2 * RecentInvalidations.capacity) {
            r.record(UInt64(0x100000 + k * 0x1000) ..< UInt64(0x101000 + k * 0x1000))
        }
        #expect(r.overlapping(0x10000 ..< 0x20000, since: mark) == .none, "one widened range, still known")
        #expect(r.covers(0x10f000, since: mark) && !r.covers(0x110000, since: mark))
        let between = r.mark()
        r.record(0x110000 ..< 0x111000)
        #expect(r.overlapping(0x100000 ..< 0x110000, since: between) == .none,
                "the range recorded before the mark is not widened into what it sees")
        #expect(r.overlapping(0x110000 ..< 0x111000, since: between) == .all)
        #expect(r.covers(0x110000, since: mark))
    }
}
