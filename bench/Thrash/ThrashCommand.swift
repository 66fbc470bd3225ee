import ArgumentParser

/// `dmem-bench thrash`: the GPU and the CPU take turns on one working set, as a table or one JSON object.
struct ThrashCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "thrash",
        abstract: "GPU writes then CPU reads of one working set, round after round: the cost of each fault policy.",
        discussion: """
            Each round the GPU writes every page (each GPU fault migrates or maps a --window of \
            pages) and the CPU reads every page back (faulting VRAM pages to RAM, --fault-around \
            at a time); every byte is verified. Counts are totals over all rounds; round_us and \
            us_per_page (round_us / pages) are the median round, gpu_phase_us and cpu_phase_us the \
            median of each phase on its own (so they need not add up to round_us); gbps is the bytes \
            both sides touched per round (2 × pages × 4 KiB) over the median round. With \
            --gpu-fault thrashing, thrashing_pins counts the windows found ping-ponging and pinned in \
            RAM, pinned_faults the GPU faults that mapped them. Compare policies with `dmem-bench run \
            thrash --sweep gpu-fault=migrate,map,thrashing`.
            """
    )

    @Option(parsing: .unconditional, help: "Pages in the working set (a count; K suffix allowed). (default: 2K)", transform: ByteCount.argument) var pages = ByteCount(2048)
    @Option(parsing: .unconditional, help: "Rounds of GPU writes then CPU reads.", transform: NumberArgument.int) var rounds = 20
    @Option(help: "migrate (a GPU fault moves its window to VRAM), map (it maps the system pages) or thrashing (migrate until a window ping-pongs between VRAM and RAM, then map it: nvidia-uvm's thrashing mitigation).") var gpuFault = "migrate"
    @Option(parsing: .unconditional, help: "Pages per GPU fault.", transform: NumberArgument.int) var window = 16
    @Option(parsing: .unconditional, help: "Pages brought back per CPU fault (1 = nouveau's single page).", transform: NumberArgument.int) var faultAround = 1
    @Option(help: "off, or sequential: CPU-fault windows double along sequential scans (readahead-style; not with --fault-around).") var prefetch = "off"
    @Option(parsing: .unconditional, help: "Minimum residency of a page in VRAM in ms (Xe's anti-thrash timeslice; 0: off).", transform: NumberArgument.int) var residency = 0
    @Option(parsing: .unconditional, help: "--gpu-fault thrashing: direction changes (VRAM ↔ RAM) that pin a window in RAM (default 3).", transform: NumberArgument.int) var thrashThreshold: Int?
    @Option(parsing: .unconditional, help: "--gpu-fault thrashing: longest gap in ms between two moves of a window that still counts (default 20).", transform: NumberArgument.int) var thrashLapse: Int?
    @Option(parsing: .unconditional, help: "--gpu-fault thrashing: ms a thrashing window stays in RAM; 0 never pins (default 300).", transform: NumberArgument.int) var thrashPin: Int?
    @Option(help: ArgumentHelp("The bus GPU accesses to system memory cross (they cost what VRAM accesses cost without one): \(LinkSpec.help).", valueName: "link"))
    var remoteLink = "none"
    @Option(help: "iouring, memcpy or mapped.") var backend = "iouring"
    @Flag(help: "Run in checked mode (protocol sanitizer).") var checked = false
    @Flag(help: "Print exactly one JSON object on stdout instead of a table (no file name: redirect it, or use `dmem-bench run … --json FILE`).") var json = false

    var options: ThrashOptions {
        get throws {
            var o = ThrashOptions()
            o.pages = pages.bytes
            o.rounds = rounds
            guard let fault = ThrashOptions.GPUFault(rawValue: gpuFault) else { throw ValidationError("--gpu-fault must be migrate, map or thrashing") }
            o.gpuFault = fault
            o.window = window
            o.faultAround = faultAround
            guard let p = MigrateOptions.Prefetch(rawValue: prefetch) else { throw ValidationError("--prefetch must be off or sequential") }
            o.prefetch = p
            o.residencyMilliseconds = residency
            if o.gpuFault != .thrashing, thrashThreshold != nil || thrashLapse != nil || thrashPin != nil {
                throw ValidationError("--thrash-threshold, --thrash-lapse and --thrash-pin tune --gpu-fault thrashing only")
            }
            if let thrashThreshold { o.thrashThreshold = thrashThreshold }
            if let thrashLapse { o.thrashLapseMilliseconds = thrashLapse }
            if let thrashPin { o.thrashPinMilliseconds = thrashPin }
            guard let kind = MigrateOptions.Backend(rawValue: backend) else { throw ValidationError("--backend must be iouring, memcpy or mapped") }
            o.backend = kind
            o.checked = checked
            do { o.remoteLink = try LinkSpec(parsing: remoteLink) } catch { throw ValidationError(error.message) }
            // The options' own checks name the `run thrash` keys; these flags are named differently.
            if !(0...10_000).contains(residency) { throw ValidationError("--residency must be in 0...10000 ms (got \(residency))") }
            if let thrashLapse, !(1...600_000).contains(thrashLapse) {
                throw ValidationError("--thrash-lapse must be in 1...600000 ms (got \(thrashLapse))")
            }
            if let thrashPin, !(0...3_600_000).contains(thrashPin) {
                throw ValidationError("--thrash-pin must be in 0...3600000 ms (got \(thrashPin))")
            }
            if let problem = o.problem {
                throw ValidationError(FlagWording.reword(problem, keys: ["pages", "rounds", "window", "fault-around", "thrash-threshold"]))
            }
            return o
        }
    }

    func validate() throws { _ = try options }

    func run() throws {
        let o = try options
        try ScenarioReport.printSingleRun("thrash", json: json, columns: [
            "pages", "rounds", "gpu_fault", "window", "fault_around", "prefetch", "residency_ms", "backend", "us_per_page",
            "gpu_phase_us", "cpu_phase_us", "gpu_faults", "cpu_faults", "pages_to_device", "pages_to_ram", "residency_waits",
        ] + (o.gpuFault == .thrashing ? ["thrashing_pins", "pinned_faults"] : [])
          + (o.remoteLink.model != nil ? ["remote_link"] : []) + ["verified"]) { try ThrashRun.measure(o, trace: nil, progress: { _ in }) }
    }
}
