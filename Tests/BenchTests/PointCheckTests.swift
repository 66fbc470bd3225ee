import Foundation
import Testing
@testable import dmem_bench

/// Values that are each valid but cannot run together are rejected when the command is
/// parsed, before the first point runs, with the point and the reason; and options that
/// would be silently ignored or clamped are refused.
@Suite struct PointCheckTests {
    @Test func crossParameterProblemsFailBeforeTheFirstPoint() {
        #expect(parseError(["run", "copy", "--set", "page-size=3000"])
            == "copy (page-size=3000): total 128M must be a positive multiple of page-size 3000")
        #expect(parseError(["run", "migrate", "--sweep", "total=4M,3M"])
            == "migrate (total=3M): total 3M must be a positive multiple of 2M")
        #expect(parseError(["run", "copy", "--set", "link=warp"])
            == "copy (link=warp): 'warp' is not a valid link (expected \(LinkSpec.help))")
        #expect(parseError(["suite", "--only", "copy", "migrate", "--dry-run"]) == nil)
    }

    /// `thrash` and `race` once checked their points only when each ran: a sweep whose last
    /// point clashed failed after the others had run (exit status 1, not a usage error).
    @Test func thrashAndRacePointsAreCheckedBeforeTheFirstRuns() {
        #expect(parseError(["run", "thrash", "--sweep", "prefetch=off,sequential", "--set", "fault-around=2"])
            == "thrash (fault-around=2 prefetch=sequential): fault-around and prefetch=sequential both size CPU faults: use one of them")
        #expect(parseError(["run", "thrash", "--set", "remote-link=warp"])
            == "thrash (remote-link=warp): 'warp' is not a valid link (expected \(LinkSpec.help))")
        #expect(parseError(["run", "race", "--sweep", "pages=64,17", "--set", "target=40"])
            == "race (target=40 pages=17): target must be a page of the range: 0..<17")
        #expect(parseError(["run", "race", "--set", "vram=17"])
            == "race (vram=17): vram must be a multiple of 16 pages in 16...1024 (got 17)")
        #expect(parseError(["run", "race", "--set", "flow=mirror-read"])
            == "race (flow=mirror-read): flow mirror-read runs on --driver mirror, not nouveau")
        #expect(parseError(["run", "race", "--set", "step=nope"])?.hasPrefix("race (step=nope): unknown step 'nope'") == true)
        #expect(parseError(["run", "race", "--set", "driver=mirror", "flow=mirror-read", "target=20", "step=setupBegin"]) == nil)
        #expect(parseError(["run", "thrash", "--set", "prefetch=sequential", "remote-link=pcie4"]) == nil)
        // A custom link: its comma would split the value, so --set and --sweep take '@'.
        #expect(parseError(["run", "thrash", "--set", "remote-link=16@5us"]) == nil)
        #expect(parseError(["run", "copy", "--sweep", "link=pcie4,16@5us,none"]) == nil)
    }

    @Test func anExplicitSpanBelowTotalIsRejectedNotRaised() {
        #expect(parseError(["run", "copy", "--set", "total=1M", "span=512K"])
            == "copy (total=1M span=512K): span 512K is smaller than total 1M: the frames of one pass must fit in it")
        #expect(parseError(["run", "memcpy", "--set", "span=8M"])
            == "memcpy (span=8M): span 8M is smaller than total 256M: the pages must fit in it")
        // A --quick span (32M) below an explicit total is the scenario's choice: raised to the total.
        #expect(parseError(["run", "copy", "--quick", "--set", "total=64M"]) == nil)
    }

    /// A span exactly as large as total holds the pages: it is accepted, not refused as too small.
    @Test func aSpanEqualToTotalIsAccepted() {
        #expect(parseError(["run", "memcpy", "--set", "total=1M", "span=1M"]) == nil)
        #expect(parseError(["run", "copy", "--set", "total=1M", "span=1M"]) == nil)
    }

    @Test func quickValuesAreCheckedAsTheyWillRun() {
        // 3M does not divide the quick total (8M); it divides an explicit 6M.
        #expect(parseError(["run", "copy", "--quick", "--set", "page-size=3M"])
            == "copy (page-size=3M): total 8M must be a positive multiple of page-size 3M")
        #expect(parseError(["run", "copy", "--quick", "--set", "page-size=3M", "total=6M"]) == nil)
    }

    @Test func copyCommandRangesAreCheckedAtParseTime() {
        #expect(parseError(["copy", "--batch", "0"]) == "--batch must be in 1...1048576 (got 0)")
        #expect(parseError(["copy", "--batch", "2000000", "--total", "4M"]) == "--batch must be in 1...1048576 (got 2000000)")
        #expect(parseError(["copy", "--channels", "65"]) == "--channels must be in 1...64 (got 65)")
        #expect(parseError(["copy", "--repeats", "0"]) == "--repeats must be in 1...100 (got 0)")
        #expect(parseError(["copy", "--batch", "64", "--total", "4M"]) == nil)
    }

    @Test func optionsThatWouldBeIgnoredAreRefused() {
        #expect(parseError(["migrate", "--workers", "4"])
            == "--workers sets the mapped backend's threads: use it with --backend mapped or --fault-backend mapped")
        #expect(parseError(["migrate", "--workers", "4", "--backend", "mapped"]) == nil)
        #expect(parseError(["migrate", "--workers", "4", "--fault-backend", "mapped"]) == nil)
        #expect(parseError(["mm", "--sweep", "--pages", "100"]) == "--sweep chooses the page counts itself; leave out --pages")
        #expect(parseError(["mm", "--sweep"]) == nil)
    }

    @Test func aMissingVRAMDirectoryIsRejectedBeforeRunning() throws {
        let missing = "/nonexistent-dmem-vram"
        let message = "vram-dir \(missing) does not exist (mount a tmpfs there first, see README \"Huge pages for VRAM\")"
        #expect(parseError(["run", "copy", "--set", "vram-dir=\(missing)"]) == "copy (vram-dir=\(missing)): \(message)")
        #expect(parseError(["run", "migrate", "--set", "vram-dir=\(missing)"]) == "migrate (vram-dir=\(missing)): \(message)")
        #expect(parseError(["copy", "--vram-dir", missing]) == "--" + message)
        #expect(parseError(["migrate", "--vram-dir", missing]) == "--" + message)
        #expect(parseError(["torture", "--vram-dir", missing]) == "--" + message)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("dmem-vram-\(UUID().uuidString)").path
        #expect(FileManager.default.createFile(atPath: file, contents: Data()))
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(parseError(["copy", "--vram-dir", file]) == "--vram-dir \(file) is not a directory")
        #expect(parseError(["copy", "--vram-dir", FileManager.default.temporaryDirectory.path]) == nil)
    }
}
