import DMAEngine
import DeviceEmu

/// What one `thrash` run does: the working set, the rounds, and the policies compared.
struct ThrashOptions: Sendable {
    /// How a GPU fault is resolved (`MigrationPolicy.gpuFault`).
    enum GPUFault: String, CaseIterable, Sendable {
        /// Migrate the faulting window to VRAM (nouveau's SVM with migration).
        case migrate
        /// Map the system pages of the window (`hmm_range_fault`), leaving them in RAM.
        case map
        /// Migrate until a window ping-pongs, then map it for a while
        /// (`ThrashingMitigationPolicy`: nvidia-uvm's thrashing detection and pinning).
        case thrashing
    }

    /// Pages of the working set.
    var pages = 2048
    /// Rounds; each one is a GPU write of every page, then a CPU read of every page.
    var rounds = 20
    var gpuFault = GPUFault.migrate
    /// Pages per GPU fault: the migrated or mapped window.
    var window = 16
    /// Pages brought back per CPU fault (1 = nouveau's single page).
    var faultAround = 1
    var prefetch = MigrateOptions.Prefetch.off
    /// Minimum residency of a page in VRAM in ms (Xe's anti-thrash timeslice; 0: off).
    var residencyMilliseconds = 0
    /// `gpuFault = .thrashing`: direction changes that pin a window, the longest gap between
    /// two moves that still counts (ms), and how long a window stays pinned (ms).
    var thrashThreshold = 3
    var thrashLapseMilliseconds = 20
    var thrashPinMilliseconds = 300
    var backend = MigrateOptions.Backend.iouring
    /// The bus GPU accesses to system memory cross (`Device.Configuration.remoteAccessLink`).
    var remoteLink = LinkSpec.none
    var checked = false
    /// Faults the copy engine injects (tests only, no flag): a `.corrupt` descriptor is what
    /// the per-round check is there to catch.
    var injectedFaults: FaultPlan? = nil

    /// The device's engine backend: `backend`, under the fault injector when `injectedFaults` is set.
    var backendKind: CopyBackendKind {
        let kind = backend.kind(workers: 2)
        return injectedFaults.map { .faultInjecting($0, wrapping: kind) } ?? kind
    }

    /// The driver policy these options select; `thrashing` is the policy object of
    /// `gpuFault = .thrashing` (a new one per call: one run's state and statistics).
    func policy() throws -> (MigrationPolicy, thrashing: ThrashingMitigationPolicy?) {
        var p = MigrationPolicy()
        var thrashing: ThrashingMitigationPolicy?
        switch gpuFault {
        case .migrate: p.gpuFault = .migrateToVRAM(pages: window)
        case .map: p.gpuFault = .mapSystemMemory(pages: window)
        case .thrashing:
            var t = ThrashingMitigationPolicy.Parameters()
            t.windowPages = window
            t.threshold = thrashThreshold
            t.lapse = .milliseconds(thrashLapseMilliseconds)
            t.pin = .milliseconds(thrashPinMilliseconds)
            let policy = try ThrashingMitigationPolicy(t)
            p.gpuFault = .custom(policy)
            thrashing = policy
        }
        p.cpuFaultGranularity = try MigrateOptions.cpuFaultGranularity(faultAround: faultAround, prefetch: prefetch)
        p.minimumResidency = .milliseconds(residencyMilliseconds)
        return (p, thrashing)
    }

    /// Why these options cannot run, or nil.
    var problem: String? {
        if !(64...(1 << 18)).contains(pages) { return "pages must be in 64...262144 (got \(pages))" }
        if !(1...100_000).contains(rounds) { return "rounds must be in 1...100000 (got \(rounds))" }
        if !(1...512).contains(window) { return "window must be in 1...512 (got \(window))" }
        if !(1...512).contains(faultAround) { return "fault-around must be in 1...512 (got \(faultAround))" }
        if let clash = MigrateOptions.prefetchProblem(faultAround: faultAround, prefetch: prefetch) { return clash }
        if !(0...10_000).contains(residencyMilliseconds) { return "residency-ms must be in 0...10000 (got \(residencyMilliseconds))" }
        if !(1...100).contains(thrashThreshold) { return "thrash-threshold must be in 1...100 (got \(thrashThreshold))" }
        if !(1...600_000).contains(thrashLapseMilliseconds) { return "thrash-lapse-ms must be in 1...600000 (got \(thrashLapseMilliseconds))" }
        if !(0...3_600_000).contains(thrashPinMilliseconds) { return "thrash-pin-ms must be in 0...3600000 (got \(thrashPinMilliseconds))" }
        return nil
    }
}
