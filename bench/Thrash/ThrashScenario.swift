import DeviceEmu

/// The `thrash` scenario: `dmem-bench run thrash --sweep gpu-fault=migrate,map,thrashing` compares
/// how GPU-fault and CPU-fault policies behave when the GPU and the CPU take turns on one
/// working set. The measuring lives in `ThrashRun`.
///
/// Threads: `run` uses the calling thread (and the device's copy-engine threads).
struct ThrashScenario: BenchScenario {
    let name = "thrash"
    let abstract = "GPU writes then CPU reads of one working set, round after round: the cost of each fault policy."
    let parameters: [ScenarioParameter] = [
        .init("pages", .size(64...(1 << 18)), default: "2048", help: "pages in the working set (a count; K suffix allowed)"),
        .init("rounds", .integer(1...100_000), default: "20", help: "rounds of GPU writes then CPU reads"),
        .init("gpu-fault", .choice(ThrashOptions.GPUFault.allCases.map(\.rawValue)), default: "migrate",
              help: "a GPU fault migrates its window to VRAM, maps the system pages, or migrates until the window ping-pongs (thrashing)"),
        .init("window", .integer(1...512), default: "16", help: "pages per GPU fault"),
        .init("fault-around", .integer(1...512), default: "1", help: "pages brought back per CPU fault"),
        .init("prefetch", .choice(MigrateOptions.Prefetch.allCases.map(\.rawValue)), default: "off",
              help: "sequential: CPU-fault windows double along sequential scans (readahead-style; not with fault-around)"),
        .init("residency-ms", .integer(0...10_000), default: "0", help: "minimum residency in VRAM (Xe's anti-thrash timeslice)"),
        .init("thrash-threshold", .integer(1...100), default: "3",
              help: "gpu-fault=thrashing: direction changes of a window that pin it in RAM"),
        .init("thrash-lapse-ms", .integer(1...600_000), default: "20",
              help: "gpu-fault=thrashing: longest gap between two moves of a window that still counts"),
        .init("thrash-pin-ms", .integer(0...3_600_000), default: "300",
              help: "gpu-fault=thrashing: how long a thrashing window stays in RAM"),
        .init("remote-link", .text, default: "none",
              help: "the bus GPU accesses to system memory cross: \(LinkSpec.help)"),
        .init("backend", .choice(MigrateOptions.Backend.allCases.map(\.rawValue)), default: "iouring", help: "copy engine backend"),
        .init("checked", .choice(["off", "on"]), default: "off", help: "checked mode (protocol sanitizer) on the run's memory"),
    ]
    let quickParameters = ["pages": "256", "rounds": "4"]
    let summaryFields = ["gpu_fault", "remote_link", "us_per_page", "gpu_faults", "cpu_faults", "pages_to_device", "residency_waits", "thrashing_pins"]
    let caseFields: [String] = []

    /// Rejects a point whose values do not fit together (`fault-around` with `prefetch=sequential`)
    /// before the first point of a sweep runs.
    func check(_ parameters: ScenarioParameters) throws(ParameterValueError) {
        if let problem = try options(parameters).problem { throw ParameterValueError(problem) }
    }

    /// The run's settings at one point (every key was validated by the framework).
    func options(_ parameters: ScenarioParameters) throws(ParameterValueError) -> ThrashOptions {
        var o = ThrashOptions()
        o.pages = try parameters.size("pages")
        o.rounds = try parameters.int("rounds")
        o.gpuFault = ThrashOptions.GPUFault(rawValue: try parameters.string("gpu-fault")) ?? .migrate
        o.window = try parameters.int("window")
        o.faultAround = try parameters.int("fault-around")
        o.prefetch = MigrateOptions.Prefetch(rawValue: try parameters.string("prefetch")) ?? .off
        o.residencyMilliseconds = try parameters.int("residency-ms")
        o.thrashThreshold = try parameters.int("thrash-threshold")
        o.thrashLapseMilliseconds = try parameters.int("thrash-lapse-ms")
        o.thrashPinMilliseconds = try parameters.int("thrash-pin-ms")
        o.backend = MigrateOptions.Backend(rawValue: try parameters.string("backend")) ?? .iouring
        o.remoteLink = try LinkSpec(parsing: try parameters.string("remote-link"))
        o.checked = try parameters.string("checked") == "on"
        return o
    }

    func run(_ parameters: ScenarioParameters, context: ScenarioContext) throws -> [RunRecord] {
        let o: ThrashOptions
        do { o = try options(parameters) } catch { throw ThrashRun.failure(error.message) }
        return [try ThrashRun.measure(o, trace: context.trace, progress: context.progress)]
    }
}
