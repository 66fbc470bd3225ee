import ArgumentParser
import DMAEngine
import Foundation

/// `dmem-bench copy`: the copy engine alone, scattered host frames ↔ contiguous VRAM pages.
///
/// The same measurement as the `copy` scenario (`dmem-bench run copy`), with its own
/// flags and a sweep of the three directions × coalescing on/off when they are not given.
struct CopyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy",
        abstract: "Batched page copies through the DMA engine vs a same-run memcpy of the same scatter pattern.",
        discussion: """
            Without --direction, sweeps h2d, d2h and d2d; without --coalesce, measures coalescing on and off. \
            Seconds are the median of --repeats passes; every pass is verified byte for byte. \
            With --json, stdout is exactly one JSON object {"scenario":"copy","runs":[…]}. \
            For sweeps, repeats with spread, CSV, plots and traces use `dmem-bench run copy`.
            """
    )

    enum Direction: String, ExpressibleByArgument, CaseIterable {
        case h2d, d2h, d2d
        var copyDirection: CopyDirection { CopyDirection(rawValue: rawValue) ?? .hostToDevice }
    }

    enum Backend: String, ExpressibleByArgument, CaseIterable {
        case iouring, memcpy, mapped
        var kind: CopyBackendKind {
            switch self {
            case .iouring: return .ioUring
            case .memcpy: return .memcpy
            case .mapped: return .mappedWorkers(threads: 2)
            }
        }
    }

    enum OnOff: String, ExpressibleByArgument, CaseIterable {
        case on, off
    }

    @Option(help: "h2d, d2h or d2d (default: all three).") var direction: Direction?
    @Option(parsing: .unconditional, help: "Bytes per page (descriptor). (default: 4K)", transform: ByteCount.argument) var pageSize = ByteCount(4096)
    @Option(parsing: .unconditional, help: "Pages per submitted batch (one fence each).", transform: NumberArgument.int) var batch = 512
    @Option(parsing: .unconditional, help: "Bytes copied per pass. (default: 256M)", transform: ByteCount.argument) var total = ByteCount(256 << 20)
    @Option(help: "iouring, memcpy, or mapped (2 worker threads memcpy through the VRAM mapping).") var backend = Backend.iouring
    @Option(help: "on or off (default: both).") var coalesce: OnOff?
    @Option(parsing: .unconditional, help: "Operations in flight per channel (io_uring SQ entries).", transform: NumberArgument.int) var queueDepth = 64
    @Option(parsing: .unconditional, help: "Channels, each submitting from its own thread.", transform: NumberArgument.int) var channels = 1
    @Option(parsing: .unconditional, help: "Batches in flight per channel before waiting on the oldest fence.", transform: NumberArgument.int) var inflight = 8
    @Option(name: [.customLong("repeats"), .customLong("repeat")], parsing: .unconditional, help: "Passes per run (the median is reported).", transform: NumberArgument.int) var repeats = 3
    @Option(parsing: .unconditional, help: "Host memory the frames are scattered over (default 4 × total).", transform: ByteCount.argument) var hostMemory: ByteCount?
    @Option(parsing: .unconditional, help: "memfds each VRAM pool is striped over (1: one memfd).", transform: NumberArgument.int) var vramFiles = VRAMPool.Layout.default.files
    @Option(help: "Register host memory as io_uring fixed buffers (pinned) and use the fixed-buffer opcodes: on or off.")
    var fixedBuffers = OnOff.off
    @Option(help: ArgumentHelp("Put VRAM in unnamed files in this directory instead of memfds, e.g. a tmpfs mounted with huge=always (README \"Performance\").", valueName: "dir"))
    var vramDir: String?
    @Option(help: ArgumentHelp("Model a host↔device link on top of the backend, one per channel (--channels 2 gets two links): \(LinkSpec.help).", valueName: "link"))
    var link = "none"
    @Flag(help: "Print exactly one JSON object on stdout instead of a table (no file name: redirect it, or use `dmem-bench run … --json FILE`).") var json = false

    func options() throws(ParameterValueError) -> CopyOptions {
        var o = CopyOptions()
        if let direction { o.directions = [direction.copyDirection] }
        if let coalesce { o.coalesce = [coalesce == .on] }
        o.pageSize = pageSize.bytes
        o.batchPages = batch
        o.totalBytes = total.bytes
        o.backend = backend.kind
        o.backendName = backend.rawValue
        o.queueDepth = queueDepth
        o.channels = channels
        o.inflightBatches = inflight
        o.repeats = repeats
        o.hostBytes = hostMemory?.bytes
        o.vramLayout.files = vramFiles
        o.vramLayout.directory = vramDir
        o.fixedBuffers = fixedBuffers == .on
        o.link = try LinkSpec(parsing: link)
        o.naming = .commandFlags
        return o
    }

    /// What `run` prints: exactly one JSON object `{"scenario":"copy","runs":[…]}` with `--json`, else a table.
    func output(_ records: [RunRecord]) -> String {
        var report = ScenarioReport(scenario: "copy")
        report.runs = records
        if json { return report.json }
        var columns = ["direction", "coalesce", "backend", "page_size", "batch_pages", "queue_depth", "channels", "bytes",
                       "gbps", "memcpy_gbps", "ratio", "descriptors_per_s", "sqes", "batch_p50_us", "batch_p99_us", "mallocs_per_page", "verified"]
        if link != "none" { columns.insert("link", at: 3) }
        return report.table(columns: columns)
    }

    func validate() throws {
        do {
            try CopyScenario.validate(try options())
        } catch let error as ParameterValueError {
            throw error.validationError
        } catch let error as ScenarioError {
            throw ValidationError(error.message)
        }
    }

    func run() throws {
        // A DMAError or ScenarioError of the run is printed as `Error: …` (exit status 1),
        // not as a usage error: the arguments passed `validate`.
        let records = try CopyScenario.run(try options())
        print(output(records))
        // Bytes that did not survive fail the command as every other one does (status 1, it
        // was 2 here alone), with the FAIL rows named on stderr.
        let failed = records.filter { $0["verified"] == .bool(false) }
        if !failed.isEmpty {
            let names = failed.map { "\($0["direction"]?.formatted() ?? "?") coalesce \($0["coalesce"] == .bool(true) ? "on" : "off")" }
            FileHandle.standardError.write(Data("dmem-bench: error: copy: verification failed (bytes moved do not match) in \(names.joined(separator: "; "))\n".utf8))
            throw ExitCode.failure
        }
    }
}
