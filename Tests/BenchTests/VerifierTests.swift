import DMAEngine
import Testing
@testable import dmem_bench

/// The byte checks behind each scenario's `verified` (or its failure): every one must see
/// a single wrong word anywhere in any page — the last word of the last page included —
/// since a check that skips a page or compares half of one reports a corrupting copy as good.
@Suite struct VerifierTests {
    /// Two 4-page buffers of 4 KiB pages, the destination a copy of the source.
    final class Pages {
        let pageSize = 4096, count = 4
        let src: UnsafeMutableRawPointer, dst: UnsafeMutableRawPointer
        init() {
            src = .allocate(byteCount: pageSize * count, alignment: 4096)
            dst = .allocate(byteCount: pageSize * count, alignment: 4096)
            for p in 0..<count { ScatterLayout.fill(src + p * pageSize, pageIndex: p, pageSize: pageSize, seed: 7) }
            dst.copyMemory(from: src, byteCount: pageSize * count)
        }
        deinit { src.deallocate(); dst.deallocate() }
        /// Flips one byte of destination page `page` at `byte`.
        func corrupt(page: Int, byte: Int) { (dst + page * pageSize + byte).storeBytes(of: 0xEE, as: UInt8.self) }
        var pattern: ScatterPattern {
            ScatterPattern(count: count, pageSize: pageSize,
                           src: .init(id: RegionID(rawValue: 1), base: src, pages: [2, 0, 3, 1]),
                           dst: .init(id: RegionID(rawValue: 2), base: dst, pages: nil))
        }
    }

    /// The copy scenario's check (`ScatterPattern.verify`): a wrong byte in the last page, or in
    /// the second half of a page, fails it.
    @Test(arguments: [(3, 4095), (0, 3000), (1, 0)])
    func copyVerifySeesAWrongByteAnywhere(page: Int, byte: Int) {
        let pages = Pages()
        // Destination page i holds source page pattern.src.page(i): lay it out so first.
        for i in 0..<pages.count {
            (pages.dst + i * pages.pageSize).copyMemory(from: pages.src + pages.pattern.src.page(i) * pages.pageSize,
                                                        byteCount: pages.pageSize)
        }
        #expect(pages.pattern.verify())
        pages.corrupt(page: page, byte: byte)
        #expect(!pages.pattern.verify())
    }

    /// The memcpy, migrate and thrash checks (`ScatterLayout.firstMismatch`) see the page's last word.
    @Test func patternCheckSeesTheLastWordOfAPage() {
        let pages = Pages()
        #expect(ScatterLayout.firstMismatch(pages.dst + 4096, pageIndex: 1, pageSize: 4096, seed: 7) == nil)
        pages.corrupt(page: 1, byte: 4095)
        #expect(ScatterLayout.firstMismatch(pages.dst + 4096, pageIndex: 1, pageSize: 4096, seed: 7) == 511)
        #expect(ScatterLayout.firstMismatch(pages.dst, pageIndex: 1, pageSize: 4096, seed: 7) == 0, "page 0 is not page 1")
    }

    /// The migrate scenario's phase check (`MigrateRun.Pattern.verify`) reads every page: a
    /// wrong byte in any one of them fails the run, naming the page.
    @Test(arguments: [1, 3])
    func migrateVerifyReadsEveryPage(bad: Int) throws {
        let pages = Pages()
        let pattern = MigrateRun.Pattern(seed: 7)
        let read: (Int, UnsafeMutableRawBufferPointer) throws -> Void = { p, buffer in
            buffer.copyMemory(from: UnsafeRawBufferPointer(start: pages.dst + p * 4096, count: 4096))
        }
        try pattern.verify(pages: pages.count, first: 0, what: "test", read)
        pages.corrupt(page: bad, byte: 8)
        let error = try #require(throws: ScenarioError.self) { try pattern.verify(pages: pages.count, first: 0, what: "test", read) }
        #expect(error.message == "test: page \(bad) differs at byte 8")
    }

    /// The memcpy scenario's check reads every page, the first one included.
    @Test(arguments: [0, 3])
    func memcpyVerifyReadsEveryPage(bad: Int) throws {
        let pages = Pages()
        let check = { try MemcpyScenario().verify(pages: pages.count, pageSize: 4096, seed: 7, direction: "h2d") { pages.dst + $0 * 4096 } }
        try check()
        pages.corrupt(page: bad, byte: 16)
        #expect(throws: ScenarioError(scenario: "memcpy", message: "h2d: page \(bad) differs at byte 16 after the copy")) { try check() }
    }

    /// A torture run passes only when every finding is zero: one mismatch alone fails it.
    @Test func tortureFailsOnAnyFinding() {
        #expect(TortureRun.passed(TortureStats(), leaks: 0, protocolViolations: 0, invariants: []))
        var mismatch = TortureStats(); mismatch.mismatches = 1
        var unexpected = TortureStats(); unexpected.unexpectedErrors = 1
        var unverified = TortureStats(); unverified.unverified = 1
        for stats in [mismatch, unexpected, unverified] {
            #expect(!TortureRun.passed(stats, leaks: 0, protocolViolations: 0, invariants: []))
        }
        #expect(!TortureRun.passed(TortureStats(), leaks: 1, protocolViolations: 0, invariants: []))
        #expect(!TortureRun.passed(TortureStats(), leaks: 0, protocolViolations: 1, invariants: []))
        #expect(!TortureRun.passed(TortureStats(), leaks: 0, protocolViolations: 0, invariants: ["x"]))
    }

    /// The torture shadow check (`TorturePattern.matches`) compares all 4 KiB of a page.
    @Test func tortureMatchSeesTheLastWord() {
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        let key = TorturePattern.key(worker: 1, generation: 2, page: 3, version: 4)
        TorturePattern.fill(page, key: key)
        #expect(TorturePattern.matches(page, key: key))
        page.storeBytes(of: 0xEE, toByteOffset: 4095, as: UInt8.self)
        #expect(!TorturePattern.matches(page, key: key))
    }
}
