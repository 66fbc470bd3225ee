import ArgumentParser
import HostMM

/// `dmem-bench mm`: HostMM's migration control path, ns per page.
struct MMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mm",
        abstract: "Times migrate_vma setup/pages/finalize with a no-op copy, and CPU faults on device-private pages.",
        discussion: """
            Pages are migrated RAM → device-private in --batch steps; each HostMM step is timed \
            separately (driver allocation excluded). Then CPU reads fault device pages back one \
            at a time through migrateToRAM (memcpy). --sweep runs 1Ki, 16Ki, 256Ki and 4Mi pages.
            """
    )

    @Option(parsing: .unconditional, help: "Pages to migrate (a count; K/M suffixes allowed; default 64K).", transform: ByteCount.argument) var pages: ByteCount?
    @Option(parsing: .unconditional, help: "Pages per migrate_vma batch.", transform: NumberArgument.int) var batch = 512
    @Flag(help: "Run 1Ki, 16Ki, 256Ki and 4Mi pages (flatness check).") var sweep = false
    @Flag(help: "Run in checked mode (protocol sanitizer): reports its cost and protocol_violations.") var checked = false
    @Flag(help: "Print exactly one JSON object on stdout instead of a table (no file name: redirect it, or use `dmem-bench run … --json FILE`).") var json = false

    func validate() throws {
        if sweep && pages != nil { throw ValidationError("--sweep chooses the page counts itself; leave out --pages") }
        guard (1...(1 << 24)).contains(pages?.bytes ?? 65536) else { throw ValidationError("--pages must be in 1...16Mi") }
        guard batch > 0, batch <= 1 << 16 else { throw ValidationError("--batch must be in 1...65536") }
    }

    func run() throws {
        var report = ScenarioReport(scenario: "mm")
        for n in sweep ? [1 << 10, 1 << 14, 1 << 18, 1 << 22] : [pages?.bytes ?? 65536] {
            report.runs.append(try MMScenario.run(pages: n, batch: batch, checked: checked))
        }
        print(json ? report.json : report.table(columns: [
            "pages", "batch", "setup_ns_per_page", "pages_ns_per_page", "finalize_ns_per_page",
            "control_ns_per_page", "driver_alloc_ns_per_page", "cpu_fault_ns", "memcpy_4k_ns", "checked",
        ]))
    }
}
