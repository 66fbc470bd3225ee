/// The runs of one scenario, printed for people (a table) or machines
/// (exactly one JSON object `{"scenario": name, "runs": [...]}` on stdout).
struct ScenarioReport: Sendable {
    var scenario: String
    var runs: [RunRecord] = []

    init(scenario: String) { self.scenario = scenario }

    var json: String {
        "{\"scenario\":\(JSONText.quote(scenario)),\"runs\":[" + runs.map(\.json).joined(separator: ",") + "]}"
    }

    /// A fixed-width table of the chosen columns (all fields of the first run when `columns` is nil).
    func table(columns: [String]? = nil) -> String {
        let names = columns ?? runs.first?.fields.map(\.name) ?? []
        let cells = runs.map { run in names.map { run[$0]?.formatted() ?? "-" } }
        var widths = names.map(\.count)
        for row in cells {
            for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) }
        }
        func line(_ row: [String]) -> String {
            row.enumerated().map { i, cell in
                String(repeating: " ", count: widths[i] - cell.count) + cell
            }.joined(separator: "  ")
        }
        var out = [line(names), widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")]
        out += cells.map(line)
        return out.joined(separator: "\n")
    }
}
