/// A sweep checked against a scenario and expanded into its points: the cartesian
/// product of the axes, first axis outermost (like nested loops in the order given).
///
/// Every value is validated and canonicalised before the first run, so a typo in the
/// last value of a long sweep fails at once instead of after minutes of measuring.
///
/// Threads: immutable value; any thread.
struct SweepPlan: Sendable {
    let scenario: any BenchScenario
    let axes: [SweepSpec.Axis]
    let points: [ScenarioParameters]

    init(scenario: any BenchScenario, spec: SweepSpec) throws(ParameterValueError) {
        var checked: [SweepSpec.Axis] = []
        for axis in spec.axes {
            guard let parameter = scenario.parameter(axis.key) else {
                throw ParameterValueError(ScenarioParameters.unknownKeyMessage(axis.key, scenario: scenario))
            }
            var values: [String] = []
            for raw in axis.values {
                let value = try parameter.canonical(raw).get()
                guard !values.contains(value) else {
                    throw ParameterValueError("value '\(raw)' is listed twice for '\(axis.key)'")
                }
                values.append(value)
            }
            checked.append(.init(key: axis.key, values: values))
        }
        self.scenario = scenario
        self.axes = checked
        var points: [ScenarioParameters] = []
        for combination in Self.cartesianProduct(checked.map(\.values)) {
            let overrides = zip(checked, combination).map { (key: $0.key, value: $1) }
            points.append(try ScenarioParameters(for: scenario, overrides: overrides))
        }
        self.points = points
    }

    /// All combinations picking one element of each list, first list varying slowest.
    /// The product of no lists is one empty combination (a plain run of the defaults).
    static func cartesianProduct(_ lists: [[String]]) -> [[String]] {
        var result: [[String]] = [[]]
        for list in lists {
            result = result.flatMap { prefix in list.map { prefix + [$0] } }
        }
        return result
    }
}
