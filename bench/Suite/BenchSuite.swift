/// A list of (scenario, parameters) entries run one after the other with one combined
/// summary: what `dmem-bench` runs with no arguments.
///
/// Each entry's parameters use the `--sweep` syntax, so one entry may expand to several
/// points (`"page-size=4K,64K coalesce=on,off"`). Put the memcpy baselines first: the
/// summary's ratio column compares against them.
///
/// Threads: immutable value; any thread.
struct BenchSuite: Sendable {
    struct Entry: Sendable {
        var scenario: String
        var sweep: String

        init(_ scenario: String, _ sweep: String = "") {
            self.scenario = scenario
            self.sweep = sweep
        }
    }

    var name: String
    var entries: [Entry]

    /// The default run (~1 minute in a release build on a 2-core machine).
    static let standard = BenchSuite(name: "standard", entries: [
        Entry("memcpy", "page-size=4K,64K,2M"),
        // h2d, d2h and d2d per point (128M, median of 3 passes): ~11 s in release on the 2-core reference machine.
        Entry("copy", "page-size=4K,64K coalesce=on,off"),
        Entry("mm", "pages=64K"),
        Entry("migrate", "backend=iouring,mapped batch=2048 pipeline=2"),
        Entry("thrash", "remote-link=none,pcie4 gpu-fault=migrate,map,thrashing"),
    ])

    /// The jobs of every entry, checked against `registry` (unknown scenarios or keys, bad values).
    func jobs(registry: ScenarioRegistry = .standard, only: Set<String>? = nil) throws(ParameterValueError) -> [BenchJob] {
        var jobs: [BenchJob] = []
        for entry in entries where only?.contains(entry.scenario) ?? true {
            let scenario = try registry.scenario(named: entry.scenario)
            let spec: SweepSpec
            do {
                spec = try SweepSpec(parsing: [entry.sweep])
            } catch {
                throw ParameterValueError("suite entry \(entry.scenario) '\(entry.sweep)': \(error.message)")
            }
            let plan = try SweepPlan(scenario: scenario, spec: spec)
            jobs += plan.points.map { BenchJob(scenario: scenario, parameters: $0) }
        }
        return jobs
    }
}
