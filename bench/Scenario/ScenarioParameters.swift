/// One point of a sweep: a value for every parameter of a scenario (string → string,
/// canonical spellings), and which keys were chosen explicitly (for labels).
///
/// Threads: immutable value; any thread.
struct ScenarioParameters: Sendable, Equatable {
    /// Every declared key with its value (explicit or default), canonically spelled.
    private(set) var values: [String: String]
    /// The keys set by the user or the suite entry, in the order given; the rest are defaults.
    private(set) var explicitKeys: [String]

    init(values: [String: String], explicitKeys: [String] = []) {
        self.values = values
        self.explicitKeys = explicitKeys
    }

    /// The defaults of `scenario` overridden by `overrides` (validated and canonicalised).
    init(for scenario: any BenchScenario, overrides: [(key: String, value: String)] = []) throws(ParameterValueError) {
        var values: [String: String] = [:]
        for parameter in scenario.parameters { values[parameter.key] = parameter.defaultValue }
        var explicit: [String] = []
        for (key, value) in overrides {
            guard let parameter = scenario.parameter(key) else {
                throw ParameterValueError(Self.unknownKeyMessage(key, scenario: scenario))
            }
            values[key] = try parameter.canonical(value).get()
            if !explicit.contains(key) { explicit.append(key) }
        }
        self.init(values: values, explicitKeys: explicit)
    }

    static func unknownKeyMessage(_ key: String, scenario: any BenchScenario) -> String {
        "unknown parameter '\(key)' for scenario '\(scenario.name)' (known: \(scenario.parameters.map(\.key).joined(separator: ", ")))"
    }

    subscript(key: String) -> String? { values[key] }

    /// The raw text of `key`; throws when the scenario did not declare it.
    func string(_ key: String) throws(ParameterValueError) -> String {
        guard let value = values[key] else { throw ParameterValueError("missing parameter '\(key)'") }
        return value
    }

    func int(_ key: String) throws(ParameterValueError) -> Int {
        let text = try string(key)
        guard let n = Int(text) else { throw ParameterValueError("'\(text)' is not a valid value for '\(key)' (expected an integer)") }
        return n
    }

    /// The byte count of a size parameter (`4K` → 4096).
    func size(_ key: String) throws(ParameterValueError) -> Int {
        let text = try string(key)
        guard let size = ByteCount(parsing: text) else { throw ParameterValueError("'\(text)' is not a valid size for '\(key)'") }
        return size.bytes
    }

    func flag(_ key: String) throws(ParameterValueError) -> Bool {
        switch try string(key).lowercased() {
        case "on", "yes", "true", "1": return true
        case "off", "no", "false", "0": return false
        case let other: throw ParameterValueError("'\(other)' is not a valid value for '\(key)' (expected on or off)")
        }
    }

    /// `k=v` for the explicit keys, in order: the label of this point in progress lines and tables.
    var label: String {
        explicitKeys.map { "\($0)=\(values[$0] ?? "")" }.joined(separator: " ")
    }

    /// The same point with more values fixed (later keys win); used to apply `--quick` overrides
    /// to keys the user did not set.
    func merging(defaults overrides: [String: String]) -> ScenarioParameters {
        var copy = self
        for (key, value) in overrides where copy.values[key] != nil && !explicitKeys.contains(key) {
            copy.values[key] = value
        }
        return copy
    }
}
