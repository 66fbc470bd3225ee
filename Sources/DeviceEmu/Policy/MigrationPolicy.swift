/// The migration policies a driver author compares, each a setting (none hard-wired).
///
/// Read once at the start of each driver operation; change it with `Device.setPolicy`.
/// A value type: any thread.
public struct MigrationPolicy: Sendable, Equatable {
    /// How much a CPU fault on a device page brings back to RAM.
    public enum CPUFaultGranularity: Sendable, Equatable {
        /// Only the faulting page (nouveau, test_hmm).
        case page
        /// An aligned window of `pages` around the fault, clamped to the VMA: the
        /// improvement seed 001's FIXME asks for (sequential CPU scans fault once per window).
        case faultAround(pages: Int)
        /// The whole range the page was migrated with (Intel Xe's drm_pagemap migrates
        /// the whole device allocation back), clamped to the VMA.
        case wholeAllocation
        /// Ask `policy` per fault (`CPUFaultPolicy`): a heuristic of your own, or
        /// `SequentialPrefetchPolicy` (readahead-style growing windows for sequential
        /// scans). Two values are equal when they name the same object.
        case custom(any CPUFaultPolicy)

        public static func == (a: Self, b: Self) -> Bool {
            switch (a, b) {
            case (.page, .page), (.wholeAllocation, .wholeAllocation): return true
            case (.faultAround(let x), .faultAround(let y)): return x == y
            case (.custom(let x), .custom(let y)): return x === y
            default: return false
            }
        }
    }

    /// How a range migration treats pages that cannot move.
    public enum RangeMigration: Sendable, Equatable {
        /// Move what can move, leave the rest (nouveau, test_hmm).
        case bestEffort
        /// Per batch, move everything or nothing (Xe): a batch with a page that cannot be
        /// collected, allocated or copied is restored whole.
        case allOrNothing
    }

    /// How a GPU access to an address with no device mapping is resolved.
    public enum GPUFaultResolution: Sendable, Equatable {
        /// Migrate an aligned window of `pages` to VRAM (Xe's SVM); pages that cannot
        /// move are mapped from system memory instead.
        case migrateToVRAM(pages: Int)
        /// Map the system pages of an aligned window of `pages` through `hmmRangeFault`
        /// (nouveau's SVM, test_hmm's dmirror); the data stays where it is.
        case mapSystemMemory(pages: Int)
        /// Ask `policy` per fault (`GPUFaultPolicy`): a heuristic of your own, or
        /// `ThrashingMitigationPolicy` (nvidia-uvm's thrashing detection). Two values
        /// are equal when they name the same object.
        case custom(any GPUFaultPolicy)

        public static func == (a: Self, b: Self) -> Bool {
            switch (a, b) {
            case (.migrateToVRAM(let x), .migrateToVRAM(let y)), (.mapSystemMemory(let x), .mapSystemMemory(let y)): return x == y
            case (.custom(let x), .custom(let y)): return x === y
            default: return false
            }
        }

        /// The decision for `fault`: the fixed cases as they are, `.custom` by its policy.
        func decide(_ fault: GPUFaultInfo) -> GPUFaultDecision {
            switch self {
            case .migrateToVRAM(let n): return .migrateToVRAM(pages: n)
            case .mapSystemMemory(let n): return .mapSystemMemory(pages: n)
            case .custom(let policy): return policy.resolve(fault)
            }
        }

        /// The policy object of `.custom`, else nil.
        var customPolicy: (any GPUFaultPolicy)? {
            if case .custom(let policy) = self { return policy }
            return nil
        }
    }

    /// Which generation of the kernel API migrations to VRAM go through.
    public enum APIGeneration: Sendable, Equatable {
        /// `migrateVMASetup` / `migrateVMAPages` / `migrateVMAFinalize` (2019 onwards).
        case threeStep
        /// The 2017 `migrateVMA(ops:)` with `allocAndCopy` / `finalizeAndMap` (seed 000).
        case callbacks2017
    }

    /// Pages per `migrate_vma` batch (nouveau: 128 — `SG_MAX_SINGLE_ALLOC`, one scatterlist
    /// page — before its 2025 rework, 512 after). At most the copy channel's `maxBatch`.
    public var batchPages: Int = 512
    /// Batches of a range migration (three-step API only) or of `evictAll` in flight at
    /// once: 1 is nouveau's strict sequence; 2 sets up and commits the next batch while the
    /// previous batch's copies run, overlapping HostMM's work with the copy engine's.
    public var pipelineDepth: Int = 1
    /// What a CPU fault on a device page brings back (`.page`: nouveau's behaviour).
    public var cpuFaultGranularity: CPUFaultGranularity = .page
    /// Xe's anti-thrash "timeslice": a page migrated to VRAM is not moved out before it
    /// has been resident this long. A CPU fault waits for it (fault-around and `.custom`
    /// windows leave young neighbours in VRAM; a whole-allocation fault waits for the
    /// youngest page); eviction
    /// under VRAM pressure takes older pages first and waits, at most this long, when only
    /// young ones are left. Explicit `migrateRangeToRAM`, `evictAll`, suspend and
    /// teardown ignore it. Zero disables it. See `Dmem/MinimumResidency.swift`.
    public var minimumResidency: Duration = .zero
    /// Whether a batch of a range migration may move in part (`.bestEffort`: nouveau).
    public var rangeMigration: RangeMigration = .bestEffort
    /// How a GPU access to an address the device page table does not map is resolved.
    public var gpuFault: GPUFaultResolution = .migrateToVRAM(pages: 16)
    /// Which kernel API generation migrations by virtual address use: to VRAM, and back
    /// to RAM (CPU faults, `migrateRangeToRAM`) for device-private VRAM. Evictions take
    /// `migrateDevice*` in both.
    public var apiGeneration: APIGeneration = .threeStep
    /// Extra attempts for a hole clear (or a 2017-API copy) that failed after
    /// `migrateVMAPages` had already committed the page, before the CPU clears or copies
    /// it through the VRAM mapping as a last resort. Failed copies of pages that still
    /// have a source are never retried: the page just stays where it was.
    public var committedCopyRetries: Int = 2
    /// Faults moving at most this many pages are copied by the faulting thread through
    /// VRAM's CPU mapping (a synchronous memcpy channel, as a GPU driver takes a CPU/BAR
    /// copy path for tiny transfers) instead of a trip through the copy engine, whose
    /// submit and completion cost tens of µs (io_uring: ~46 µs for one page) while the
    /// faulting side waits: CPU faults bringing pages back, and GPU faults migrating their
    /// window to VRAM (`gpuFault: .migrateToVRAM`). Larger windows, `migrateToDevice` and
    /// evictions use the engine. 0 sends every fault through the engine. Only when
    /// `Device.Configuration.faultBackend` is nil and the device's backend is not
    /// already a CPU copy (an explicit fault backend takes every fault).
    public var cpuCopyFaultPages: Int = 16

    public init() {}

    /// True when every setting is usable with channels of `maxBatch` descriptors.
    func isValid(maxBatch: Int) -> Bool { problem(maxBatch: maxBatch) == nil }

    /// Why `Device.setPolicy` (or `Device.init`) would refuse this policy with
    /// `.invalidArgument` on an engine whose channels take `maxBatch` descriptors
    /// (`DMAEngine.Configuration.maxBatch`, 4096 by default), or nil when it is usable.
    public func problem(maxBatch: Int = 4096) -> String? {
        if batchPages < 1 || batchPages > maxBatch { return "batchPages \(batchPages) is outside 1...\(maxBatch) (the engine's maxBatch)" }
        if !(1...8).contains(pipelineDepth) { return "pipelineDepth \(pipelineDepth) is outside 1...8" }
        if committedCopyRetries < 0 { return "committedCopyRetries \(committedCopyRetries) is negative" }
        if minimumResidency < .zero { return "minimumResidency \(minimumResidency) is negative" }
        if cpuCopyFaultPages < 0 { return "cpuCopyFaultPages \(cpuCopyFaultPages) is negative" }
        if case .faultAround(let n) = cpuFaultGranularity, n < 1 { return "cpuFaultGranularity .faultAround(pages: \(n)) needs at least 1 page" }
        switch gpuFault {
        case .migrateToVRAM(let n) where n < 1: return "gpuFault .migrateToVRAM(pages: \(n)) needs at least 1 page"
        case .mapSystemMemory(let n) where n < 1: return "gpuFault .mapSystemMemory(pages: \(n)) needs at least 1 page"
        default: return nil
        }
    }
}
