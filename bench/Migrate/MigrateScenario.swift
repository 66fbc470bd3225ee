import DeviceEmu

/// The `migrate` scenario in the bench framework: `dmem-bench run migrate --sweep batch=…`
/// and the default suite's end-to-end entry. The measuring lives in `MigrateRun`.
///
/// Threads: `run` uses the calling thread (and the device's copy-engine threads).
struct MigrateScenario: BenchScenario {
    let name = "migrate"
    let abstract = "The nouveau dmem flow end to end: migrate to VRAM, CPU faults back, eviction by teardown."
    let parameters: [ScenarioParameter] = [
        .init("total", .size((2 << 20)...(1 << 36)), default: "256M", help: "bytes migrated (a multiple of 2M)"),
        .init("batch", .integer(1...4096), default: "512", help: "pages per migrate_vma batch (nouveau: 128, then 512)"),
        .init("fault-around", .integer(1...512), default: "1", help: "pages brought back per CPU fault"),
        .init("prefetch", .choice(MigrateOptions.Prefetch.allCases.map(\.rawValue)), default: "off",
              help: "sequential: CPU-fault windows double along sequential scans up to 512 pages (readahead-style; not with fault-around)"),
        .init("backend", .choice(MigrateOptions.Backend.allCases.map(\.rawValue)), default: "iouring",
              help: "copy engine backend"),
        .init("fault-backend", .choice(MigrateOptions.faultBackendNames), default: "auto",
              help: "copy path of CPU faults (auto: small faults by CPU copy; same: all through backend)"),
        .init("pipeline", .integer(1...8), default: "1", help: "batches in flight while migrating to VRAM"),
        .init("workers", .integer(1...8), default: "2", help: "worker threads of the mapped backend"),
        .init("api", .choice(["3step", "2017"]), default: "3step", help: "migrate_vma_setup/pages/finalize or 2017 callbacks"),
        .init("fixed-buffers", .choice(["off", "on"]), default: "off", help: "register System RAM as io_uring fixed buffers"),
        .init("vram-dir", .text, default: "memfd", help: "memfd, or a directory for VRAM's files (a huge=always tmpfs)"),
        .init("seed", .integer(0...Int.max), default: "1", help: "seed of the data pattern"),
        .init("checked", .choice(["off", "on"]), default: "off", help: "checked mode (protocol sanitizer) on the run's memory"),
    ]
    let quickParameters = ["total": "16M"]
    let summaryFields = ["faults", "backend", "ratio_engine", "driver_us_per_batch", "fence_wait_us_per_batch"]
    let caseFields: [String] = []

    func run(_ parameters: ScenarioParameters, context: ScenarioContext) throws -> [RunRecord] {
        [try MigrateRun.measure(options(parameters), trace: context.trace, progress: context.progress)]
    }

    func check(_ parameters: ScenarioParameters) throws(ParameterValueError) {
        if let problem = try options(parameters).problem { throw ParameterValueError(problem) }
    }

    /// The run's settings at one point (every key was validated by the framework).
    func options(_ parameters: ScenarioParameters) throws(ParameterValueError) -> MigrateOptions {
        var o = MigrateOptions()
        o.totalBytes = try parameters.size("total")
        o.batchPages = try parameters.int("batch")
        o.faultAround = try parameters.int("fault-around")
        o.prefetch = MigrateOptions.Prefetch(rawValue: try parameters.string("prefetch")) ?? .off
        o.backend = MigrateOptions.Backend(rawValue: try parameters.string("backend")) ?? .iouring
        _ = o.setFaultBackend(try parameters.string("fault-backend"))
        o.pipeline = try parameters.int("pipeline")
        o.workers = try parameters.int("workers")
        o.api = MigrationPolicy.APIGeneration(name: try parameters.string("api")) ?? .threeStep
        o.seed = UInt64(try parameters.int("seed"))
        o.fixedBuffers = try parameters.string("fixed-buffers") == "on"
        let dir = try parameters.string("vram-dir")
        o.vramDirectory = dir == "memfd" ? nil : dir
        o.checked = try parameters.string("checked") == "on"
        return o
    }
}
