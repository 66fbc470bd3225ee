import ArgumentParser
import Foundation

/// One invocation's measuring: runs the jobs, then writes the summary table, the JSON/CSV
/// files, the trace and the plots that `BenchOptions` asked for. Outputs are written even
/// when a point fails (with the points measured before it; the JSON says `"complete":false`
/// and the error), then the command fails.
///
/// Threads: the command's thread.
struct BenchSession {
    var options: BenchOptions
    var registry: ScenarioRegistry = .standard

    func execute(_ jobs: [BenchJob]) throws {
        try prepareOutputs()
        let progress = ProgressLine.forStandardError(quiet: options.quiet)
        let trace = options.trace.map { _ in TraceRecorder(capacity: options.traceCapacity) }
        let runner = BenchRunner(repeats: options.repeats, quick: options.quick, trace: trace, progress: progress)
        var failure: BenchRunError?
        let results: [BenchResult]
        do {
            results = try runner.run(jobs)
        } catch {
            failure = error
            results = error.completed
        }
        let document = ResultsDocument(command: Self.commandLine, machine: .gather(), results: results,
                                       error: failure.map { "\($0)" })
        try writeOutputs(document, trace: trace, progress: progress)
        if let failure {
            FileHandle.standardError.write(Data("dmem-bench: error: \(failure)\n".utf8))
            throw ExitCode.failure
        }
        if let message = Self.verificationFailure(results) {
            FileHandle.standardError.write(Data("dmem-bench: error: \(message)\n".utf8))
            throw ExitCode.failure
        }
    }

    /// The points whose bytes did not survive (`verified` false, FAIL in the table), or nil:
    /// such a run must not exit 0 even though every point ran.
    static func verificationFailure(_ results: [BenchResult]) -> String? {
        let failed = results.filter { $0.record["verified"] == .bool(false) }
        guard !failed.isEmpty else { return nil }
        let names = failed.map { result in
            let direction = result.record["direction"].map { " \($0.formatted())" } ?? ""
            return [result.scenario, result.parameters.label].filter { !$0.isEmpty }.joined(separator: " ") + direction
        }
        return "verification failed (bytes moved do not match) in \(failed.count) of \(results.count) records: \(names.joined(separator: "; "))"
    }

    /// Creates the output files' directories and checks they can be written, so that a path
    /// that cannot be written fails before the runs instead of losing their results.
    func prepareOutputs() throws(OutputError) {
        let files = [("JSON", options.json), ("CSV", options.csv), ("trace", options.trace)]
        for case let (what, path?) in files where path != "-" {
            let parent = URL(fileURLWithPath: path).deletingLastPathComponent().path
            let manager = FileManager.default
            do {
                try manager.createDirectory(atPath: parent, withIntermediateDirectories: true)
            } catch {
                throw OutputError("cannot write the \(what) file \(path): \(error.localizedDescription)")
            }
            var isDirectory: ObjCBool = false
            if manager.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
                throw OutputError("cannot write the \(what) file \(path): it is a directory")
            }
            if let reason = OutputFile.cannotWrite(path) {
                throw OutputError("cannot write the \(what) file \(path): \(reason)")
            }
        }
        if let directory = options.plot {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw OutputError("cannot create --plot directory \(directory): \(error.localizedDescription)")
            }
        }
    }

    private func writeOutputs(_ document: ResultsDocument, trace: TraceRecorder?, progress: ProgressLine) throws {
        if !document.results.isEmpty {
            let table = SummaryTable(results: document.results, registry: registry).text + "\n"
            if options.json == "-" || options.csv == "-" || options.trace == "-" {
                FileHandle.standardError.write(Data(table.utf8))
            } else {
                print(table, terminator: "")
            }
        }
        if let path = options.json { try write(document.json, to: path, what: "JSON", progress: progress) }
        if let path = options.csv { try write(document.csv, to: path, what: "CSV", progress: progress) }
        if let path = options.trace, let trace {
            var metadata: [String: String] = ["command": document.command]
            for fact in document.machine.fields { metadata[fact.name] = fact.value.csv }
            do {
                if path == "-" {
                    FileHandle.standardOutput.write(trace.jsonData(metadata: metadata))
                } else {
                    let parent = URL(fileURLWithPath: path).deletingLastPathComponent().path
                    try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
                    try trace.writeJSON(to: path, metadata: metadata)
                }
            } catch {
                throw OutputError("cannot write the trace to \(path): \(error.localizedDescription)")
            }
            let dropped = trace.droppedEvents
            let name = path == "-" ? "stdout" : path
            progress.note("trace: \(name)" + (dropped > 0 ? " (\(dropped) events dropped: raise --trace-capacity)" : ""))
        }
        if let directory = options.plot { try plot(document, into: directory, progress: progress) }
    }

    private func plot(_ document: ResultsDocument, into directory: String, progress: ProgressLine) throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw OutputError("cannot create --plot directory \(directory): \(error.localizedDescription)")
        }
        var jsonPath = options.json ?? "-"
        if jsonPath == "-" {
            jsonPath = (directory as NSString).appendingPathComponent("dmem-bench.json")
            try write(document.json, to: jsonPath, what: "JSON", progress: progress)
        }
        do {
            try PlotRunner(progress: progress).plot(jsonPath: jsonPath, directory: directory)
        } catch {
            FileHandle.standardError.write(Data("dmem-bench: plots: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }

    private func write(_ text: String, to path: String, what: String, progress: ProgressLine) throws {
        do {
            if path != "-" {
                let parent = URL(fileURLWithPath: path).deletingLastPathComponent().path
                try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
            }
            try ResultsDocument.write(text, to: path)
        } catch {
            throw OutputError("cannot write the \(what) file \(path): \(error.localizedDescription)")
        }
        if path != "-" { progress.note("\(what): \(path)") }
    }

    /// The command line as typed (arguments with spaces quoted): recorded in the JSON.
    static var commandLine: String {
        CommandLine.arguments.enumerated().map { index, argument in
            let word = index == 0 ? "dmem-bench" : argument
            return word.contains(where: { $0 == " " || $0 == "\"" }) ? "'\(word)'" : word
        }.joined(separator: " ")
    }
}

/// An output file could not be written (printed as `Error: …`, without the usage text).
struct OutputError: Error, Equatable, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
