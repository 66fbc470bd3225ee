import ArgumentParser

/// The `dmem-bench` root command. With no subcommand it runs the standard suite.
@main
struct DmemBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dmem-bench",
        abstract: "Benchmarks the dmem-emu copy engine and migration flow against a same-run memcpy.",
        discussion: """
            Every scenario verifies the bytes it moved and reports GB/s next to a plain memcpy \
            of the same pattern, measured in the same run, so the ratio is comparable across machines.

            Run with no arguments for the standard suite (about a minute). Examples:
              dmem-bench                       the suite; summary table on stdout
              dmem-bench --json r.json --plot plots/
                                               the suite, plus files and charts
              dmem-bench list                  scenarios, parameters, defaults
              dmem-bench run memcpy --sweep batch=1,64,512 page-size=4K,2M
              dmem-bench run memcpy --trace t.json   timeline for Perfetto UI
            """,
        subcommands: [SuiteCommand.self, RunCommand.self, ListCommand.self, CopyCommand.self, MMCommand.self, MigrateCommand.self,
                      ThrashCommand.self, TortureCommand.self, RaceCommand.self],
        defaultSubcommand: SuiteCommand.self
    )
}
