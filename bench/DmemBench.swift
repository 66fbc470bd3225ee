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

    /// Refuses `dmem-bench help WORD` for a word that names no command (argument-parser
    /// would print the top-level help and exit 0), then parses and runs as usual.
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if let problem = unknownHelpTopic(arguments) { exit(withError: ValidationError(problem)) }
        main(arguments)
    }

    /// Why `arguments` asks `help` about a command that does not exist, or nil: each word
    /// after `help` must name a subcommand of the one before it (options are skipped).
    static func unknownHelpTopic(_ arguments: [String]) -> String? {
        guard arguments.first == "help" else { return nil }
        var command: any ParsableCommand.Type = DmemBench.self
        var path = "dmem-bench"
        for word in arguments.dropFirst() where !word.hasPrefix("-") {
            let subcommands = command.configuration.subcommands
            guard let next = subcommands.first(where: { $0.configuration.commandName == word }) else {
                let names = subcommands.compactMap { $0.configuration.commandName }
                return names.isEmpty
                    ? "no help for '\(word)': '\(path)' has no subcommands (see \(path) --help)"
                    : "no help for '\(word)': not a command (commands: \(names.joined(separator: ", ")); see \(path) --help)"
            }
            command = next
            path += " \(word)"
        }
        return nil
    }
}
