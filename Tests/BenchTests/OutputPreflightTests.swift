import ArgumentParser
import Foundation
import Testing
@testable import dmem_bench

/// An output path that cannot be written fails before any point runs, so a long sweep
/// never measures for nothing; good paths get their directories created.
@Suite struct OutputPreflightTests {
    func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("dmem-bench-preflight-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    func session(_ arguments: [String]) throws -> BenchSession {
        BenchSession(options: try BenchOptions.parse(["--quiet"] + arguments))
    }

    @Test func unwritablePathsFailBeforeTheFirstRun() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("file.txt").path
        #expect(FileManager.default.createFile(atPath: file, contents: Data()))
        let fake = FakeScenario()
        let jobs = [BenchJob(scenario: fake, parameters: try ScenarioParameters(for: fake))]

        for arguments in [["--json", file + "/r.json"], ["--csv", dir.path], ["--trace", file + "/t.json"], ["--plot", file]] {
            #expect(throws: OutputError.self, "\(arguments)") { try session(arguments).execute(jobs) }
        }
        #expect(fake.counter.calls == 0)
        #expect(throws: OutputError("cannot write the CSV file \(dir.path): it is a directory")) {
            try session(["--csv", dir.path]).prepareOutputs()
        }
    }

    @Test func missingDirectoriesAreCreatedAndTheRunsWritten() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let json = dir.appendingPathComponent("a/b/r.json").path
        let fake = FakeScenario()
        let jobs = [BenchJob(scenario: fake, parameters: try ScenarioParameters(for: fake))]
        try session(["--json", json]).execute(jobs)
        #expect(fake.counter.calls == 1)
        let document = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any])
        #expect((document["runs"] as? [Any])?.count == 1)
    }

    /// A sweep whose second point fails still writes the first, but the JSON says it is not
    /// the whole sweep (it used to look like a complete one-point run) and the command fails.
    @Test func aFailedPointLeavesAJSONMarkedIncomplete() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let json = dir.appendingPathComponent("r.json").path
        var fake = FakeScenario()
        fake.failingCall = 1
        let plan = try SweepPlan(scenario: fake, spec: SweepSpec(parsing: ["batch=1,8"]))
        let jobs = plan.points.map { BenchJob(scenario: fake, parameters: $0) }
        #expect(throws: ExitCode.failure) { try session(["--json", json]).execute(jobs) }
        let document = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any])
        #expect((document["runs"] as? [Any])?.count == 1)
        #expect(document["complete"] as? Bool == false)
        #expect(document["error"] as? String == "fake batch=8: fake: injected failure")

        try session(["--json", json]).execute([jobs[0]])
        let whole = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any])
        #expect(whole["complete"] as? Bool == true)
        #expect(whole["error"] == nil)
    }

    /// Results replace a regular file whole (through a rename), but a symlink or a device
    /// given as the path is written through, never replaced.
    @Test func symlinksAndDevicesAreWrittenThrough() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let target = dir.appendingPathComponent("target.csv").path
        let link = dir.appendingPathComponent("link.csv").path
        #expect(FileManager.default.createFile(atPath: target, contents: Data("old".utf8)))
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        let fake = FakeScenario()
        let jobs = [BenchJob(scenario: fake, parameters: try ScenarioParameters(for: fake))]
        try session(["--csv", link, "--json", "/dev/null"]).execute(jobs)
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == target)
        #expect(try String(contentsOfFile: target, encoding: .utf8).hasPrefix("scenario,repeats,"))
        #expect(OutputFile.isReplaceable(target) && !OutputFile.isReplaceable(link) && !OutputFile.isReplaceable("/dev/null"))
    }

    /// Permission bits say nothing to root: a directory no file can be created in (here /proc)
    /// used to pass the check and lose the results after the runs.
    @Test func aDirectoryThatTakesNoFilesFailsBeforeTheFirstRun() throws {
        let fake = FakeScenario()
        let jobs = [BenchJob(scenario: fake, parameters: try ScenarioParameters(for: fake))]
        #expect(throws: OutputError.self) { try session(["--json", "/proc/dmem-bench.json"]).execute(jobs) }
        #expect(fake.counter.calls == 0)
        #expect(OutputFile.cannotWrite("/proc/dmem-bench.json") != nil)
        #expect(OutputFile.cannotWrite("/dev/null") == nil)
        #expect(OutputFile.cannotWrite(FileManager.default.temporaryDirectory.appendingPathComponent("r.json").path) == nil)
    }

    /// Two outputs on one path: the later write replaced the earlier one without a word.
    @Test func twoOutputsOnOneFileAreRefused() {
        #expect(parseError(["run", "memcpy", "--csv", "r.csv", "--json", "./r.csv"])
                == "--json and --csv name the same file (\(FileManager.default.currentDirectoryPath)/r.csv): one would overwrite the other")
        #expect(parseError(["run", "memcpy", "--json", "/tmp/a/../r.json", "--trace", "/tmp/r.json"])
                == "--json and --trace name the same file (/tmp/r.json): one would overwrite the other")
        #expect(parseError(["run", "memcpy", "--json", "-", "--trace", "t.json", "--csv", "r.csv"]) == nil)
        #expect(parseError(["run", "memcpy", "--json", "-", "--csv", "-"])
                == "only one of --json, --csv and --trace can write to stdout ('-'), not --json and --csv")
        #expect(parseError(["run", "memcpy", "--json", "-", "--trace", "-"])
                == "only one of --json, --csv and --trace can write to stdout ('-'), not --json and --trace")
    }

    /// `--trace -` wrote a file named `-` in the current directory, while `--json -` and
    /// `--csv -` mean stdout; it now means stdout too.
    @Test func aTraceToDashGoesToStdoutNotToAFileNamedDash() throws {
        let dash = FileManager.default.currentDirectoryPath + "/-"
        try #require(!FileManager.default.fileExists(atPath: dash))
        defer { try? FileManager.default.removeItem(atPath: dash) }
        let fake = FakeScenario()
        let jobs = [BenchJob(scenario: fake, parameters: try ScenarioParameters(for: fake))]
        try session(["--trace", "-"]).execute(jobs)
        #expect(fake.counter.calls == 1)
        #expect(!FileManager.default.fileExists(atPath: dash))
    }
}
