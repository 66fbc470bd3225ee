import Synchronization

/// Event counts of one device since it was created (the driver's debugfs counters).
///
/// Threads: any; relaxed atomics, read one at a time (a snapshot is not atomic as a whole).
public final class DeviceCounters: @unchecked Sendable {
    /// What is counted.
    public enum Kind: Int, CaseIterable, Sendable {
        /// Pages migrated to VRAM (holes populated included), as `MigrationResult.migrated`
        /// counts them: an `MADV_DONTNEED` racing the batch may have freed some at finalize.
        case pagesToDevice
        /// Holes (or zero-page entries) populated with a cleared device page.
        case holesPopulated
        /// Migration batches to VRAM that collected at least one page.
        case batchesToDevice
        /// Pages brought back to RAM by CPU faults or `migrateRangeToRAM`.
        case pagesToRAM
        /// Calls of the pgmap's `migrateToRAM` (CPU faults on device-private entries).
        case cpuFaults
        /// CPU faults that waited for the minimum residency to pass.
        case residencyWaits
        /// Pages of a CPU fault's fault-around or whole-allocation window left in VRAM
        /// because they were younger than the minimum residency (the faulting page never is).
        case youngNeighboursSkipped
        /// Waits of pressure eviction for a young page to reach the minimum residency,
        /// because too few pages had been resident that long.
        case evictionResidencyWaits
        /// Pages evicted to RAM by PFN (teardown, suspend, pressure).
        case pagesEvicted
        /// Evictions started because VRAM was exhausted.
        case pressureEvictions
        /// Pages a migration to VRAM collected but found no VRAM page for, even after
        /// pressure eviction (`MigrationResult.withoutVRAM`): they stayed in RAM.
        case pagesWithoutVRAM
        /// Descriptors the copy engine reported failed.
        case copyFailures
        /// Pages left where they were because their copy failed.
        case pagesLeftAfterCopyFailure
        /// Committed pages (holes, 2017-API copies) whose failed copy was issued again.
        case copyRetries
        /// Committed pages the CPU cleared or copied through the VRAM mapping after every retry failed.
        case cpuCopyFallbacks
        /// Batches restored whole by the all-or-nothing policy.
        case batchesRefused
        /// GPU accesses that found no usable device mapping.
        case gpuFaults
        /// Device page-table entries written by GPU-fault resolution and migrations.
        case deviceMappings
        /// MMU-notifier callbacks that zapped device mappings.
        case invalidations
        /// MMU-notifier callbacks skipped because they were this device's own migration.
        case ownInvalidationsSkipped
        /// Device pages freed back to the free list (`pageFree`).
        case pagesFreed
        /// GPU accesses to system memory through a mapped entry reported to the GPU-fault
        /// policy (only when it `countsRemoteAccesses`).
        case remoteAccesses
        /// Migrations a GPU-fault policy asked for in answer to a remote access.
        case remoteAccessMigrations
        /// Bytes GPU accesses carried over `Configuration.remoteAccessLink`.
        case remoteLinkBytes
        /// Times a GPU access slept because it ran more than 200 µs ahead of that link.
        case remoteLinkWaits
    }

    private let counts: UnsafeMutablePointer<Atomic<Int>>

    init() {
        counts = .allocate(capacity: Kind.allCases.count)
        for i in 0..<Kind.allCases.count { (counts + i).initialize(to: Atomic(0)) }
    }

    deinit { counts.deallocate() }

    @inline(__always)
    func add(_ kind: Kind, _ n: Int = 1) {
        if n != 0 { counts[kind.rawValue].wrappingAdd(n, ordering: .relaxed) }
    }

    /// The count of `kind`.
    public subscript(kind: Kind) -> Int { counts[kind.rawValue].load(ordering: .relaxed) }

    /// Every count, for reports.
    public var snapshot: [Kind: Int] {
        Dictionary(uniqueKeysWithValues: Kind.allCases.map { ($0, self[$0]) })
    }
}

extension DeviceCounters: CustomStringConvertible {
    /// The non-zero counts in declaration order, `name value` each (a debugfs stats file,
    /// for `print(gpu.counters)`); `"none"` when nothing was counted.
    public var description: String {
        let parts = Kind.allCases.compactMap { kind in self[kind] == 0 ? nil : "\(kind) \(self[kind])" }
        return parts.isEmpty ? "none" : parts.joined(separator: ", ")
    }
}
