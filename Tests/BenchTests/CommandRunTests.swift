import Foundation
import Testing
@testable import dmem_bench

/// The commands run in-process, as `dmem-bench …` would, with CI-sized parameters.
@Suite struct CommandRunTests {
    func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("dmem-bench-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// The quick start's main command (`dmem-bench` with no subcommand), CI-sized, with every output.
    @Test func defaultCommandWritesJSONCSVAndTrace() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let json = dir.appendingPathComponent("out/r.json").path
        let csv = dir.appendingPathComponent("r.csv").path
        let trace = dir.appendingPathComponent("t.json").path
        var command = try DmemBench.parseAsRoot(["--quick", "--quiet", "--json", json, "--csv", csv, "--trace", trace])
        #expect(command is SuiteCommand)
        try command.run()

        let document = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any])
        let runs = try #require(document["runs"] as? [[String: Any]])
        let jobs = try BenchSuite.standard.jobs()
        let points = jobs.count
        // memcpy measures h2d and d2h per point, copy h2d, d2h and d2d.
        #expect(runs.count == jobs.reduce(0) { $0 + ($1.scenario.name == "copy" ? 3 : 2) })
        #expect(runs.allSatisfy { $0["verified"] as? Bool == true && ($0["gbps"] as? Double ?? 0) > 0 })
        #expect((document["machine"] as? [String: Any])?["cores"] as? Int ?? 0 >= 1)

        let lines = try String(contentsOfFile: csv, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 1 + runs.count)

        let traceObject = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: trace))) as? [String: Any])
        let events = try #require(traceObject["traceEvents"] as? [[String: Any]])
        let processes = events.filter { $0["name"] as? String == "process_name" }
        #expect(processes.count == points)
        #expect(events.contains { $0["name"] as? String == "gather batch" && $0["ph"] as? String == "X" })
    }

    @Test func runCommandSweepsAndRepeats() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let json = dir.appendingPathComponent("r.json").path
        var command = try DmemBench.parseAsRoot([
            "run", "memcpy", "--set", "total=256K", "span=1M", "--sweep", "batch=4,64", "--repeat", "3", "--quiet", "--json", json,
        ])
        try command.run()
        let document = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any])
        let runs = try #require(document["runs"] as? [[String: Any]])
        #expect(runs.count == 4)
        #expect(runs.map { $0["batch_pages"] as? Int } == [4, 4, 64, 64])
        #expect(runs.allSatisfy { $0["repeats"] as? Int == 3 && ($0["samples"] as? [Any])?.count == 3 })
        #expect(runs.allSatisfy { ($0["gbps_min"] as! Double) <= ($0["gbps"] as! Double) && ($0["gbps"] as! Double) <= ($0["gbps_max"] as! Double) })
        #expect(runs.allSatisfy { ($0["params"] as? [String: String])?["total"] == "256K" })
    }

    static var matplotlibAvailable: Bool {
        PlotRunner.run(["python3", "-c", "import matplotlib"], quiet: true) == 0
    }

    @Test(.enabled(if: matplotlibAvailable, "needs python3 with matplotlib"))
    func plotScriptDrawsChartsFromTheJSON() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        var command = try DmemBench.parseAsRoot([
            "run", "memcpy", "--set", "total=256K", "span=1M", "--sweep", "batch=4,64", "--quiet", "--plot", dir.path,
        ])
        try command.run()
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path)
        #expect(files.contains("dmem-bench.json"))
        #expect(files.contains("throughput_vs_batch.png"))
        #expect(files.contains("latency.png"))
        #expect(!files.contains("coalescing.png"))  // no coalesce field in memcpy runs
    }
}
