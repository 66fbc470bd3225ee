import DMAEngine
import DeviceEmu

/// The settings of one `migrate` run (`dmem-bench migrate` flags or scenario parameters).
///
/// Threads: immutable value; any thread.
struct MigrateOptions: Sendable {
    /// The copy backends a run can use, by their command-line names.
    enum Backend: String, CaseIterable, Sendable {
        case iouring, memcpy, mapped
        /// The engine backend; `workers` threads for `mapped`.
        func kind(workers: Int) -> CopyBackendKind {
            switch self {
            case .iouring: return .ioUring
            case .memcpy: return .memcpy
            case .mapped: return .mappedWorkers(threads: workers)
            }
        }
    }

    /// Bytes migrated to VRAM and read back (and, again, evicted by teardown).
    var totalBytes = 256 << 20
    /// Pages per migrate_vma batch.
    var batchPages = 512
    /// How much a CPU fault brings back beyond `faultAround`'s fixed window.
    enum Prefetch: String, CaseIterable, Sendable {
        /// `faultAround` pages (1: nouveau's single page).
        case off
        /// Readahead-style windows growing along sequential scans (`SequentialPrefetchPolicy`).
        case sequential
    }

    /// Pages brought back per CPU fault (1: nouveau's single page).
    var faultAround = 1
    var prefetch = Prefetch.off
    var backend = Backend.iouring
    /// Backend of the CPU-fault channels (nil: the same as `backend`).
    var faultBackend: Backend? = nil
    /// With `faultBackend` nil: small faults copy on the CPU (`auto`, the driver's default,
    /// `MigrationPolicy.cpuCopyFaultPages`), or every fault goes through `backend` (`same`).
    var faultCPUCopy = true
    /// `auto`, `same` or a backend name, as on the command line.
    var faultBackendName: String { faultBackend?.rawValue ?? (faultCPUCopy ? "auto" : "same") }
    /// Batches in flight during the migration to VRAM (1: nouveau's strict sequence).
    var pipeline = 1
    /// Worker threads of the `mapped` backend.
    var workers = 2
    var api = MigrationPolicy.APIGeneration.threeStep
    var seed: UInt64 = 1
    /// Checked mode (the protocol sanitizer) on the run's memory: what it costs, and that
    /// the driver breaks no rule (`protocol_violations`).
    var checked = false
    /// A directory for VRAM's files instead of memfds (nil: memfds).
    var vramDirectory: String?
    /// Register System RAM as io_uring fixed buffers.
    var fixedBuffers = false
    /// Faults the copy engine injects on every channel of the run (tests only, no flag): a
    /// `.corrupt` descriptor is what the run's byte checks are there to catch.
    var injectedFaults: FaultPlan? = nil

    /// The engine backend of `backend` (or of a fault path's `Backend`), under the fault
    /// injector when `injectedFaults` is set.
    func kind(_ backend: Backend) -> CopyBackendKind {
        let kind = backend.kind(workers: workers)
        return injectedFaults.map { .faultInjecting($0, wrapping: kind) } ?? kind
    }

    var pages: Int { totalBytes / 4096 }

    /// The driver policy these options describe (a new prefetch policy object per call).
    func policy() throws(DeviceError) -> MigrationPolicy {
        var p = MigrationPolicy()
        p.batchPages = batchPages
        p.cpuFaultGranularity = try Self.cpuFaultGranularity(faultAround: faultAround, prefetch: prefetch)
        p.apiGeneration = api
        p.pipelineDepth = pipeline
        if !faultCPUCopy { p.cpuCopyFaultPages = 0 }
        return p
    }

    /// Why these options cannot run, or nil.
    var problem: String? {
        if totalBytes < 4096 * 16 || totalBytes % (2 << 20) != 0 {
            return "total \(ByteCount(totalBytes)) must be a positive multiple of 2M"
        }
        if !(1...4096).contains(batchPages) { return "batch must be in 1...4096 (got \(batchPages))" }
        if !(1...512).contains(faultAround) { return "fault-around must be in 1...512 (got \(faultAround))" }
        if let clash = Self.prefetchProblem(faultAround: faultAround, prefetch: prefetch) { return clash }
        if !(1...8).contains(pipeline) { return "pipeline must be in 1...8 (got \(pipeline))" }
        if !(1...8).contains(workers) { return "workers must be in 1...8 (got \(workers))" }
        if fixedBuffers && backend != .iouring && (faultBackend ?? backend) != .iouring {
            return "fixed buffers are io_uring's: use them with the iouring backend or fault-backend"
        }
        return VRAMDirectory.problem(vramDirectory)
    }
}

extension MigrateOptions {
    /// What a CPU fault brings back, for `migrate` and `thrash` alike.
    static func cpuFaultGranularity(faultAround: Int, prefetch: Prefetch) throws(DeviceError) -> MigrationPolicy.CPUFaultGranularity {
        switch prefetch {
        case .sequential: return .custom(try SequentialPrefetchPolicy())
        case .off: return faultAround > 1 ? .faultAround(pages: faultAround) : .page
        }
    }

    /// The two ways of sizing CPU faults exclude each other.
    static func prefetchProblem(faultAround: Int, prefetch: Prefetch) -> String? {
        prefetch == .sequential && faultAround > 1
            ? "fault-around and prefetch=sequential both size CPU faults: use one of them" : nil
    }
}

extension MigrationPolicy.APIGeneration {
    /// `3step` or `2017`, as on the command line.
    init?(name: String) {
        switch name {
        case "3step": self = .threeStep
        case "2017": self = .callbacks2017
        default: return nil
        }
    }

    var name: String { self == .threeStep ? "3step" : "2017" }
}

extension MigrateOptions {
    /// Sets the fault path from `auto`, `same`, `iouring`, `memcpy` or `mapped`; false for another name.
    mutating func setFaultBackend(_ name: String) -> Bool {
        switch name {
        case "auto": faultBackend = nil; faultCPUCopy = true
        case "same": faultBackend = nil; faultCPUCopy = false
        default:
            guard let b = Backend(rawValue: name) else { return false }
            faultBackend = b
        }
        return true
    }

    static let faultBackendNames = ["auto", "same"] + Backend.allCases.map(\.rawValue)
}

