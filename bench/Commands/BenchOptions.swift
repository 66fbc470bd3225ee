import ArgumentParser
import Foundation

/// The options every measuring command shares: repeats, CI sizing, output files, trace.
struct BenchOptions: ParsableArguments {
    @Option(name: [.customLong("repeat"), .customLong("repeats")], parsing: .unconditional, help: ArgumentHelp(
        "Measure each point N times; numbers are reported as the median with <field>_min/_max.", valueName: "n"), transform: NumberArgument.int)
    var repeats: Int = 1

    @Flag(help: "CI-sized runs: smaller totals for every parameter you did not set (each scenario defines them).")
    var quick = false

    @Option(help: ArgumentHelp("Write every run, with the machine's facts, as JSON ('-' for stdout).", valueName: "file"))
    var json: String?

    @Option(help: ArgumentHelp("Write every run, with the machine's facts, as CSV ('-' for stdout).", valueName: "file"))
    var csv: String?

    @Option(help: ArgumentHelp(
        "Draw PNG charts into DIR with bench/plot.py (python3 + matplotlib; installed with pip when missing).",
        valueName: "dir"))
    var plot: String?

    @Option(help: ArgumentHelp(
        "Write a timeline of the runs as Chrome trace-event JSON ('-' for stdout; open it in Perfetto UI or chrome://tracing).",
        valueName: "file"))
    var trace: String?

    @Option(parsing: .unconditional, help: ArgumentHelp("Trace events kept before further ones are dropped.", valueName: "n"), transform: NumberArgument.int)
    var traceCapacity: Int = 1 << 20

    @Flag(help: "No progress line on stderr.")
    var quiet = false

    func validate() throws {
        guard (1...1000).contains(repeats) else { throw ValidationError("--repeat must be between 1 and 1000 (got \(repeats))") }
        guard traceCapacity > 0 else { throw ValidationError("--trace-capacity must be positive (got \(traceCapacity))") }
        let toStdout = [("--json", json), ("--csv", csv), ("--trace", trace)].filter { $0.1 == "-" }.map(\.0)
        if toStdout.count > 1 {
            throw ValidationError("only one of --json, --csv and --trace can write to stdout ('-'), not \(toStdout.joined(separator: " and "))")
        }
        let files = [("--json", json), ("--csv", csv), ("--trace", trace)].compactMap { flag, path in
            path.flatMap { $0 == "-" ? nil : (flag, URL(fileURLWithPath: $0).standardizedFileURL.path) }
        }
        for (i, first) in files.enumerated() {
            if let second = files[(i + 1)...].first(where: { $0.1 == first.1 }) {
                throw ValidationError("\(first.0) and \(second.0) name the same file (\(first.1)): one would overwrite the other")
            }
        }
    }
}

extension ParameterValueError {
    /// The same message as an ArgumentParser validation error (printed with the usage line).
    var validationError: ValidationError { ValidationError(message) }
}
