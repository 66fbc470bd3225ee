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
}
