import ArgumentParser

/// The `dmem-bench` root command: one subcommand per scenario.
@main
struct DmemBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dmem-bench",
        abstract: "Benchmarks the dmem-emu copy engine and migration flow against a same-run memcpy.",
        discussion: """
            Every scenario verifies the bytes it moved and reports GB/s next to a plain memcpy \
            of the same pattern, measured in the same run, so the ratio is comparable across machines.
            """,
        subcommands: [MMCommand.self]
    )
}
