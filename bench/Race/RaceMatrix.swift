import Foundation

/// The race matrix: for each flow, a dry run lists its steps; then each (step, action)
/// cell runs on a fresh world (`RaceCell`). One record per cell.
///
/// Threads: the calling thread, plus each cell's action thread (joined per cell).
struct RaceMatrix: Sendable {
    struct FlowResult: Sendable {
        var flow: RaceFlow
        /// The steps the matrix holds at, in order: the dry run's steps that `--step`
        /// selects and that it reported at least `--occurrence` times. The matrix's rows.
        var steps: [RaceStep]
        /// Every distinct step the dry run reported, in order of first report.
        var reportedSteps: [RaceStep]
        /// Problems of the dry run itself (the flow with nothing racing).
        var dryRunProblems: [String]
        var cells: [RaceCell.Result]
    }

    var options: RaceOptions
    var flows: [FlowResult] = []
    var seconds = 0.0

    /// Runs every cell. `sabotage` corrupts the target page after each flow (for the tests
    /// that prove the verification can fail). Throws before any cell runs when a `--step`
    /// name selects no step of any flow.
    static func run(_ options: RaceOptions, sabotage: Bool = false, progress: (String) -> Void = { _ in }) throws -> RaceMatrix {
        if let problem = options.problem { throw RaceFailure(problem) }
        let o = options.forDriver
        var m = RaceMatrix(options: o)
        let t0 = MonotonicClock.now()
        for flow in o.flows {
            let dry = try raceDryRun(flow, o)
            let rows = dry.steps.filter { step in
                (o.steps?.matches(step) ?? true) && dry.events.count(where: { $0 == step }) >= o.occurrence
            }
            m.flows.append(FlowResult(flow: flow, steps: rows, reportedSteps: dry.steps, dryRunProblems: dry.problems, cells: []))
        }
        if let problem = m.selectionProblem { throw RaceFailure(problem) }
        for i in m.flows.indices {
            let f = m.flows[i]
            progress("race: \(f.flow.rawValue): \(f.steps.count) steps × \(o.actions.count) actions")
            for step in f.steps {
                for action in o.actions {
                    m.flows[i].cells.append(try RaceCell(flow: f.flow, step: step, action: action).run(o, sabotage: sabotage))
                }
            }
        }
        m.seconds = MonotonicClock.seconds(since: t0)
        return m
    }

    /// Why the selection runs nothing it was asked for: a `--step` name that no chosen flow
    /// reported (at least `--occurrence` times), or an `--occurrence` no step of any flow
    /// reaches. The message lists what the flows did report. Nil when the selection is fine.
    private var selectionProblem: String? {
        let times = options.occurrence > 1 ? " at least \(options.occurrence) times" : ""
        let reported = flows.map { "\($0.flow.rawValue): " + $0.reportedSteps.map(\.description).joined(separator: " ") }
            .joined(separator: "; ")
        let names = flows.map(\.flow.rawValue).joined(separator: ", ")
        if let filter = options.steps {
            let missing = filter.patterns.filter { p in !flows.contains { $0.steps.contains(where: p.matches) } }
            guard !missing.isEmpty else { return nil }
            return "step \(missing.map { "'\($0)'" }.joined(separator: ", ")) is not reported\(times) by \(names) "
                + "in this configuration; they report: \(reported)"
        }
        guard options.occurrence > 1, flows.allSatisfy({ $0.steps.isEmpty }), flows.contains(where: { !$0.reportedSteps.isEmpty })
        else { return nil }
        return "no step of \(names) is reported\(times) in this configuration (a batch reports each of its steps once; "
            + "--pages \(options.pages) makes \((options.pages + RaceWorld.batchPages - 1) / RaceWorld.batchPages) batches of "
            + "\(RaceWorld.batchPages) for to-device; a single-page CPU fault is one batch)"
    }

    var cells: [RaceCell.Result] { flows.flatMap(\.cells) }
    var failures: [RaceCell.Result] { cells.filter { !$0.passed } }
    var passed: Bool { failures.isEmpty && flows.allSatisfy { $0.dryRunProblems.isEmpty && !missesSteps($0) } }

    /// A flow whose dry run reported no step though the configuration says it has some.
    private func missesSteps(_ f: FlowResult) -> Bool { f.reportedSteps.isEmpty && f.flow.reportsSteps(in: options.configuration) }

    /// One record per cell (`--json`).
    var records: [RunRecord] {
        cells.map { c in
            var r = RunRecord()
            r.set("flow", c.cell.flow.rawValue)
            r.set("step", c.cell.step.description)
            r.set("action", c.cell.action.rawValue)
            r.set("outcome", c.outcome.rawValue)
            r.set("fired", c.fired)
            if let e = c.event { r.set("batch", Int(e.batch)) }
            r.set("hold_ms", Double(options.hold.components.seconds) * 1e3 + Double(options.hold.components.attoseconds) / 1e15)
            r.set("passed", c.passed)
            for (key, value) in options.configurationFields { r.set(key, value) }
            if options.occurrence > 1 { r.set("occurrence", options.occurrence) }
            if !c.passed {
                r.set("problems", c.problems.joined(separator: "; "))
                r.set("rerun", rerunCommand(c.cell))
            }
            if !c.notes.isEmpty { r.set("notes", c.notes.joined(separator: "; ")) }
            return r
        }
    }

    /// Per flow, a table (rows: steps, columns: actions; cells `held`, `after`, `FAIL`),
    /// then every failure with its reasons.
    var text: String {
        var out = "configuration: " + options.configurationFields.map { "\($0.key)=\($0.value)" }.joined(separator: " ") + "\n\n"
        for f in flows {
            out += "\(f.flow.rawValue): \(f.steps.count) steps × \(options.actions.count) actions\n"
            if !f.flow.reportsSteps(in: options.configuration) {
                out += "  (no step in this configuration: the CPU reads coherent VRAM in place, nothing faults)\n\n"
                continue
            }
            if f.steps.isEmpty {
                let times = options.occurrence > 1 ? " reported \(options.occurrence) times" : ""
                out += options.steps == nil ? "  (no step\(times))\n\n" : "  (no step named by --step\(times))\n\n"
                continue
            }
            let header = ["step"] + options.actions.map(\.short)
            var rows: [[String]] = [header]
            for step in f.steps {
                rows.append([step.description] + options.actions.map { a in
                    f.cells.first { $0.cell.step == step && $0.cell.action == a }?.outcome.rawValue ?? "-"
                })
            }
            let widths = header.indices.map { i in rows.map { $0[i].count }.max() ?? 0 }
            for row in rows {
                out += row.enumerated().map { i, s in s.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                    .joined(separator: "  ").trimmingCharacters(in: .whitespaces) + "\n"
            }
            out += "\n"
        }
        let fails = failures
        let after = cells.filter { $0.outcome == .after }.count
        out += "\(cells.count) cells in \(String(format: "%.1f", seconds)) s: \(cells.count - fails.count) passed "
            + "(\(after) after the hold), \(fails.count) failed\n"
        let noted = cells.filter { $0.passed && !$0.notes.isEmpty }
        if !noted.isEmpty {
            out += "\ndocumented errors (the cells passed):\n" + noted.map {
                "  \($0.cell.flow.rawValue) @ \($0.cell.step) × \($0.cell.action.rawValue): " + $0.notes.joined(separator: "; ") + "\n"
            }.joined()
        }
        let lines = failureLines
        if !lines.isEmpty { out += "\nfailures:\n" + lines.map { "  " + $0 + "\n" }.joined() }
        return out
    }

    /// One line per failing cell, followed by its `rerun:` line (and one per problem of a dry run).
    var failureLines: [String] {
        var lines: [String] = []
        for f in flows {
            lines += f.dryRunProblems.map { "\(f.flow.rawValue) dry run: \($0)" }
            if missesSteps(f) { lines.append("\(f.flow.rawValue): the dry run reported no step") }
        }
        for c in failures {
            let problems: String = c.problems.joined(separator: "; ")
            lines.append("\(c.cell.flow.rawValue) @ \(c.cell.step) × \(c.cell.action.rawValue): \(problems)")
            lines.append("  rerun: " + rerunCommand(c.cell))
        }
        return lines
    }

    /// The command line that runs `cell` alone, with these options.
    func rerunCommand(_ cell: RaceCell) -> String {
        (["dmem-bench", "race"] + options.rerunArguments(flow: cell.flow, step: cell.step, action: cell.action))
            .joined(separator: " ")
    }
}
