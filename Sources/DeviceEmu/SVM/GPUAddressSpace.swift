public import HostMM
import NIOConcurrencyHelpers
import Synchronization

/// A device's view of one address space (shared virtual addressing: GPU VA = CPU VA):
/// its device page table and the MMU interval notifier that keeps it coherent.
///
/// Models nouveau's `struct nouveau_svmm` and test_hmm's `struct dmirror`. The notifier
/// covers the whole address space; every invalidation zaps the overlapping device
/// entries under `lock` — except this device's own migrations (`.migrate` and
/// `.exclusive` events whose owner is the device), whose entries the driver updates
/// itself as part of the migration, as `dmirror_interval_invalidate` does; of its own
/// `.migrate` range only the system-memory entries are zapped at once.
///
/// GPU accesses copy bytes with `lock` held, so an invalidation (which takes it) cannot
/// complete, and the page cannot be freed or moved, while the GPU touches it.
///
/// Threads: any. Lock order: HostMM locks (mmap, page, page-table) → `lock` → the
/// eviction policy's lock. Nothing calls into HostMM with `lock` held.
public final class GPUAddressSpace: MMUIntervalNotifierOps, @unchecked Sendable {
    /// The address space mirrored.
    public let mm: AddressSpace
    /// The device whose page table this is.
    public let device: Device
    /// The mirror lock (`dmirror->mutex`, `svmm->mutex`).
    let lock = NIOLock()
    // Guarded by `lock`:
    var table = DevicePageTable()
    /// Bumped whenever the driver changes entries for its own migrations (which the
    /// notifier's sequence does not see): a GPU fault's snapshot is stale if it moved.
    var ownSequence: UInt64 = 0
    /// Invalidations that were not this device's own (munmap, `MADV_DONTNEED`, mprotect,
    /// fork, another device's migration…), and the ranges of the latest of them: a
    /// migration batch maps its pages only if none overlapped it since its setup began.
    private var foreignInvalidations = RecentInvalidations()
    var isDetached = false
    private(set) var notifier: MMUIntervalNotifier!
    /// GPU accesses in flight on this view: `detach` waits for them, as nouveau's
    /// `nouveau_svmm_fini` takes `svmm->mutex` from its fault handler, so that no fault or
    /// remote-access callback reaches the policies after `unbind` told them to forget.
    let accesses = OperationGate()
    /// Until `detach` removes the notifier (once, though the table may be closed first).
    private let notifierAttached = Atomic<Bool>(true)

    /// One past the highest user address the notifier covers (x86-64 4-level `TASK_SIZE`).
    static let addressLimit: UInt64 = 1 << 47

    init(device: Device, mm: AddressSpace) throws(DeviceError) {
        self.device = device
        self.mm = mm
        if let shared = device.reverseMappings { table.trackReverseMappings(in: shared) }
        do {
            notifier = try mm.notifiers.insert(start: 0, length: Self.addressLimit, ops: self)
        } catch { throw .hostMM(error) }
    }

    /// Empties the table and closes it to new entries (idempotent); returns whether it
    /// was already closed. `unbind` calls it while the view is still findable by
    /// `Device.addressSpace(for:)`: a migration of this device's own (whose invalidation
    /// keeps VRAM and exclusive entries, the driver zapping them itself through that
    /// lookup) either finds the view and zaps it, or finds none and the table is empty.
    @discardableResult
    func close() -> Bool {
        lock.withLock { () -> Bool in
            defer { isDetached = true }
            if !isDetached { table.removeAll() }
            return isDetached
        }
    }

    /// Closes the table, removes the notifier and waits for the GPU accesses in flight
    /// (idempotent). Never called from inside an access.
    func detach() {
        // Emptied and closed to new entries before the notifier goes: once it is removed,
        // invalidations no longer reach this table, so nothing may be left in it then.
        close()
        guard notifierAttached.exchange(false, ordering: .acquiringAndReleasing) else { return }
        notifier.remove()
        accesses.close(to: .shutDown)
    }

    // MARK: Inspection

    /// The device page-table entry at `address` (for tests and tools).
    public func entry(at address: UInt64) -> DevicePageTableEntry {
        lock.withLock { table.entry(address) }
    }

    /// Valid entries in the device page table.
    public var mappedPageCount: Int { lock.withLock { table.count } }

    // MARK: mmu_interval_notifier_ops

    /// `invalidate`: zap the overlapping device entries, unless it is this device's own
    /// migration or exclusive-access request (the driver updates those entries itself);
    /// its own migration still zaps the range's system-memory entries at once.
    public func invalidate(_ notifier: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool {
        if (range.event == .migrate || range.event == .exclusive) && range.owner == device.owner {
            device.counters.add(.ownInvalidationsSkipped)
            guard range.event == .migrate else { return true }
            // Its own migration keeps the VRAM entries (the driver updates them itself), but
            // not the system-memory ones: the migration is about to lock and unmap those
            // pages and copy them, and a GPU write through a surviving entry would change a
            // source after setup. GPU faults in flight retry (as for any invalidation).
            lock.withLock {
                notifier.setSequence(currentSequence)
                if !isDetached, range.end > range.start {
                    _ = table.zap(range.start, Int((range.end - range.start) >> 12)) { _, entry in entry.kind == .system }
                }
                ownSequence &+= 1
            }
            return true
        }
        lock.withLock {
            notifier.setSequence(currentSequence)
            foreignInvalidations.record(range.start ..< range.end)
            _ = table.zap(range.start, range.end)
        }
        device.counters.add(.invalidations)
        return true
    }

    // MARK: The driver's own updates

    /// Zaps the entries a migration collected (`src[i]` has `.migrate`) before the copy is
    /// enqueued, so the GPU cannot write a page whose data is being copied away.
    func zapCollected(_ start: UInt64, _ src: UnsafeBufferPointer<MigratePFN>, _ npages: Int) {
        lock.withLock {
            if !isDetached { _ = table.zap(start, npages) { k, _ in src[k].contains(.migrate) } }
            ownSequence &+= 1
        }
    }

    /// `zapCollected` for the entries `include` names (by index from `start`): a 2017-API
    /// fault, whose setup also collects System-RAM pages and holes it leaves alone.
    func zapCollected(_ start: UInt64, _ npages: Int, where include: (Int) -> Bool) {
        lock.withLock {
            if !isDetached { _ = table.zap(start, npages) { k, _ in include(k) } }
            ownSequence &+= 1
        }
    }

    /// Where the foreign invalidations stand, for a migration about to set up a batch
    /// (`mmu_interval_read_begin`); pass it to `mapMigrated`.
    ///
    /// Waits first for an invalidation in progress to end, as `mmu_interval_read_begin`
    /// does: `invalidate` runs at `invalidate_range_start`, before the page tables change,
    /// so a mark taken after its record but before its zap would count an `MADV_DONTNEED`
    /// as over whose zap then removes a migration entry this batch's setup installs. If
    /// another invalidation reached this view meanwhile, the wait starts over (the
    /// sequence check under `lock`, as `mmu_interval_read_retry`). The caller may hold
    /// the mmap lock for read and earlier batches' pages: no invalidation body waits for
    /// either (writers of the mmap lock cannot be running, page locks are tried).
    func invalidationMark() -> RecentInvalidations.Mark {
        while true {
            let seq = notifier.readBegin()
            if let mark = lock.withLock({ notifier.readRetry(seq) ? nil : foreignInvalidations.mark() }) {
                return mark
            }
        }
    }

    /// Maps the pages that migrated to VRAM (`src[i]` kept `.migrate`, `dst[i]` valid);
    /// returns the entries written. Holes get write permission when the VMA allows it.
    ///
    /// `since` is the mark taken before the batch's setup (nil: the view was bound after
    /// it, so nothing is known of the invalidations before). Pages that a foreign
    /// invalidation covered since then are not mapped (`mmu_interval_read_retry`): an
    /// `MADV_DONTNEED` or munmap between setup and finalize removes the migration entry,
    /// so the CPU no longer maps the new page and finalize frees it; an entry here would
    /// keep the GPU on a freed VRAM page. nouveau's `nouveau_pfns_map` maps without this
    /// check. The GPU faults on what was left unmapped and resolves it afresh.
    func mapMigrated(_ start: UInt64, _ src: UnsafeBufferPointer<MigratePFN>,
                     _ dst: UnsafeBufferPointer<MigratePFN>, _ npages: Int, holesWritable: Bool,
                     since: RecentInvalidations.Mark?) -> Int {
        lock.withLock {
            guard !isDetached, let since else { return 0 }
            ownSequence &+= 1
            let batch = start ..< start + UInt64(npages) << 12
            let stale = foreignInvalidations.overlapping(batch, since: since)
            if stale == .all { return 0 }
            return table.map(start, npages) { i in
                guard src[i].contains(.migrate), let page = dst[i].page else { return nil }
                if stale == .some && foreignInvalidations.covers(start + UInt64(i) << 12, since: since) { return nil }
                let write = src[i].page == nil ? holesWritable : src[i].contains(.write)
                return DevicePageTableEntry(pfn: page, kind: .vram, write: write)
            }
        }
    }
}
