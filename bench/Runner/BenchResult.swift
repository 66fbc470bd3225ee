/// One record of one point, after repeats: what the JSON/CSV files, the plots and the
/// summary table are made of.
///
/// Threads: immutable value; any thread.
struct BenchResult: Sendable {
    var scenario: String
    var parameters: ScenarioParameters
    /// How many times the point was measured; `record` is the aggregate (median and spread).
    var repeats: Int
    var record: RunRecord
    /// The per-repeat records when `repeats > 1` (kept in the JSON as `samples`).
    var samples: [RunRecord]
}

/// One thing to measure: a scenario at one point.
struct BenchJob: Sendable {
    var scenario: any BenchScenario
    var parameters: ScenarioParameters
}

/// A point failed; carries what was measured before it so the outputs can still be written.
struct BenchRunError: Error, CustomStringConvertible {
    var job: String
    var underlying: any Error
    var completed: [BenchResult]
    var description: String { "\(job): \(underlying)" }
}
