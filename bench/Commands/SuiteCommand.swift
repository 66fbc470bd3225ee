import ArgumentParser

/// `dmem-bench [suite]`: the standard suite with one combined summary (the default command).
struct SuiteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "suite",
        abstract: "Runs the standard suite (about a minute) and prints one summary table. The default command.",
        discussion: """
            The summary shows, per case, GB/s, the same-run memcpy GB/s and their ratio, and the \
            latency percentiles (p50, p90, p99, p99.9, max in µs) the scenario recorded. \
            `dmem-bench suite --dry-run` lists the points; `dmem-bench run` measures one scenario.
            """
    )

    @Option(parsing: .upToNextOption, help: ArgumentHelp("Only these scenarios of the suite.", valueName: "scenario"))
    var only: [String] = []

    @Flag(help: "List the suite's points without running them.")
    var dryRun = false

    @OptionGroup var options: BenchOptions

    /// Words after `dmem-bench` that name no command: the suite (the default command) would
    /// call a mistyped `dmem-bench lsit` "2 unexpected arguments".
    @Argument(help: .hidden) var unknownCommand: [String] = []

    func validate() throws {
        if let word = unknownCommand.first {
            let names = DmemBench.configuration.subcommands.compactMap { $0.configuration.commandName }
            throw ValidationError("unknown command '\(word)' (commands: \(names.joined(separator: ", ")); see dmem-bench --help)")
        }
        if dryRun {
            let ignored = [("--json", options.json != nil), ("--csv", options.csv != nil), ("--plot", options.plot != nil),
                           ("--trace", options.trace != nil), ("--repeat", options.repeats != 1)].filter(\.1).map(\.0)
            if !ignored.isEmpty {
                throw ValidationError("--dry-run measures nothing, so \(ignored.joined(separator: ", ")) would do nothing: leave out one or the other")
            }
        }
        do { _ = try jobs() } catch { throw error.validationError }
    }

    func run() throws {
        let jobs: [BenchJob]
        do { jobs = try self.jobs() } catch { throw error.validationError }
        if dryRun {
            for job in jobs {
                var line = [job.scenario.name, job.parameters.label].filter { !$0.isEmpty }.joined(separator: " ")
                if options.quick {
                    let quick = BenchRunner.quickValues(of: job.scenario).filter { !job.parameters.explicitKeys.contains($0.key) }
                    line += quick.isEmpty ? "  (quick: as listed)"
                        : "  (quick: " + quick.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") + ")"
                }
                print(line)
            }
            return
        }
        try BenchSession(options: options).execute(jobs)
    }

    func jobs(suite: BenchSuite = .standard, registry: ScenarioRegistry = .standard) throws(ParameterValueError) -> [BenchJob] {
        for name in only where registry[name] == nil {
            throw ParameterValueError("unknown scenario '\(name)' (known: \(registry.names.joined(separator: ", ")))")
        }
        let jobs = try suite.jobs(registry: registry, only: only.isEmpty ? nil : Set(only))
        guard !jobs.isEmpty else { throw ParameterValueError("the suite has no entries for \(only.joined(separator: ", "))") }
        try BenchRunner.check(jobs, quick: options.quick)
        return jobs
    }
}
