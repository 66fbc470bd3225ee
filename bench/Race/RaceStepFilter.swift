import DeviceEmu

/// The steps a race matrix holds at (`dmem-bench race --step`): names as the table's rows
/// print them — a `MigrationEvent` kind, with `.direction` for a migration step
/// (`fenceWaitBegin.toDevice`, `cpuFaultBegin.toRAM`, `gpuFault`). A kind without a
/// direction selects that kind in every direction (`setupEnd`: to-device, to-RAM and
/// eviction batches alike).
///
/// Threads: immutable value; any thread.
struct RaceStepFilter: Sendable, Equatable, CustomStringConvertible {
    /// One name of the list: a kind, and the direction it was written with (nil: any).
    struct Pattern: Sendable, Equatable, CustomStringConvertible {
        var kind: MigrationEvent.Kind
        var direction: MigrationEvent.Direction?

        func matches(_ step: RaceStep) -> Bool {
            step.kind == kind && (direction == nil || step.direction == direction)
        }

        var description: String {
            guard let direction, direction != .none else { return "\(kind)" }
            return "\(kind).\(direction)"
        }
    }

    var patterns: [Pattern]

    /// Parses `all` (nil: no filter) or a comma-separated list of step names.
    static func parse(_ text: String) throws(RaceOptionError) -> RaceStepFilter? {
        if text == "all" { return nil }
        var out: [Pattern] = []
        for name in text.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
            let parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            let kind = MigrationEvent.Kind.allCases.first { "\($0)" == parts[0] }
            let direction = parts.count == 2 ? MigrationEvent.Direction.allCases.first { "\($0)" == parts[1] } : nil
            guard let kind, parts.count <= 2, parts.count == 1 || direction != nil else {
                let problem = name == "all" ? "'all' cannot be combined with other names" : "unknown step '\(name)'"
                throw RaceOptionError(
                    "\(problem): use all or a comma-separated list of steps as the table names them, "
                    + "a kind with an optional .direction (fenceWaitBegin.toDevice, cpuFaultBegin, gpuFault); kinds: "
                    + MigrationEvent.Kind.allCases.map { "\($0)" }.joined(separator: ", ") + "; directions: "
                    + MigrationEvent.Direction.allCases.filter { $0 != .none }.map { "\($0)" }.joined(separator: ", "))
            }
            let p = Pattern(kind: kind, direction: direction)
            if !out.contains(p) { out.append(p) }
        }
        return RaceStepFilter(patterns: out)
    }

    func matches(_ step: RaceStep) -> Bool { patterns.contains { $0.matches(step) } }

    var description: String { patterns.map(\.description).joined(separator: ",") }
}
