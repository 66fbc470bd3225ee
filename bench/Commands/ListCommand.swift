import ArgumentParser

/// `dmem-bench list`: the scenarios, their parameters (kind, default, help) and the suite.
struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "Lists the scenarios with their parameters and defaults, and the standard suite."
    )

    func run() {
        print(Self.text(registry: .standard, suite: .standard))
    }

    static func text(registry: ScenarioRegistry, suite: BenchSuite) -> String {
        var lines: [String] = []
        for scenario in registry.scenarios {
            lines.append("\(scenario.name): \(scenario.abstract)")
            let rows = scenario.parameters.map { ["  " + $0.key, $0.kindDescription, "default \($0.defaultValue)", $0.help] }
            lines.append(SummaryTable.render(header: ["  parameter", "values", "default", "meaning"], rows: rows)
                .split(separator: "\n").enumerated().filter { $0.offset != 1 }.map { String($0.element) }.joined(separator: "\n"))
            if !scenario.quickParameters.isEmpty {
                lines.append("  --quick sets: " + scenario.quickParameters.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
            }
            lines.append("")
        }
        lines.append("suite '\(suite.name)' (dmem-bench with no arguments):")
        for entry in suite.entries { lines.append("  \(entry.scenario) \(entry.sweep)") }
        return lines.joined(separator: "\n")
    }
}
