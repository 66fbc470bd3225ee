/// The settings of one race matrix (`dmem-bench race` flags, or the `race` scenario's parameters).
///
/// Threads: immutable value; any thread.
struct RaceOptions: Sendable {
    var flows = RaceFlow.allCases
    var actions = RaceAction.allCases
    /// How long the driver is held at a step for the action (longer: an action blocked by
    /// the held thread is told apart from a slow one more surely; every `after` cell costs it).
    var hold: Duration = .milliseconds(20)
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
        return configuration.problem
    }

    /// Parses a comma-separated list of names (or `all`) of `T`'s cases.
    static func list<T: RawRepresentable & CaseIterable>(_ text: String, of: T.Type, what: String) throws(RaceOptionError) -> [T]
    where T.RawValue == String {
        if text == "all" { return Array(T.allCases) }
        var out: [T] = []
        for name in text.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
            guard let value = T(rawValue: name) else {
                throw RaceOptionError("unknown \(what) '\(name)': use all or a comma-separated list of "
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
