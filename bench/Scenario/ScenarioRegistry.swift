/// The scenarios `dmem-bench` knows, by name.
///
/// Add a scenario by appending an instance to `standard` (one line); its name must be unique.
///
/// Threads: immutable; any thread.
struct ScenarioRegistry: Sendable {
    let scenarios: [any BenchScenario]

    init(_ scenarios: [any BenchScenario]) {
        self.scenarios = scenarios
    }

    /// Every scenario of the tool. The copy, mm and migrate scenarios are added here as they land.
    static let standard = ScenarioRegistry([
        MemcpyScenario(),
        CopyBenchScenario(),
        MMBenchScenario(),
        MigrateScenario(),
        ThrashScenario(),
        TortureScenario(),
        RaceScenario(),
    ])

    var names: [String] { scenarios.map(\.name) }

    subscript(name: String) -> (any BenchScenario)? {
        scenarios.first { $0.name == name }
    }

    /// The scenario called `name`, or an error listing the known names.
    func scenario(named name: String) throws(ParameterValueError) -> any BenchScenario {
        guard let scenario = self[name] else {
            throw ParameterValueError("unknown scenario '\(name)' (known: \(names.joined(separator: ", ")))")
        }
        return scenario
    }
}
