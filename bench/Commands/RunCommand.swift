import ArgumentParser

/// `dmem-bench run SCENARIO [--set k=v…] [--sweep k=v1,v2…]`: one scenario, one point or a sweep.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Runs one scenario at one point or over a sweep of its parameters.",
        discussion: """
            Parameters are KEY=VALUE; `dmem-bench list` shows each scenario's keys, kinds and defaults. \
            Sizes take K/M/G/T suffixes (binary). Every value is checked before the first run.

            --sweep takes KEY=V1,V2,… specs, repeated or space-separated; the runs \
            are the cartesian product, first key outermost:
              dmem-bench run memcpy --sweep batch=1,8,64,512,2048 \\
                                    --sweep page-size=4K,64K,2M
              dmem-bench run memcpy --sweep "batch=1,64 page-size=4K,2M" \\
                                    --repeat 5 --json out.json
            --set fixes single values for every point:
              dmem-bench run memcpy --set total=1G span=4G --plot plots/
            """
    )

    @Argument(help: ArgumentHelp("The scenario to run (see `dmem-bench list`).", valueName: "scenario"))
    var scenario: String

    @Option(name: .customLong("set"), parsing: .upToNextOption,
            help: ArgumentHelp("Fix parameters for every point: KEY=VALUE …", valueName: "key=value"))
    var settings: [String] = []

    @Option(parsing: .upToNextOption,
            help: ArgumentHelp("Sweep parameters: KEY=V1,V2,… (repeatable; space-separated specs).", valueName: "key=values"))
    var sweep: [String] = []

    @OptionGroup var options: BenchOptions

    func validate() throws {
        do { _ = try jobs() } catch { throw error.validationError }
    }

    func run() throws {
        let jobs: [BenchJob]
        do { jobs = try self.jobs() } catch { throw error.validationError }
        try BenchSession(options: options).execute(jobs)
    }

    /// The points of this invocation: `--set` and `--sweep` checked against the scenario, and
    /// each point (with `--quick` applied) against the scenario's `check`.
    func jobs(registry: ScenarioRegistry = .standard) throws(ParameterValueError) -> [BenchJob] {
        let scenario = try registry.scenario(named: scenario)
        let fixed = try SweepSpec(parsing: settings)
        if let axis = fixed.axes.first(where: { $0.values.count > 1 }) {
            throw ParameterValueError("--set \(axis.key)=\(axis.values.joined(separator: ",")) gives several values; use --sweep to run each")
        }
        let spec = try fixed.appending(SweepSpec(parsing: sweep))
        let plan = try SweepPlan(scenario: scenario, spec: spec)
        let jobs = plan.points.map { BenchJob(scenario: scenario, parameters: $0) }
        try BenchRunner.check(jobs, quick: options.quick)
        return jobs
    }
}
