import DMAEngine
import DeviceEmu

/// The settings of one torture run (`dmem-bench torture` flags, or the `torture`
/// scenario's parameters).
///
/// Threads: immutable value; any thread.
struct TortureOptions: Sendable {
    /// Wall-clock length of the random phase; the final check and teardown come after.
    var seconds: Double = 30
    /// Worker threads, each a process (address space) of its own.
    var threads = 4
    /// Seeds the workers' operation sequences and the copy engine's fault injection.
    var seed: UInt64 = 1
    /// Probability, per copy descriptor, that the engine disturbs it; split evenly
    /// between a failure (EIO), a short copy and a delay.
    var injectRate = 0.01
    /// Pages each worker owns (in `regionsPerThread` mappings).
    var pagesPerThread = 1024
    var regionsPerThread = 4
    /// VRAM: smaller than every worker's pages together, so migrations meet exhaustion
    /// and evict each other's pages.
    var vramBytes = 4 << 20
    /// How long an injected delay holds a descriptor.
    var delay: Duration = .microseconds(500)
    /// The driver's minimum residency (Xe's anti-thrash timeslice): CPU faults and eviction
    /// under pressure wait for young pages. Zero (the default) turns it off.
    var minimumResidency: Duration = .zero
    /// A directory for VRAM's files instead of memfds (nil: memfds).
    var vramDirectory: String?
    /// Register the emulated RAM as io_uring fixed buffers (the fixed-buffer opcodes under injected faults).
    var fixedBuffers = false
    /// How faults copy: the device's default (`cpu`: windows of up to `cpuCopyFaultPages`
    /// on the faulting thread, through the same fault injector) or every one through the
    /// engine (`engine`, as nouveau; `Device.Configuration.faultBackend`).
    var faultCopy = FaultCopy.cpu
    /// The copy engine's backend under the fault injector (`mapped`: two worker threads,
    /// and waiters that copy; `memcpy`: copies inside submit).
    var copyBackend = MigrateOptions.Backend.iouring
    /// Probability per copy descriptor of silent corruption (`FaultPlan.Action.corrupt`),
    /// checked before `injectRate`'s faults (tests only, no flag: a corrupted byte is a
    /// mismatch, so any rate above 0 makes a run fail — which is what it tests).
    var corruptRate = 0.0

    enum FaultCopy: String, CaseIterable, Sendable {
        case cpu, engine
    }

    /// Why these options cannot run, or nil.
    var problem: String? {
        if !(seconds > 0 && seconds <= 86_400) { return "seconds must be in (0, 86400]" }
        if !(1...64).contains(threads) { return "threads must be in 1...64 (got \(threads))" }
        if !(0...1).contains(injectRate) { return "inject-rate must be in 0...1 (got \(injectRate))" }
        if !(0...1).contains(corruptRate) { return "corrupt-rate must be in 0...1 (got \(corruptRate))" }
        if !(1...16).contains(regionsPerThread) { return "regions per thread must be in 1...16" }
        if pagesPerThread < regionsPerThread * 16 || pagesPerThread > 1 << 18 {
            return "pages-per-thread must be in \(regionsPerThread * 16)...\(1 << 18) (got \(pagesPerThread))"
        }
        if vramBytes < 2 << 20 || vramBytes % (2 << 20) != 0 { return "vram must be a positive multiple of 2M (got \(ByteCount(vramBytes)))" }
        if minimumResidency < .zero || minimumResidency > .seconds(1) { return "residency must be in 0...1000 ms" }
        if fixedBuffers && copyBackend != .iouring { return "fixed buffers are io_uring's: use them with the iouring backend" }
        return VRAMDirectory.problem(vramDirectory)
    }

    /// The faults the copy engine injects (seeded: the same descriptor sequence gets the same faults).
    var faultPlan: FaultPlan {
        let each = injectRate / 3
        return FaultPlan(seed: seed, rules: (corruptRate > 0 ? [.init(.rate(corruptRate), .corrupt)] : []) + [
            .init(.rate(each), .fail(.ioError)),
            .init(.rate(each), .shortCopy(bytes: 1000)),
            .init(.rate(each), .delay(delay)),
        ])
    }

    /// `copyBackend`, wrapped by the fault injector when anything is injected.
    var backend: CopyBackendKind {
        let kind = copyBackend.kind(workers: 2)
        return injectRate > 0 || corruptRate > 0 ? .faultInjecting(faultPlan, wrapping: kind) : kind
    }

    var pagesPerRegion: Int { pagesPerThread / regionsPerThread }
}
