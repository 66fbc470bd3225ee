/// The `mm` scenario in the bench framework: `dmem-bench run mm --sweep pages=1K,16K,256K,4M`
/// and the default suite's control-path entry. The measuring lives in `MMScenario.run`.
///
/// Threads: `run` uses only the calling thread.
struct MMBenchScenario: BenchScenario {
    let name = "mm"
    let abstract = "HostMM's migrate_vma setup/pages/finalize with a no-op copy (ns/page), and CPU faults on device pages."
    let parameters: [ScenarioParameter] = [
        .init("pages", .size(1...(1 << 24)), default: "64K", help: "pages to migrate (a count; K/M suffixes allowed)"),
        .init("batch", .integer(1...65536), default: "512", help: "pages per migrate_vma batch"),
        .init("checked", .choice(["off", "on"]), default: "off", help: "checked mode (protocol sanitizer) on the run's memory"),
    ]
    let quickParameters = ["pages": "16K"]
    let summaryFields = ["setup_ns_per_page", "pages_ns_per_page", "finalize_ns_per_page", "control_ns_per_page", "cpu_fault_ns"]
    let caseFields: [String] = []

    func run(_ parameters: ScenarioParameters, context: ScenarioContext) throws -> [RunRecord] {
        let pages = try parameters.size("pages")
        let batch = try parameters.int("batch")
        context.progress("migrating \(pages) pages in batches of \(batch)")
        let track = context.trace?.track("mm")
        let checked = try parameters.string("checked") == "on"
        return [try track.span("mm control path") { try MMScenario.run(pages: pages, batch: batch, checked: checked) }]
    }
}
