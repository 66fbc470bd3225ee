import Foundation
import Testing
@testable import dmem_bench

@Suite struct ResultsDocumentTests {
    static let facts = MachineFacts(fields: [
        ("cores", .int(2)), ("cpu_model", .string("Test CPU, 2 GHz")), ("memory_bytes", .int(1 << 34)),
        ("kernel", .string("6.1.0")), ("os", .string("Debian")), ("liburing", .string("2.3-3")), ("shmem_thp", .string("never")),
        ("git_revision", .string("abc123")), ("git_dirty", .bool(false)), ("swift_version", .string("6.3")),
        ("build", .string("debug")), ("date", .string("2025-01-01T00:00:00Z")),
    ])

    func results(repeats: Int = 1) throws -> [BenchResult] {
        let scenario = FakeScenario()
        let plan = try SweepPlan(scenario: scenario, spec: SweepSpec(parsing: ["batch=1,8 direction=h2d,d2h"]))
        return try BenchRunner(repeats: repeats).run(plan.points.map { BenchJob(scenario: scenario, parameters: $0) })
    }

    @Test func jsonParsesAndHoldsEveryFieldAndMachineFact() throws {
        let document = ResultsDocument(command: "dmem-bench run fake", machine: Self.facts, results: try results(repeats: 2))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(document.json.utf8)) as? [String: Any])
        #expect(object["tool"] as? String == "dmem-bench")
        #expect(object["command"] as? String == "dmem-bench run fake")
        let machine = try #require(object["machine"] as? [String: Any])
        #expect(Set(machine.keys) == Set(Self.facts.fields.map(\.name)))
        #expect(machine["cores"] as? Int == 2)
        #expect(machine["cpu_model"] as? String == "Test CPU, 2 GHz")
        #expect(machine["git_dirty"] as? Bool == false)
        let runs = try #require(object["runs"] as? [[String: Any]])
        #expect(runs.count == 4)
        for (run, result) in zip(runs, document.results) {
            #expect(run["scenario"] as? String == "fake")
            #expect(run["repeats"] as? Int == 2)
            #expect((run["params"] as? [String: String]) == result.parameters.values)
            for field in result.record.fields {
                #expect(run[field.name] != nil, "missing \(field.name)")
            }
            #expect((run["samples"] as? [[String: Any]])?.count == 2)
        }
        #expect(runs[1]["direction"] as? String == "d2h")
        #expect(runs[2]["batch_pages"] as? Int == 8)
        #expect(runs[0]["verified"] as? Bool == true)
    }

    @Test func samplesAreLeftOutWithoutRepeats() throws {
        let document = ResultsDocument(command: "x", machine: Self.facts, results: try results())
        let object = try #require(try JSONSerialization.jsonObject(with: Data(document.json.utf8)) as? [String: Any])
        let runs = try #require(object["runs"] as? [[String: Any]])
        #expect(runs.allSatisfy { $0["samples"] == nil && $0["repeats"] as? Int == 1 })
    }

    @Test func realMachineFactsAreAllPresent() throws {
        let facts = MachineFacts.gather()
        #expect(facts.fields.map(\.name) == Self.facts.fields.map(\.name))
        #expect(facts["cores"]?.numeric ?? 0 >= 1)
        #expect(facts["memory_bytes"]?.numeric ?? 0 > 0)
        #expect(facts["kernel"] != .string("unknown"))
        let document = ResultsDocument(command: "x", machine: facts, results: [])
        #expect(try JSONSerialization.jsonObject(with: Data(document.json.utf8)) is [String: Any])
    }

    @Test func csvHasAHeaderAndOneRowPerRunWithMatchingColumns() throws {
        let document = ResultsDocument(command: "x", machine: Self.facts, results: try results(repeats: 3))
        let rows = Self.parseCSV(document.csv)
        #expect(rows.count == 1 + 4)
        let header = rows[0]
        #expect(header.prefix(2) == ["scenario", "repeats"])
        #expect(header.contains("param_page_size"))
        #expect(header.contains("gbps_min"))
        #expect(header.suffix(Self.facts.fields.count) == ArraySlice(Self.facts.fields.map { "machine_\($0.name)" }))
        #expect(Set(header).count == header.count)
        for row in rows.dropFirst() { #expect(row.count == header.count) }
        let cell = { (row: Int, column: String) in rows[row][header.firstIndex(of: column)!] }
        #expect(cell(1, "scenario") == "fake")
        #expect(cell(1, "param_batch") == "1")
        #expect(cell(4, "batch_pages") == "8")
        #expect(cell(2, "direction") == "d2h")
        #expect(cell(3, "gbps") == "2.0")
        #expect(cell(3, "machine_cpu_model") == "Test CPU, 2 GHz")
    }

    @Test func csvQuotesCellsWithCommasQuotesAndNewlines() {
        #expect(ResultsDocument.csvCell("plain") == "plain")
        #expect(ResultsDocument.csvCell("a,b") == "\"a,b\"")
        #expect(ResultsDocument.csvCell("say \"hi\"") == "\"say \"\"hi\"\"\"")
        #expect(ResultsDocument.csvCell("two\nlines") == "\"two\nlines\"")
    }

    /// A small RFC 4180 reader, enough to check what the writer produced.
    static func parseCSV(_ text: String) -> [[String]] {
        var rows: [[String]] = [], row: [String] = [], cell = "", quoted = false
        var chars = Array(text)[...]
        while let c = chars.popFirst() {
            if quoted {
                if c == "\"" {
                    if chars.first == "\"" { cell.append("\""); chars.removeFirst() } else { quoted = false }
                } else { cell.append(c) }
            } else if c == "\"" { quoted = true }
            else if c == "," { row.append(cell); cell = "" }
            else if c == "\n" { row.append(cell); rows.append(row); row = []; cell = "" }
            else { cell.append(c) }
        }
        return rows
    }
}
