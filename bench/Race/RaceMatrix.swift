import Foundation

/// The race matrix: for each flow, a dry run lists its steps; then each (step, action)
/// cell runs on a fresh world (`RaceCell`). One record per cell.
///
/// Threads: the calling thread, plus each cell's action thread (joined per cell).
struct RaceMatrix: Sendable {
    struct FlowResult: Sendable {
        var flow: RaceFlow
        /// The steps the dry run reported, in order: the matrix's rows.
        var steps: [RaceStep]
        /// Problems of the dry run itself (the flow with nothing racing).
        var dryRunProblems: [String]
        var cells: [RaceCell.Result]
    }

    var options: RaceOptions
    var flows: [FlowResult] = []
    var seconds = 0.0

    /// Runs every cell. `sabotage` corrupts the target page after each flow (for the tests
    /// that prove the verification can fail).
    static func run(_ o: RaceOptions, sabotage: Bool = false, progress: (String) -> Void = { _ in }) throws -> RaceMatrix {
        if let problem = o.problem { throw RaceFailure(problem) }
        var m = RaceMatrix(options: o)
        let t0 = MonotonicClock.now()
        for flow in o.flows {
            let (steps, dry) = try raceDryRun(flow, o)
            progress("race: \(flow.rawValue): \(steps.count) steps × \(o.actions.count) actions")
            var f = FlowResult(flow: flow, steps: steps, dryRunProblems: dry, cells: [])
            for step in steps {
                for action in o.actions {
                    f.cells.append(try RaceCell(flow: flow, step: step, action: action).run(o, sabotage: sabotage))
                }
            }
            m.flows.append(f)
        }
        m.seconds = MonotonicClock.seconds(since: t0)
        return m
    }

    var cells: [RaceCell.Result] { flows.flatMap(\.cells) }
    var failures: [RaceCell.Result] { cells.filter { !$0.passed } }
    var passed: Bool { failures.isEmpty && flows.allSatisfy { $0.dryRunProblems.isEmpty && !missesSteps($0) } }

    /// A flow whose dry run reported no step though the configuration says it has some.
    private func missesSteps(_ f: FlowResult) -> Bool { f.steps.isEmpty && f.flow.reportsSteps(in: options.configuration) }

    /// One record per cell (`--json`).
    var records: [RunRecord] {
        cells.map { c in
            var r = RunRecord()
            r.set("flow", c.cell.flow.rawValue)
            r.set("step", c.cell.step.description)
            r.set("action", c.cell.action.rawValue)
            r.set("outcome", c.outcome.rawValue)
            r.set("fired", c.fired)
            r.set("hold_ms", Double(options.hold.components.seconds) * 1e3 + Double(options.hold.components.attoseconds) / 1e15)
            r.set("passed", c.passed)
            for (key, value) in options.configurationFields { r.set(key, value) }
            if !c.passed { r.set("problems", c.problems.joined(separator: "; ")) }
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

    /// One line per failing cell (and per problem of a dry run).
    var failureLines: [String] {
        flows.flatMap { f in
            f.dryRunProblems.map { "\(f.flow.rawValue) dry run: \($0)" }
                + (missesSteps(f) ? ["\(f.flow.rawValue): the dry run reported no step"] : [])
        } + failures.map { c in
            "\(c.cell.flow.rawValue) @ \(c.cell.step) × \(c.cell.action.rawValue): " + c.problems.joined(separator: "; ")
        }
    }
}
