import DMAEngine

/// The `copy` scenario of `dmem-bench run` and the suite: `CopyScenario` with its
/// settings as sweepable parameters. One point measures the chosen direction (or all
/// three: `direction=all`, one record each) at one coalescing setting.
///
/// Threads: immutable; `run` is called from the runner's thread (see `BenchScenario`).
struct CopyBenchScenario: BenchScenario {
    let name = "copy"
    let abstract = "Scattered page batches through the DMA engine vs a same-run memcpy of the same pattern."
    let parameters: [ScenarioParameter] = [
        .init("direction", .choice(["all", "h2d", "d2h", "d2d"]), default: "all", help: "copy direction (all: one record each)"),
        .init("page-size", .size(64...(1 << 30)), default: "4K", help: "bytes per descriptor (page)"),
        .init("batch", .integer(1...(1 << 20)), default: "512", help: "pages per submitted batch (one fence each)"),
        .init("total", .size(4096...(1 << 36)), default: "128M", help: "bytes copied per pass (a multiple of page-size)"),
        .init("span", .size(4096...(1 << 40)), default: "512M", help: "host memory the frames are scattered over (≥ total)"),
        .init("coalesce", .flag, default: "on", help: "merge runs contiguous in VRAM into vectored operations"),
        .init("backend", .choice(["iouring", "memcpy", "mapped"]), default: "iouring", help: "copy backend"),
        .init("queue-depth", .integer(1...4096), default: "64", help: "operations in flight per channel (SQ entries)"),
        .init("channels", .integer(1...64), default: "1", help: "channels, each submitting from its own thread"),
        .init("inflight", .integer(1...4096), default: "8", help: "batches in flight per channel before waiting"),
        .init("vram-files", .integer(1...VRAMPool.Layout.maxFiles), default: "16", help: "memfds each VRAM pool is striped over"),
        .init("fixed-buffers", .flag, default: "off", help: "register host memory as io_uring fixed buffers"),
        .init("vram-dir", .text, default: "memfd", help: "memfd, or a directory for VRAM's files (a huge=always tmpfs)"),
        .init("link", .text, default: "none", help: "modelled link, one per channel: \(LinkSpec.help)"),
        .init("passes", .integer(1...100), default: "3", help: "engine passes per point (median); --repeat repeats points"),
        .init("seed", .integer(0...Int.max), default: "53530", help: "seed of the page scatter"),
    ]
    let quickParameters = ["total": "8M", "span": "32M"]
    let summaryFields = ["sqes"]

    func run(_ parameters: ScenarioParameters, context: ScenarioContext) throws -> [RunRecord] {
        try CopyScenario.run(options(parameters), context: context)
    }

    func check(_ parameters: ScenarioParameters) throws(ParameterValueError) {
        do {
            try CopyScenario.validate(options(parameters))
        } catch let error as ParameterValueError {
            throw error
        } catch let error as ScenarioError {
            throw ParameterValueError(error.message)
        } catch {
            throw ParameterValueError("\(error)")
        }
    }

    /// The options of one point (every key was validated by the framework, except `link`).
    func options(_ p: ScenarioParameters) throws -> CopyOptions {
        var o = CopyOptions()
        let direction = try p.string("direction")
        if direction != "all" {
            guard let d = CopyDirection(rawValue: direction) else { throw CopyScenario.error("unknown direction \(direction)") }
            o.directions = [d]
        }
        o.coalesce = [try p.flag("coalesce")]
        o.pageSize = try p.size("page-size")
        o.batchPages = try p.int("batch")
        o.totalBytes = try p.size("total")
        let span = try p.size("span")
        // An explicit span below total is refused (by `CopyScenario.validate`, as `span`);
        // a default or --quick one is raised to the total.
        o.hostBytes = p.explicitKeys.contains("span") ? span : max(span, o.totalBytes)
        o.backendName = try p.string("backend")
        guard let backend = CopyCommand.Backend(rawValue: o.backendName) else {
            throw CopyScenario.error("unknown backend \(o.backendName)")
        }
        o.backend = backend.kind
        o.queueDepth = try p.int("queue-depth")
        o.channels = try p.int("channels")
        o.inflightBatches = try p.int("inflight")
        o.vramLayout.files = try p.int("vram-files")
        o.fixedBuffers = try p.flag("fixed-buffers")
        let dir = try p.string("vram-dir")
        o.vramLayout.directory = dir == "memfd" ? nil : dir
        do { o.link = try LinkSpec(parsing: try p.string("link")) } catch { throw CopyScenario.error(error.message) }
        o.repeats = try p.int("passes")
        o.seed = UInt64(try p.int("seed"))
        return o
    }
}
