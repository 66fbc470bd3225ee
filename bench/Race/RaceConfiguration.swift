import DeviceEmu
import HostMM

/// The driver configuration of every world of one race matrix: the `MigrationPolicy`
/// settings and the kind and size of VRAM a driver author chooses (`dmem-bench race
/// --api/--pipeline/--fault-around/--prefetch/--gpu-fault/--memory/--all-or-nothing/--vram/--ram`,
/// named like `migrate`'s and `thrash`'s flags). The default is nouveau's: three-step API,
/// one batch in flight, single-page CPU faults, GPU faults migrating their window,
/// device-private VRAM larger than the range, best-effort batches.
///
/// Threads: immutable value; any thread (`policy()` makes a new policy object per world).
struct RaceConfiguration: Sendable, Equatable {
    /// The kind of VRAM (`Device.Configuration.memoryType`).
    enum Memory: String, CaseIterable, Sendable {
        /// `MEMORY_DEVICE_PRIVATE`: the CPU cannot reach VRAM; a CPU access faults (nouveau).
        case `private`
        /// `MEMORY_DEVICE_COHERENT`: CPU-reachable VRAM; a CPU access reads it in place.
        case coherent
    }

    /// The driver every world runs (`--driver`).
    enum Driver: String, CaseIterable, Sendable {
        /// DeviceEmu's `Device`: the nouveau dmem driver and its SVM.
        case nouveau
        /// `MirrorDevice`: lib/test_hmm.c's dmirror, driven through one open (`Mirror`).
        case mirror
    }

    var driver = Driver.nouveau
    var api = MigrationPolicy.APIGeneration.threeStep
    /// Batches of a migration to VRAM in flight (`MigrationPolicy.pipelineDepth`).
    var pipeline = 1
    /// Pages a CPU fault brings back (1: nouveau's single page).
    var faultAround = 1
    var prefetch = MigrateOptions.Prefetch.off
    var gpuFault = ThrashOptions.GPUFault.migrate
    var memory = Memory.private
    /// `MigrationPolicy.rangeMigration = .allOrNothing` (Xe) instead of best effort.
    var allOrNothing = false
    /// VRAM pages (nil: 4 MiB, more than any range). Set, VRAM is cut into chunks of one
    /// batch (16 pages), so a range larger than VRAM evicts under pressure inside the flow.
    var vramPages: Int?

    /// System RAM frames left free when the flow starts (nil: plenty). Set, a ballast takes
    /// every other free frame after the flow's preparation and gives them back before the
    /// checks, so the flow and the action run out of RAM: migrations back to RAM move what
    /// fits and leave the rest in VRAM, intact; a CPU fault, a COW, a pin, suspend and
    /// teardown may fail with ENOMEM (`RaceExpectations`).
    var ramPages: Int?

    static let defaultVRAMPages = 1024
    static let vramRange = 16...1024
    static let ramRange = 0...4096

    /// True when `--ram` squeezes System RAM: out-of-memory errors are documented outcomes.
    var ramPressure: Bool { ramPages != nil }

    /// True when VRAM is smaller than a range of `pages`: migrations evict under pressure.
    func underPressure(pages: Int) -> Bool { (vramPages ?? Self.defaultVRAMPages) < pages }

    /// The driver policy of one world (a new prefetch or thrashing policy object per call:
    /// one world's state).
    func policy(batchPages: Int) throws -> MigrationPolicy {
        var t = ThrashOptions()
        t.gpuFault = gpuFault
        t.window = batchPages
        t.faultAround = faultAround
        t.prefetch = prefetch
        var p = try t.policy().0
        p.batchPages = batchPages
        p.apiGeneration = api
        p.pipelineDepth = pipeline
        p.rangeMigration = allOrNothing ? .allOrNothing : .bestEffort
        return p
    }

    /// The device configuration of one world around `policy`.
    func device(policy: MigrationPolicy, backend: MigrateOptions.Backend) -> Device.Configuration {
        var c = Device.Configuration(name: "race", vramSize: (vramPages ?? Self.defaultVRAMPages) * pageSize,
                                     memoryType: memory == .coherent ? .deviceCoherent : .devicePrivate,
                                     backend: backend.kind(workers: 2), policy: policy)
        if vramPages != nil { c.chunkSize = RaceWorld.batchPages * pageSize }
        return c
    }

    /// Why this configuration cannot run, or nil.
    var problem: String? {
        if driver == .mirror && !mirrorSettingsOnly {
            return "--driver mirror takes --memory only (dmirror has no policy: one page per CPU fault, "
                + "batches of 512, VRAM larger than any range)"
        }
        if !(1...8).contains(pipeline) { return "pipeline must be in 1...8 (got \(pipeline))" }
        if !(1...512).contains(faultAround) { return "fault-around must be in 1...512 (got \(faultAround))" }
        if let clash = MigrateOptions.prefetchProblem(faultAround: faultAround, prefetch: prefetch) { return clash }
        if api == .callbacks2017 && pipeline > 1 {
            return "pipeline applies to the three-step API only (the 2017 callbacks migrate one batch at a time): use --api 3step"
        }
        if let v = vramPages, !Self.vramRange.contains(v) || v % RaceWorld.batchPages != 0 {
            return "vram must be a multiple of \(RaceWorld.batchPages) pages in \(Self.vramRange) (got \(v))"
        }
        if let r = ramPages, !Self.ramRange.contains(r) { return "ram must be in \(Self.ramRange) pages (got \(r))" }
        return nil
    }

    /// True when nothing but the driver and the memory kind differs from the default:
    /// the settings the dmirror device has.
    private var mirrorSettingsOnly: Bool {
        var c = self
        c.driver = .nouveau
        c.memory = .private
        return c == RaceConfiguration()
    }

    /// The `dmem-bench race` flags that choose this configuration (none for the default).
    var arguments: [String] {
        let d = RaceConfiguration()
        var a: [String] = []
        if driver != d.driver { a += ["--driver", driver.rawValue] }
        if api != d.api { a += ["--api", api.name] }
        if pipeline != d.pipeline { a += ["--pipeline", "\(pipeline)"] }
        if faultAround != d.faultAround { a += ["--fault-around", "\(faultAround)"] }
        if prefetch != d.prefetch { a += ["--prefetch", prefetch.rawValue] }
        if gpuFault != d.gpuFault { a += ["--gpu-fault", gpuFault.rawValue] }
        if memory != d.memory { a += ["--memory", memory.rawValue] }
        if allOrNothing { a.append("--all-or-nothing") }
        if let vramPages { a += ["--vram", "\(vramPages)"] }
        if let ramPages { a += ["--ram", "\(ramPages)"] }
        return a
    }

    /// `key=value` pairs, in flag order: the text header and every JSON record show them.
    var fields: [(key: String, value: String)] {
        [("driver", driver.rawValue), ("api", api.name), ("pipeline", "\(pipeline)"), ("fault_around", "\(faultAround)"),
         ("prefetch", prefetch.rawValue), ("gpu_fault", gpuFault.rawValue), ("memory", memory.rawValue),
         ("range_migration", allOrNothing ? "all-or-nothing" : "best-effort"),
         ("vram_pages", "\(vramPages ?? Self.defaultVRAMPages)")]
            + (ramPages.map { [("ram_pages", "\($0)")] } ?? [])
    }
}
