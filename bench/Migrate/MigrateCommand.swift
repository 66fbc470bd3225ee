import ArgumentParser
import DeviceEmu

/// `dmem-bench migrate`: the dmem flow end to end on one range, as a table or one JSON object.
struct MigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Migrates an anonymous range to VRAM, faults it back on the CPU, evicts a second one by teardown.",
        discussion: """
            Every byte is verified after each phase; memcpy_gbps is a plain memcpy of the same pages into \
            VRAM's mapping in the same run, and ratio_to_device = to_device_gbps / memcpy_gbps. \
            ratio_engine is the copy engine alone (same bytes, batches, depth and backend, no migrate_vma \
            step): the ceiling ratio_to_device can reach; driver_us_per_batch is the migration's time per \
            batch outside fence waits (setup, allocation, enqueue, pages, map, finalize; with --backend \
            memcpy, which copies inside submit, the copy too). \
            fault_p50_us/fault_p99_us are CPU reads that faulted (one page each unless --fault-around or \
            --prefetch sequential). \
            The same run is `dmem-bench run migrate` (sweeps, repeats, --trace).
            """
    )

    @Option(parsing: .unconditional, help: "Bytes migrated (a multiple of 2M). (default: 256M)", transform: ByteCount.argument) var total = ByteCount(256 << 20)
    @Option(parsing: .unconditional, help: "Pages per migrate_vma batch.", transform: NumberArgument.int) var batch = 512
    @Option(parsing: .unconditional, help: "Pages brought back per CPU fault (1 = nouveau's single page).", transform: NumberArgument.int) var faultAround = 1
    @Option(help: "off, or sequential: CPU-fault windows double along sequential scans up to 512 pages (readahead-style; not with --fault-around).") var prefetch = "off"
    @Option(help: "iouring, memcpy or mapped (--workers threads copy through the VRAM mapping).") var backend = "iouring"
    @Option(help: "Copy path of CPU faults: auto (faults of up to 16 pages copied on the CPU, larger ones through --backend), same (all through --backend), iouring, memcpy or mapped.") var faultBackend = "auto"
    @Option(parsing: .unconditional, help: "Batches in flight while migrating to VRAM (1 = nouveau's strict sequence).", transform: NumberArgument.int) var pipeline = 1
    @Option(parsing: .unconditional, help: "Worker threads of the mapped backend (default 2; only with --backend or --fault-backend mapped).", transform: NumberArgument.int) var workers: Int?
    @Option(help: "3step (migrate_vma_setup/pages/finalize) or 2017 (migrate_vma callbacks).") var api = "3step"
    @Option(help: "Register System RAM as io_uring fixed buffers (pinned) and use the fixed-buffer opcodes: on or off.")
    var fixedBuffers = "off"
    @Option(help: ArgumentHelp("Put VRAM in unnamed files in this directory instead of memfds, e.g. a tmpfs mounted with huge=always (README \"Performance\").", valueName: "dir"))
    var vramDir: String?
    @Flag(help: "Run in checked mode (protocol sanitizer): reports its cost and protocol_violations.") var checked = false
    @Flag(help: "Print exactly one JSON object on stdout instead of a table (no file name: redirect it, or use `dmem-bench run … --json FILE`).") var json = false

    var options: MigrateOptions {
        get throws {
            var o = MigrateOptions()
            o.totalBytes = total.bytes
            o.batchPages = batch
            o.faultAround = faultAround
            guard let p = MigrateOptions.Prefetch(rawValue: prefetch) else { throw ValidationError("--prefetch must be off or sequential") }
            o.prefetch = p
            guard let b = MigrateOptions.Backend(rawValue: backend) else {
                throw ValidationError("--backend must be one of: \(MigrateOptions.Backend.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            o.backend = b
            guard o.setFaultBackend(faultBackend) else {
                throw ValidationError("--fault-backend must be one of: \(MigrateOptions.faultBackendNames.joined(separator: ", "))")
            }
            o.pipeline = pipeline
            if let workers {
                guard o.backend == .mapped || o.faultBackend == .mapped else {
                    throw ValidationError("--workers sets the mapped backend's threads: use it with --backend mapped or --fault-backend mapped")
                }
                o.workers = workers
            }
            o.checked = checked
            o.vramDirectory = vramDir
            guard fixedBuffers == "on" || fixedBuffers == "off" else { throw ValidationError("--fixed-buffers must be on or off") }
            o.fixedBuffers = fixedBuffers == "on"
            guard let generation = MigrationPolicy.APIGeneration(name: api) else { throw ValidationError("--api must be 3step or 2017") }
            o.api = generation
            if let problem = o.problem {
                throw ValidationError(FlagWording.reword(problem, keys: ["total", "batch", "fault-around", "pipeline", "workers", "vram-dir"]))
            }
            return o
        }
    }

    func validate() throws { _ = try options }

    func run() throws {
        let o = try options
        try ScenarioReport.printSingleRun("migrate", json: json, columns: [
            "bytes", "batch_pages", "pipeline", "fault_around", "prefetch", "backend", "fault_backend", "to_device_gbps", "memcpy_gbps", "ratio_to_device", "ratio_engine",
            "to_ram_fault_gbps", "evict_gbps", "faults", "fault_p50_us", "fault_p99_us",
            "mallocs_per_page_to_device", "mallocs_per_page_fault", "mallocs_per_page_evict", "verified",
        ]) { try MigrateRun.measure(o, trace: nil, progress: { _ in }) }
    }
}
