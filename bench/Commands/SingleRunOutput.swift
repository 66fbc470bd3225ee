import ArgumentParser

extension ScenarioReport {
    /// The body of a command that measures one record: runs `measure` and prints the record
    /// as exactly one JSON object or as a table of `columns`. An error of the run (e.g. a
    /// `ScenarioError`: not enough memory) is printed as `Error: …` with exit status 1, not as
    /// a usage error: the arguments were valid.
    static func printSingleRun(_ scenario: String, json: Bool, columns: [String],
                               _ measure: () throws -> RunRecord) throws {
        let record = try measure()
        var report = ScenarioReport(scenario: scenario)
        report.runs = [record]
        print(json ? report.json : report.table(columns: columns))
    }
}
