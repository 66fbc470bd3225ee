import DMAEngine
import DeviceEmu
import HostMM
import NIOConcurrencyHelpers

/// One cell of the race matrix: a flow on a fresh world, held at one step while one action
/// runs on another thread, then judged — the flow's and the action's results, every page
/// against the shadow model, a forked child's pages, HostMM's and the device's invariants,
/// checked-mode protocol violations, and after teardown the leaks.
///
/// Threads: the calling thread runs the flow; the probe runs the action on its own thread.
struct RaceCell: Sendable {
    var flow: RaceFlow
    var step: RaceStep
    var action: RaceAction

    /// How the action finished relative to the held step, or that the cell failed.
    enum Outcome: String, Sendable {
        /// The action returned while the driver was held at the step.
        case held
        /// The action returned only after the step went on (`hold` ran out: the held
        /// thread owned something the action needed).
        case after
        case fail = "FAIL"
    }

    struct Result: Sendable {
        var cell: RaceCell
        var outcome: Outcome
        /// Whether the flow reached the step (the probe fired).
        var fired: Bool
        /// The report the driver was held at (which batch, which address), if it fired.
        var event: MigrationEvent? = nil
        /// Why the cell failed (empty when it passed).
        var problems: [String]
        /// Documented errors met on the way (the cell may still pass).
        var notes: [String] = []
        var passed: Bool { problems.isEmpty }
    }

    /// How long a cell waits for its action before calling it hung.
    static let actionTimeout: Duration = .seconds(10)

    func run(_ o: RaceOptions, sabotage: Bool = false) throws -> Result {
        let w = try RaceWorld(o)
        var problems: [String] = []
        do { try flow.prepare(w) } catch { problems.append("preparing the flow: \(error)") }
        w.squeezeRAM()
        let done = NIOLockedValueBox<RaceActionResult?>(nil)
        let action = self.action
        try w.probe.arm(at: .init(step.kind, direction: step.direction, occurrence: o.occurrence), hold: o.hold) {
            let r = action.perform(w)
            done.withLockedValue { $0 = r }
        }
        let flowResult = flow.run(w)
        guard w.probe.waitForAction(timeout: Self.actionTimeout) else {
            // The world stays as it is: its action thread still runs in it.
            return Result(cell: self, outcome: .fail, fired: true, problems: ["action hung (no return in \(Self.actionTimeout))"])
        }
        w.releaseRAM()
        let event = w.probe.firedAt
        let fired = event != nil
        if !fired {
            w.probe.disarm()
            problems.append("the flow never reached \(step)" + (o.occurrence > 1 ? " a \(ordinal(o.occurrence)) time" : ""))
        }
        let outcome: Outcome = w.probe.outcome == .finishedAfterHold ? .after : .held
        if sabotage { try? w.mm.write(at: w.address(w.target) + 8, bytes: [0x5A]) }
        var check = RaceCheck(world: w, flow: flow, action: fired ? action : .none)
        check.flowResult(flowResult)
        if fired { check.actionResult(done.withLockedValue { $0 } ?? .done) }
        check.gpuPages()
        check.pages()
        check.pinnedPages()
        check.childAndInvariants()
        check.tearDown()
        problems += check.problems
        return Result(cell: self, outcome: problems.isEmpty ? outcome : .fail, fired: fired, event: event,
                      problems: problems, notes: check.notes)
    }
}

/// "2nd", "3rd", "11th": how a cell names the report it waited for.
private func ordinal(_ n: Int) -> String {
    let suffix = (11...13).contains(n % 100) ? "th" : [1: "st", 2: "nd", 3: "rd"][n % 10] ?? "th"
    return "\(n)\(suffix)"
}

/// The steps `flow` reports, found by running it once with nothing armed: the distinct
/// (kind, direction) pairs in order of first report, and every report in order (how often
/// each step comes: `--occurrence`). The dry run is judged like a cell whose action is
/// `none`; its problems are returned too.
func raceDryRun(_ flow: RaceFlow, _ o: RaceOptions) throws -> (steps: [RaceStep], events: [RaceStep], problems: [String]) {
    let w = try RaceWorld(o)
    var problems: [String] = []
    do { try flow.prepare(w) } catch { problems.append("preparing the flow: \(error)") }
    w.recorder.reset()
    let inVRAM = w.vramInUse
    w.squeezeRAM()
    let result = flow.run(w)
    w.releaseRAM()
    let steps = w.recorder.steps
    let events = w.recorder.events.map { RaceStep(kind: $0.kind, direction: $0.direction) }
    if !flow.reportsSteps(in: o.configuration) {
        // The configuration makes the flow a plain access (coherent VRAM read in place by
        // the CPU): nothing may migrate, and no step may be reported.
        if !steps.isEmpty { problems.append("\(flow.rawValue) reported steps \(steps), expected none in this configuration") }
        if w.vramInUse != inVRAM {
            problems.append("\(flow.rawValue) moved pages out of VRAM (\(inVRAM) → \(w.vramInUse) in use)")
        }
    }
    var check = RaceCheck(world: w, flow: flow, action: .none)
    check.flowResult(result)
    check.gpuPages()
    check.pages()
    check.childAndInvariants()
    check.tearDown()
    return (steps, events, problems + check.problems)
}
