import Foundation
import Testing
@testable import dmem_bench

@Suite struct MemcpyScenarioTests {
    let scenario = MemcpyScenario()

    func run(_ overrides: [(key: String, value: String)], trace: TraceProcess? = nil) throws -> [RunRecord] {
        let parameters = try ScenarioParameters(for: scenario, overrides: overrides)
        return try scenario.run(parameters, context: ScenarioContext(trace: trace))
    }

    @Test func copiesScatteredPagesBothWaysAndReportsGBpsAndBatchLatency() throws {
        let records = try run([("total", "512K"), ("span", "4M"), ("batch", "16")])
        #expect(records.map { $0["direction"] } == [.string("h2d"), .string("d2h")])
        for r in records {
            #expect(r["verified"] == .bool(true))
            #expect(r["bytes"] == .int(512 << 10))
            #expect(r["pages"] == .int(128))
            #expect(r["batch_samples"] == .int(8))
            #expect((r["gbps"]?.numeric ?? 0) > 0)
            #expect((r["batch_p50_us"]?.numeric ?? 0) > 0)
            #expect((r["batch_max_us"]?.numeric ?? 0) >= (r["batch_p50_us"]?.numeric ?? .infinity))
        }
    }

    @Test func refusesAPageSizeThatIsNotAMultipleOfEight() {
        #expect(throws: ScenarioError(scenario: "memcpy", message: "page-size 100 is not a multiple of 8")) {
            try run([("page-size", "100"), ("total", "64K")])
        }
    }

    /// `total=4097` used to run one 4 KiB page and label it total=4097.
    @Test func refusesATotalThatIsNotAWholeNumberOfPages() throws {
        #expect(throws: ScenarioError(scenario: "memcpy", message: "total 4097 is not a multiple of page-size 4K")) {
            try run([("total", "4097")])
        }
        #expect(parseError(["run", "memcpy", "--set", "total=12K", "page-size=8K"])
                == "memcpy (total=12K page-size=8K): total 12K is not a multiple of page-size 8K")
    }

    @Test func scatterLayoutPicksDistinctPagesInsideTheSpanDeterministically() {
        let a = ScatterLayout(pageSize: 4096, count: 100, spanBytes: 1 << 20, seed: 9)
        let b = ScatterLayout(pageSize: 4096, count: 100, spanBytes: 1 << 20, seed: 9)
        #expect(a.offsets == b.offsets)
        #expect(Set(a.offsets).count == 100)
        #expect(a.offsets.allSatisfy { $0 % 4096 == 0 && $0 < 1 << 20 })
        #expect(a.offsets != ScatterLayout(pageSize: 4096, count: 100, spanBytes: 1 << 20, seed: 10).offsets)
    }

    @Test func tracesBatchesOnTheMemcpyTrack() throws {
        let recorder = TraceRecorder(capacity: 1024)
        _ = try run([("total", "64K"), ("span", "1M"), ("batch", "4")], trace: recorder.process("memcpy"))
        let names = recorder.sortedEvents().map(\.name.description)
        #expect(names.first == "fill pattern")
        #expect(names.filter { $0 == "gather batch" }.count == 4)
        #expect(names.filter { $0 == "scatter batch" }.count == 4)
        #expect(names.filter { $0 == "verify" }.count == 2)
        #expect(names.lastIndex(of: "gather batch")! < names.firstIndex(of: "scatter batch")!)
    }
}

@Suite struct SuiteAndSummaryTests {
    @Test func standardSuiteEntriesAreValid() throws {
        let jobs = try BenchSuite.standard.jobs()
        #expect(!jobs.isEmpty)
        #expect(jobs.first?.scenario.name == "memcpy")
    }

    /// The default run measures every throughput scenario of the tool (torture and race judge
    /// correctness, they measure no GB/s): a scenario dropped from it drops out of the table silently.
    @Test func standardSuiteCoversEveryThroughputScenario() throws {
        let names = try BenchSuite.standard.jobs().map(\.scenario.name)
        let measured = ScenarioRegistry.standard.names.filter { $0 != "torture" && $0 != "race" }
        #expect(measured.allSatisfy(names.contains), "suite runs \(Set(names).sorted())")
    }

    @Test func suiteRejectsUnknownScenariosAndKeys() {
        let bad = BenchSuite(name: "t", entries: [.init("memcpy", "bogus=1")])
        #expect(throws: ParameterValueError("unknown parameter 'bogus' for scenario 'memcpy' (known: page-size, total, span, batch, seed)")) {
            try bad.jobs()
        }
        let known = ScenarioRegistry.standard.names.joined(separator: ", ")
        #expect(throws: ParameterValueError("unknown scenario 'nope' (known: \(known))")) {
            try BenchSuite(name: "t", entries: [.init("nope")]).jobs()
        }
    }

    /// The main command's path, CI-sized: every suite point runs, verifies and lands in the table.
    @Test func quickStandardSuiteRunsEndToEnd() throws {
        let results = try BenchRunner(quick: true).run(try BenchSuite.standard.jobs())
        // Every point yields at least one record; every record that checked its bytes says so.
        #expect(results.count >= (try BenchSuite.standard.jobs().count))
        #expect(results.allSatisfy { $0.record["verified"].map { $0 == .bool(true) } ?? true })
        #expect(results.contains { $0.record["verified"] == .bool(true) })
        let table = SummaryTable(results: results).text
        #expect(table.contains("page-size=4K h2d"))
        // Below the header's dashed rule (lines above it name fixed parameters), a record has
        // one row per throughput or latency figure, and at least one.
        let lines = table.split(separator: "\n")
        let rule = try #require(lines.firstIndex { $0.hasPrefix("---") })
        let expectedRows = results.reduce(0) { total, result in
            let gbps = SummaryTable.throughputFields(of: result.record).count
            let latency = LatencyHistogram.prefixes(in: result.record).count
            return total + max(1, gbps, latency)
        }
        #expect(lines.count - rule - 1 == expectedRows)
    }

    /// A result of `scenario` whose record holds `fields`, with no explicit parameters.
    private func result(_ scenario: String, _ fields: [(String, RunRecord.Value)]) -> BenchResult {
        var r = RunRecord()
        for (name, value) in fields { r.set(name, value) }
        return BenchResult(scenario: scenario, parameters: ScenarioParameters(values: [:]), repeats: 1, record: r, samples: [])
    }

    @Test func summaryComparesWithTheSameRunMemcpyOfTheSamePageSize() throws {
        let results = [
            result("memcpy", [("direction", .string("h2d")), ("page_size", .int(4096)), ("gbps", .double(8))]),
            result("memcpy", [("direction", .string("h2d")), ("page_size", .int(65536)), ("gbps", .double(10))]),
            result("copy", [("direction", .string("h2d")), ("page_size", .int(4096)), ("gbps", .double(6))]),
            result("migrate", [("to_device_gbps", .double(3)), ("to_ram_fault_gbps", .double(1)), ("memcpy_gbps", .double(4)),
                               ("ratio_to_device", .double(0.7)), ("fault_p50_us", .double(5)), ("fault_p90_us", .double(6)),
                               ("fault_p99_us", .double(7)), ("fault_p99_9_us", .double(8)), ("fault_max_us", .double(9))]),
        ]
        let table = SummaryTable(results: results)
        #expect(table.memcpyBaseline(for: results[2].record, field: "gbps") == 8)
        let lines = table.text.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(lines.count == 2 + 5)
        #expect(lines[4].prefix(6) == ["copy", "h2d", "6.00", "8.00", "0.75"])  // scenario, case, GB/s, memcpy, ratio
        // The fault latency is on the row of the fault read-back (it used to sit beside to_device).
        #expect(lines[5] == ["migrate", "to_device", "3.00", "4.00", "0.70"])
        #expect(lines[6].prefix(5) == ["to_ram_fault", "1.00", "4.00", "0.25", "fault"])
        #expect(lines[6][5...9] == ["5.00", "6.00", "7.00", "8.00", "9.00"])
    }

    /// Without a baseline of its own, a record is compared with the memcpy of its direction when
    /// the run measured one (gather and scatter differ), and under --repeat its spread reads min-max.
    @Test func summaryPicksTheSameDirectionMemcpyAndShowsTheSpreadLowToHigh() throws {
        var results = [
            result("memcpy", [("direction", .string("h2d")), ("page_size", .int(4096)), ("gbps", .double(8))]),
            result("memcpy", [("direction", .string("d2h")), ("page_size", .int(4096)), ("gbps", .double(2))]),
            result("copy", [("direction", .string("d2h")), ("page_size", .int(4096)), ("gbps", .double(6)),
                            ("gbps_min", .double(5)), ("gbps_max", .double(7))]),
        ]
        results[2].repeats = 3
        let table = SummaryTable(results: results)
        #expect(table.memcpyBaseline(for: results[2].record, field: "gbps") == 2)
        let lines = table.text.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(lines.last.map { Array($0.prefix(6)) } == ["copy", "d2h", "6.00", "5.00-7.00", "2.00", "3.00"])
    }

    /// The check column says ok/FAIL for a record that verified its bytes and for a torture or
    /// race record that passed or not; it stays blank for a record that says neither.
    @Test func checkColumnReadsVerifiedElsePassed() throws {
        let results = [
            result("copy", [("gbps", .double(1)), ("verified", .bool(true))]),
            result("torture", [("operations", .int(5)), ("passed", .bool(false))]),
            result("race", [("outcome", .string("ok")), ("passed", .bool(true))]),
            result("mm", [("ns_per_page", .double(1))]),
        ]
        let text = SummaryTable(results: results).text
        let lines = text.split(separator: "\n").map(String.init)
        let rule = try #require(lines.firstIndex { $0.hasPrefix("---") })
        let rows = lines[(rule + 1)...].map { $0.split(separator: " ").map(String.init) }
        #expect(rows.count == 4)
        #expect(rows[0].contains("ok") && !rows[0].contains("FAIL"))
        #expect(rows[1].contains("FAIL"))
        #expect(rows[2].contains("ok"))
        #expect(!rows[3].contains("ok") && !rows[3].contains("FAIL"))
    }

    @Test func latenciesGoOnTheRowOfTheirThroughputElseInOrder() {
        #expect(SummaryTable.latencyRows(["batch"], throughput: ["gbps"]) == [0: "batch"])
        #expect(SummaryTable.latencyRows(["fault"], throughput: ["to_device_gbps", "to_ram_fault_gbps", "evict_gbps"]) == [1: "fault"])
        #expect(SummaryTable.latencyRows(["fault", "batch"], throughput: ["to_device_gbps", "to_ram_fault_gbps"])
                == [1: "fault", 0: "batch"])
        #expect(SummaryTable.latencyRows(["a", "b", "c"], throughput: ["gbps"]) == [0: "a", 1: "b", 2: "c"])
        #expect(SummaryTable.latencyRows(["round"], throughput: []) == [0: "round"])
    }

    /// Ratios below 0.1 keep three decimals: a fault-bound read-back at 0.0046 of memcpy read "0.00".
    @Test func smallRatiosKeepTheirDigits() {
        #expect(SummaryTable.formatRatio(0.0046) == "0.005")
        #expect(SummaryTable.formatRatio(0.046) == "0.046")
        #expect(SummaryTable.formatRatio(0.97) == "0.97")
        #expect(SummaryTable.formatRatio(1.25) == "1.25")
    }
}
