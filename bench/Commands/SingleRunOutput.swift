import ArgumentParser

extension ScenarioReport {
    /// The body of a command that measures one record: runs `measure` (a `ScenarioError`
    /// becomes the command's error message) and prints the record as exactly one JSON
    /// object or as a table of `columns`.
    static func printSingleRun(_ scenario: String, json: Bool, columns: [String],
                               _ measure: () throws -> RunRecord) throws {
        let record: RunRecord
        do { record = try measure() } catch let error as ScenarioError {
            throw ValidationError(error.description)
        }
        var report = ScenarioReport(scenario: scenario)
        report.runs = [record]
        print(json ? report.json : report.table(columns: columns))
    }
}
