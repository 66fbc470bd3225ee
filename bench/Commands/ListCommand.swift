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

    /// The widest `values` cell; longer lists of words are printed under the table.
    static let maximumValuesWidth = 40

    static func text(registry: ScenarioRegistry, suite: BenchSuite) -> String {
        var lines: [String] = []
        for scenario in registry.scenarios {
            lines.append("\(scenario.name): \(scenario.abstract)")
            // A long list of words (race's actions) would widen every row: it goes below the table.
            let long = scenario.parameters.filter { $0.kindDescription.count > maximumValuesWidth }
            let rows = scenario.parameters.map { parameter in
                let values = long.contains(parameter) ? "one of \(parameter.choiceCount), below" : parameter.kindDescription
                return ["  " + parameter.key, values, "default \(parameter.defaultValue)", parameter.help]
            }
            lines.append(SummaryTable.render(header: ["  parameter", "values", "default", "meaning"], rows: rows)
                .split(separator: "\n").enumerated().filter { $0.offset != 1 }.map { String($0.element) }.joined(separator: "\n"))
            for parameter in long {
                lines.append(HelpText.term(parameter.key + ":", parameter.kindDescription.replacingOccurrences(of: "|", with: " "),
                                           column: parameter.key.count + 4))
            }
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
