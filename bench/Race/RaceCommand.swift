import ArgumentParser
import DeviceEmu
import Foundation

/// `dmem-bench race`: the deterministic race matrix — every racing action pinned at every
/// step of every driver flow, one at a time, each judged by a shadow model.
struct RaceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "race",
        abstract: "Pin each racing operation at each step of each driver flow, one at a time; verify every page.",
        discussion: """
            For each flow, a dry run lists the steps (MigrationEvent kind and direction) the driver \
            reports. Then every (step, action) cell runs on a fresh world — checked-mode RAM, one device, \
            a process of --pages pages with a known pattern, migrated in batches of 16 — with a StepProbe \
            that, when the flow reaches the step, runs the action on another thread and holds the driver \
            there until the action returns or --hold runs out. The action aims at page --target (default 1: \
            the first batch), which is also the faulting page of the fault flows.
            A cell reads `held` when the action finished while the driver was held at the step, `after` \
            when it could only finish once the step went on (the held thread owned what it needed: the mmap \
            lock, a page lock, an operation in flight) — what each step blocks. It reads `FAIL` unless every \
            page holds what the flow and the action imply (pattern, marker, pattern + 1, zeros after \
            DONTNEED, SIGSEGV after munmap; a forked child keeps the pattern), the flow and the action \
            returned what they should (errors only where documented: a read of an unmapped page, a GPU \
            access whose view was unbound), the model's invariants hold, checked mode saw no broken rule, \
            and teardown returned every page. Exit status 1 if any cell fails; each failure is followed by \
            a `rerun:` line, the command that runs that one cell again (`rerun` in --json). Cells that met a \
            documented error are listed below the tables (`notes` in --json).
            --step narrows the rows to steps named as the table names them (fenceWaitBegin.toDevice; a kind \
            alone, such as setupEnd, selects it in every direction). --occurrence N holds at the Nth report of \
            each step instead of the first: with the default two batches, --occurrence 2 holds the second \
            batch's steps (aim --target at it, 16 and above, to race on its pages); rows are the steps the dry \
            run reported at least N times.

            Flows:
            \(Self.flows.map { HelpText.term($0.0, $0.1, column: 20) }.joined(separator: "\n"))
            Actions:
            \(RaceAction.allCases.map { HelpText.term($0.rawValue, $0.help, column: 21) }.joined(separator: "\n"))

            Driver configuration (default: nouveau's — 3step, pipeline 1, single-page CPU faults, GPU faults \
            migrating, private VRAM larger than the range, best effort): --api, --pipeline, --fault-around, \
            --prefetch, --gpu-fault, --memory, --all-or-nothing, --vram, --ram and --backend choose it for every world; \
            the header and each JSON record show it. Where a configuration changes the correct outcome the \
            shadow model follows: with --memory coherent the CPU reads VRAM in place, so cpu-fault has no step; \
            with --gpu-fault map the GPU fault maps system pages and moves nothing (and gpu-atomic takes the \
            page device-exclusive); with --vram below --pages, evict, migrate-to-ram and suspend move what was \
            resident, and the fault flows start from a full VRAM (see RaceFlow.prepare); with --ram N only N \
            RAM frames are free while the flow and the action run: evict and migrate-to-ram move at most N pages \
            and leave the rest in VRAM with their data, and an access, COW, pin, suspend or teardown that needs \
            a frame may fail with ENOMEM (out of memory), having changed nothing. The GPU stores of \
            gpu-write and gpu-atomic and a racing store, DONTNEED or munmap leave the target as one applied after \
            the other, in either order (RaceShadow); where the CPU and the GPU reach the same bytes in place \
            (--memory coherent, --gpu-fault map or thrashing, --driver mirror), a read racing a store may see \
            it half done, a word-wise mix of before and after (a note, not a failure), as hardware's would; \
            while suspend holds the device suspended, GPU accesses and \
            migrations to VRAM fail with `suspended`, as documented. \
            A pinned target must stay the page the process maps, holding what it reads (migration refuses \
            it; a pin takes a VRAM page back to RAM first; a long-term pin of coherent VRAM may fail with \
            EBUSY); after mremap the old addresses fault for the CPU and the GPU (with MREMAP_DONTUNMAP they \
            read zeros) and the checks read the new ones; cow-write stores in the parent, cow-write-child in \
            the child, and the other keeps its copy. \
            --hole makes the target page a hole (never written: the shadow model starts it as zeros).
            --driver mirror runs the mirror-* flows on lib/test_hmm.c's dmirror device instead (one open of \
            the process; --memory only): the GPU actions become its commands (gpu-read READ, gpu-write WRITE, \
            migrate-to-device MIGRATE_TO_DEV, migrate-to-ram MIGRATE_TO_SYS, evict-all RELEASE, unbind close of \
            the open, teardown the device's shutdown, exclusive EXCLUSIVE); gpu-atomic and suspend-resume do not \
            exist there. The mirror's pages are then read with READ, which reads an entry it kept without a fault.

            Examples:
            \(Self.examples.map { HelpText.term($0.0, $0.1, column: 40) }.joined(separator: "\n"))
            """
    )

    /// The flows as the help text describes them.
    static let flows = [
        ("to-device", "migrateToDevice of the range"),
        ("cpu-fault", "range in VRAM, then a CPU read of the target page (migrate_to_ram)"),
        ("evict", "range in VRAM, then evictAll (as suspend and teardown evict)"),
        ("gpu-fault", "view bound, GPU read of the target page (default policy: migrate to VRAM)"),
        ("gpu-atomic", "view bound, GPU fetch-add on the target page (migrates; with --gpu-fault map, make_device_exclusive)"),
        ("gpu-write", "view bound, GPU store of the marker page to the target page (a write fault)"),
        ("migrate-to-ram", "range in VRAM, then migrateRangeToRAM of it (dmirror's MIGRATE_TO_SYS, not a fault)"),
        ("suspend", "range in VRAM, then suspend + resume (the device gate closes, then all VRAM is evicted)"),
        ("mirror-to-device", "(--driver mirror) MIGRATE_TO_DEV of the range, then its read-back"),
        ("mirror-cpu-fault", "range migrated by the mirror, then a CPU read of the target (dmirror_devmem_fault)"),
        ("mirror-to-sys", "range migrated by the mirror, then MIGRATE_TO_SYS of it"),
        ("mirror-release", "range migrated by the mirror, then RELEASE (evicts the device)"),
        ("mirror-read", "READ of the target page through the mirror (dmirror_fault: hmm_range_fault)"),
        ("mirror-write", "WRITE of the marker page to the target page through the mirror (a write fault)"),
        ("mirror-exclusive", "EXCLUSIVE of the target page (make_device_exclusive), then its read-back"),
    ]

    /// The examples of the help text: command, what it does.
    static let examples = [
        ("dmem-bench race", "the whole matrix (tens of seconds)"),
        ("dmem-bench race --flow cpu-fault --action munmap,fork", ""),
        ("dmem-bench race --json > cells.json", "one record per cell"),
        ("dmem-bench race --flow to-device --step fenceWaitBegin --action cpu-write", ""),
        ("dmem-bench race --flow to-device --pipeline 2 --occurrence 2 --target 20",
         "the second batch, while the first is in flight"),
        ("dmem-bench race --api 2017 --fault-around 16", "the callback API, 16-page CPU faults"),
        ("dmem-bench race --memory coherent --gpu-fault map --vram 16", ""),
        ("dmem-bench race --ram 4 --vram 16", "System RAM and VRAM both short"),
        ("dmem-bench race --flow gpu-atomic --gpu-fault map", "atomics on system pages: held at make_device_exclusive"),
        ("dmem-bench race --driver mirror", "the test_hmm device's commands"),
    ]

    @Option(help: "Flows: all, or a comma-separated list of \(RaceFlow.allCases.map(\.rawValue).joined(separator: ", ")).")
    var flow = "all"
    @Option(help: "Racing actions: all, or a comma-separated list (see above).") var action = "all"
    @Option(help: "Steps to hold at: all, or a comma-separated list of names as the table rows show them (fenceWaitBegin.toDevice; a kind alone, e.g. setupEnd, in every direction).")
    var step = "all"
    @Option(parsing: .unconditional, help: "Hold at the Nth report of each step (\(RaceOptions.occurrenceRange.lowerBound)...\(RaceOptions.occurrenceRange.upperBound); 2: the second batch's steps).", transform: NumberArgument.int)
    var occurrence = 1
    @Option(parsing: .unconditional, help: "Milliseconds the driver is held at the step for the action (1...5000).", transform: NumberArgument.int) var hold = 20
    @Option(parsing: .unconditional, help: "Pages of the process (\(RaceOptions.pageRange.lowerBound)...\(RaceOptions.pageRange.upperBound)).", transform: NumberArgument.int)
    var pages = 32
    @Option(parsing: .unconditional, help: "The page the actions aim at, and the fault flows fault on (default 1: the first batch; 16 and above: a later batch).", transform: NumberArgument.int)
    var target = 1
    @Flag(help: "The target page is never written: a hole, which migrations populate with a cleared page (it reads zeros).")
    var hole = false
    @Option(help: "Copy backend: iouring, memcpy or mapped (2 worker threads through the VRAM mapping).")
    var backend = "iouring"
    @Option(help: "Driver: nouveau (Device, the dmem driver) or mirror (MirrorDevice, test_hmm's dmirror: the mirror-* flows).")
    var driver = "nouveau"
    @Option(help: "Driver API of migrations by address (to VRAM, and CPU faults back to RAM): 3step (migrate_vma_setup/pages/finalize) or 2017 (migrate_vma callbacks).")
    var api = "3step"
    @Option(parsing: .unconditional, help: "Batches in flight while migrating to VRAM (1...8; 1 = nouveau's strict sequence; 3step only).", transform: NumberArgument.int) var pipeline = 1
    @Option(parsing: .unconditional, help: "Pages brought back per CPU fault (1...512; 1 = nouveau's single page).", transform: NumberArgument.int) var faultAround = 1
    @Option(help: "off, or sequential: CPU-fault windows grow along sequential scans (not with --fault-around).") var prefetch = "off"
    @Option(help: "How a GPU fault is resolved: migrate (its 16-page window to VRAM), map (the system pages, hmm_range_fault) or thrashing (migrate until the window ping-pongs, then map).")
    var gpuFault = "migrate"
    @Option(help: "VRAM kind: private (MEMORY_DEVICE_PRIVATE, the CPU faults on it) or coherent (MEMORY_DEVICE_COHERENT, the CPU reads it in place).")
    var memory = "private"
    @Flag(help: "Migrate each batch whole or not at all (Xe) instead of best effort.") var allOrNothing = false
    @Option(parsing: .unconditional, help: "VRAM pages, a multiple of 16 in 16...1024 (default 1024); below --pages, migrations evict under VRAM pressure inside the flow.", transform: NumberArgument.int)
    var vram: Int?
    @Option(parsing: .unconditional, help: "System RAM frames left free when the flow starts (\(RaceConfiguration.ramRange)); the rest is held until the checks, so migrations to RAM, CPU faults, COW, pins, suspend and teardown run out of RAM (default: plenty).", transform: NumberArgument.int)
    var ram: Int?
    @Flag(help: "Print exactly one JSON object on stdout (one record per cell) instead of the tables.") var json = false

    func options() throws -> RaceOptions {
        var o = RaceOptions()
        o.flows = try RaceOptions.list(flow, of: RaceFlow.self, what: "flow")
        o.actions = try RaceOptions.list(action, of: RaceAction.self, what: "action")
        o.steps = try RaceStepFilter.parse(step)
        o.occurrence = occurrence
        o.hold = .milliseconds((1...5000).contains(hold) ? hold : 0)
        o.pages = pages
        o.target = target
        o.targetHole = hole
        guard let b = MigrateOptions.Backend(rawValue: backend) else {
            throw RaceOptionError("backend must be one of: \(MigrateOptions.Backend.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        o.copyBackend = b
        o.configuration = try configuration()
        return o
    }

    /// The driver configuration the flags name (ranges are checked by `RaceOptions.problem`).
    func configuration() throws(RaceOptionError) -> RaceConfiguration {
        var c = RaceConfiguration()
        guard let d = RaceConfiguration.Driver(rawValue: driver) else { throw RaceOptionError("driver must be nouveau or mirror") }
        c.driver = d
        guard let a = MigrationPolicy.APIGeneration(name: api) else { throw RaceOptionError("api must be 3step or 2017") }
        guard let p = MigrateOptions.Prefetch(rawValue: prefetch) else { throw RaceOptionError("prefetch must be off or sequential") }
        guard let g = ThrashOptions.GPUFault(rawValue: gpuFault) else {
            throw RaceOptionError("gpu-fault must be one of: \(ThrashOptions.GPUFault.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let m = RaceConfiguration.Memory(rawValue: memory) else {
            throw RaceOptionError("memory must be one of: \(RaceConfiguration.Memory.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        c.api = a
        c.pipeline = pipeline
        c.faultAround = faultAround
        c.prefetch = p
        c.gpuFault = g
        c.memory = m
        c.allOrNothing = allOrNothing
        c.vramPages = vram
        c.ramPages = ram
        return c
    }

    func validate() throws {
        do {
            if let problem = try options().problem {
                throw ValidationError(FlagWording.reword(problem, keys: ["hold", "pages", "target", "occurrence", "pipeline",
                                                                         "fault-around", "vram", "ram"]))
            }
        } catch let e as RaceOptionError {
            throw ValidationError(e.description)
        }
    }

    func run() throws {
        let m = try RaceMatrix.run(try options()) { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
        if json {
            var report = ScenarioReport(scenario: "race")
            report.runs = m.records
            print(report.json)
        } else {
            print(m.text, terminator: "")
        }
        if !m.passed { throw ExitCode.failure }
    }
}
