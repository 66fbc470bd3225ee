/// A benchmark scenario: a named runner that takes one point of parameters and
/// returns the records it measured (one or more: e.g. one per direction).
///
/// Plugging a scenario in means conforming to this protocol and adding an instance
/// to `ScenarioRegistry.standard`; `dmem-bench run NAME`, `--sweep`, `--repeat`,
/// the suite, JSON/CSV/plots and the summary table then work for it unchanged.
///
/// Threads: `run` is called from the command's thread, one point at a time; a
/// scenario may start its own threads inside `run` but must join them before
/// returning. Instances are immutable values shared freely (`Sendable`).
protocol BenchScenario: Sendable {
    /// The name used on the command line (`dmem-bench run memcpy`) and in the `scenario` field.
    var name: String { get }
    /// One line for `dmem-bench list` and help texts.
    var abstract: String { get }
    /// Every parameter this scenario accepts, with its default; sweeps over any other key are rejected.
    var parameters: [ScenarioParameter] { get }
    /// Overrides applied by `--quick` (CI-sized runs), e.g. `["total": "16M"]`.
    var quickParameters: [String: String] { get }
    /// Record fields worth a column in the combined summary table beyond GB/s and latency
    /// (e.g. `setup_ns_per_page`); shown as `name=value` in its "details" column.
    var summaryFields: [String] { get }
    /// Record fields (string or bool) that tell one record of a run from another, e.g. `direction`.
    var caseFields: [String] { get }

    /// Measures one point. `parameters` holds a validated value for every declared key.
    /// Throws to fail the point; the runner reports the error and stops.
    func run(_ parameters: ScenarioParameters, context: ScenarioContext) throws -> [RunRecord]

    /// Rejects a point whose values are each valid but do not fit together (a total that is
    /// not a multiple of the page size); called for every point before the first runs.
    func check(_ parameters: ScenarioParameters) throws(ParameterValueError)
}

extension BenchScenario {
    var quickParameters: [String: String] { [:] }
    var summaryFields: [String] { [] }
    var caseFields: [String] { ["direction"] }

    func check(_ parameters: ScenarioParameters) throws(ParameterValueError) {}

    /// The declaration of `key`, if this scenario has one.
    func parameter(_ key: String) -> ScenarioParameter? {
        parameters.first { $0.key == key }
    }
}

/// What a scenario gets besides its parameters.
///
/// Threads: immutable; any thread.
struct ScenarioContext: Sendable {
    /// Where to record spans; nil unless `--trace FILE` was given (so `trace?.…` costs nothing then).
    var trace: TraceProcess?
    /// True under `--quick`: keep the run short (CI-sized) even for parameters not in `quickParameters`.
    var quick: Bool = false
    /// Sub-step progress for long points ("migrating 256M…"); shown on stderr's progress line.
    var progress: @Sendable (String) -> Void = { _ in }
}

/// An error a scenario throws when it cannot measure (setup failed, verification mismatch…).
struct ScenarioError: Error, CustomStringConvertible, Equatable {
    var scenario: String
    var message: String
    var description: String { "\(scenario): \(message)" }
}
