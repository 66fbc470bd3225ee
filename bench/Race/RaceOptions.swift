/// The settings of one race matrix (`dmem-bench race` flags, or the `race` scenario's parameters).
///
/// Threads: immutable value; any thread.
struct RaceOptions: Sendable, Equatable {
    var flows = RaceFlow.allCases
    var actions = RaceAction.allCases
    /// The steps held at (`--step`); nil: every step each flow's dry run reports.
    var steps: RaceStepFilter?
    /// Hold at this report of the step (`--occurrence`; 2: the second batch's, when the
    /// flow has two). Rows are the steps the dry run reported at least this often.
    var occurrence = 1
    /// How long the driver is held at a step for the action (longer: an action blocked by
    /// the held thread is told apart from a slow one more surely; every `after` cell costs it).
    var hold: Duration = RaceOptions.defaultHold
    /// Pages of the process; batches of `RaceWorld.batchPages`, so above 16 there are two batches.
    var pages = 32
    /// The page the actions aim at (in the first batch).
    var target = 1
    var copyBackend = MigrateOptions.Backend.iouring
    /// The target page is never written: a hole (`migrate_vma` populates it with a cleared
    /// page, `migrate_vma_insert_page`), whose content is zeros.
    var targetHole = false
    /// The driver configuration of every world.
    var configuration = RaceConfiguration()

    static let pageRange = 17...512
    static let occurrenceRange = 1...64
    static let defaultHold: Duration = .milliseconds(20)

    /// The configuration's fields and the copy backend, as the text header and each JSON
    /// record show them.
    var configurationFields: [(key: String, value: String)] {
        configuration.fields + [("backend", copyBackend.rawValue), ("target_hole", targetHole ? "on" : "off")]
    }

    /// Why these options cannot run, or nil.
    var problem: String? {
        if flows.isEmpty { return "flow: name at least one flow" }
        if actions.isEmpty { return "action: name at least one action" }
        if hold < .milliseconds(1) || hold > .seconds(5) { return "hold must be in 1...5000 ms" }
        if !Self.pageRange.contains(pages) {
            return "pages must be in \(Self.pageRange) (more than one batch of \(RaceWorld.batchPages), at most 2M)"
        }
        if !(0..<pages).contains(target) { return "target must be a page of the range: 0..<\(pages)" }
        if !Self.occurrenceRange.contains(occurrence) { return "occurrence must be in \(Self.occurrenceRange)" }
        let driver = configuration.driver
        if flows != RaceFlow.allCases, let f = flows.first(where: { $0.driver != driver }) {
            return "flow \(f.rawValue) runs on --driver \(f.driver.rawValue), not \(driver.rawValue)"
        }
        if actions != RaceAction.allCases, let a = actions.first(where: { !$0.applies(to: driver) }) {
            return "action \(a.rawValue) does not exist on --driver \(driver.rawValue)"
        }
        return configuration.problem
    }

    /// These options with `all` (every case) narrowed to the flows and actions of the
    /// configuration's driver: what the matrix runs.
    var forDriver: RaceOptions {
        var o = self
        o.flows = flows.filter { $0.driver == configuration.driver }
        o.actions = actions.filter { $0.applies(to: configuration.driver) }
        return o
    }

    /// Hold in whole milliseconds, as `--hold` takes it.
    var holdMilliseconds: Int {
        Int(hold.components.seconds) * 1000 + Int(hold.components.attoseconds / 1_000_000_000_000_000)
    }

    /// The `dmem-bench race` arguments that run one cell of these options again: its flow,
    /// step and action, and every setting that differs from the default (a failing cell's
    /// `rerun` line).
    func rerunArguments(flow: RaceFlow, step: RaceStep, action: RaceAction) -> [String] {
        var a = ["--flow", flow.rawValue, "--step", step.description, "--action", action.rawValue]
        let d = RaceOptions()
        if occurrence != d.occurrence { a += ["--occurrence", "\(occurrence)"] }
        if hold != d.hold { a += ["--hold", "\(holdMilliseconds)"] }
        if pages != d.pages { a += ["--pages", "\(pages)"] }
        if target != d.target { a += ["--target", "\(target)"] }
        if targetHole { a.append("--hole") }
        if copyBackend != d.copyBackend { a += ["--backend", copyBackend.rawValue] }
        return a + configuration.arguments
    }

    /// Parses a comma-separated list of names (or `all`) of `T`'s cases.
    static func list<T: RawRepresentable & CaseIterable>(_ text: String, of: T.Type, what: String) throws(RaceOptionError) -> [T]
    where T.RawValue == String {
        if text == "all" { return Array(T.allCases) }
        var out: [T] = []
        for name in text.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
            guard let value = T(rawValue: name) else {
                let problem = name == "all" ? "'all' cannot be combined with other names" : "unknown \(what) '\(name)'"
                throw RaceOptionError("\(problem): use all or a comma-separated list of "
                                      + T.allCases.map(\.rawValue).joined(separator: ", "))
            }
            if !out.contains(where: { $0.rawValue == value.rawValue }) { out.append(value) }
        }
        return out
    }
}

/// A bad `--flow` or `--action` list.
struct RaceOptionError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
