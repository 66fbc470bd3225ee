import HostMM
import DMAEngine

/// The 2017 generation's way back to RAM (seed 001's removed lines): `migrate_vma` with
/// `nouveau_dmem_fault_migrate_ops` — `allocAndCopy` (`nouveau_dmem_fault_alloc_and_copy`)
/// allocates and locks a RAM page per collected device page, queues the D2H copies and
/// emits the fence; `finalizeAndMap` (`nouveau_dmem_fault_finalize_and_map`) waits on it.
/// The window, the channels (CPU copy for small windows), young neighbours and the
/// faulting page's priority when RAM is short are the three-step fault path's.
///
/// Errors, as nouveau 2017 had them: the callback API lets a driver fail a device page
/// only in `allocAndCopy`, by `dst[i] = MIGRATE_PFN_ERROR`, and the fault handler
/// answers SIGBUS when the faulting page's entry holds it (`dst[0] == MIGRATE_PFN_ERROR`).
/// So a faulting page left without a RAM page (the model's OOM) or whose copy could not
/// be queued or submitted gets `.error`; a neighbour gets no destination and stays in
/// VRAM. A failure the fence reports is seen in `finalizeAndMap`, after `migrateVMAPages`
/// committed the page to its RAM copy: the contract forbids changing `src`/`dst` there,
/// and nouveau 2017 did not look at the fence's outcome (the page came back with whatever
/// the RAM page held). Here the copy is redone from the device page, still locked and
/// still holding the data until finalize frees it (`redoCommitted`, as for the VRAM
/// direction): the page reaches RAM with its data and the access succeeds — no SIGBUS,
/// which the API could no longer express, and no silent corruption.
///
/// Setup also collects System-RAM pages and holes in the window (`migrateVMA(ops:)`
/// selects SYSTEM): `allocAndCopy` leaves them, and young neighbours, without a
/// destination (it may not change `src`), so finalize restores them.
///
/// Threads: the faulting (or migrating) thread only, for one batch.
final class LegacyDmemFaultOps: MigrateVMAOps {
    unowned let device: Device
    let policy: MigrationPolicy
    let mm: AddressSpace
    let buffers: MigrationBuffers
    let pool: ChannelPool
    let faultPage: PFN?
    let batch: UInt64
    var setupBegin: UInt64 = 0
    var pagesBegin: UInt64 = 0
    var finalizeBegin: UInt64 = 0
    /// `allocAndCopy` ran (setup collected something).
    var called = false
    /// `.finalizeBegin` was reported: the caller reports `.finalizeEnd` after `migrateVMA` returns.
    var finalizing = false
    var fence: Fence?
    var signal: SignalStamp?
    /// The faulting page's entry, when this batch collected it.
    var faultIndex: Int?
    var out = Device.ToRAMOutcome()
    /// The channel checkout's or `submit()`'s error (nothing was queued).
    var error: DeviceError?

    init(device: Device, policy: MigrationPolicy, mm: AddressSpace, buffers: MigrationBuffers, pool: ChannelPool,
         faultPage: PFN?, batch: UInt64) {
        self.device = device
        self.policy = policy
        self.mm = mm
        self.buffers = buffers
        self.pool = pool
        self.faultPage = faultPage
        self.batch = batch
    }

    func allocAndCopy(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeMutableBufferPointer<MigratePFN>,
                      start: UInt64, end: UInt64) {
        let d = device
        let n = src.count
        called = true
        let movable = buffers.indices   // 1: a device page of this device to bring back
        let want = selectMovable(src, movable, start)
        d.emit(.setupEnd, .toRAM, begin: setupBegin, batch: batch, address: start, pages: out.collected)
        guard want > 0 else {
            // Nothing to move (young neighbours, holes): finalize restores every entry.
            if out.collected > 0 { beginFinalize(start) }
            return
        }
        // Looked up once the pages are collected (see `startBatchToDevice`).
        d.addressSpace(for: mm)?.zapCollected(start, n) { movable[$0] != 0 }
        let queued: (Fence, Int, faultPageWithoutRAM: Bool)
        do throws(DeviceError) {
            queued = try d.queueCopiesToRAM(buffers, src, dst, n, pool, faultIndex: faultIndex) { movable[$0] != 0 }
        } catch {
            self.error = error
            if let fi = faultIndex { dst[fi] = .error }
            return
        }
        let (fence, descriptors, withoutRAM) = queued
        if let fi = faultIndex, dst[fi].page == nil {
            // No frame left for it (the model's VM_FAULT_OOM), or its copy could not be
            // queued: `MIGRATE_PFN_ERROR`, nouveau's SIGBUS.
            dst[fi] = .error
            if withoutRAM { out.faultPageWithoutRAM = true } else { out.faultPageCopyFailed = true }
        }
        self.fence = fence
        signal = d.observeSignal(fence)
        d.emit(.copiesSubmitted, .toRAM, batch: batch, seqno: fence.seqno, channel: fence.channelID,
               address: start, pages: descriptors)
        pagesBegin = d.stamp()
        d.emit(.migratePagesBegin, .toRAM, batch: batch, seqno: fence.seqno, address: start)
    }

    /// Sets `movable[i]` for this device's collected pages other than young neighbours
    /// (`keepYoungNeighbours`, which may clear `.migrate`; this callback may not). Counts
    /// in `out.collected` what the three steps' setup would have collected (their
    /// `cpages`): this device's pages and the holes (`migrate_vma_collect_hole` takes them
    /// whatever the selection), not the System-RAM pages nor the zero-page entries
    /// SELECT_SYSTEM adds here (`migrate_vma_collect_pmd` takes the zero page only with
    /// it; such an entry, like a hole, has `.migrate` and no page: the CPU entry tells them
    /// apart — it stays the zero page's, collect installs no migration entry for it).
    /// Returns how many pages are to move.
    private func selectMovable(_ src: UnsafeBufferPointer<MigratePFN>, _ movable: UnsafeMutableBufferPointer<Int>,
                               _ start: UInt64) -> Int {
        let d = device
        let residency = faultPage != nil && policy.minimumResidency > .zero
            ? MonotonicTime.nanoseconds(policy.minimumResidency) : 0
        let now = residency > 0 ? MonotonicTime.now() : 0
        var want = 0, kept = 0
        for i in 0..<src.count {
            movable[i] = 0
            guard src[i].contains(.migrate) else { continue }
            guard let page = src[i].page else {
                let pte = mm.pageTableEntry(start + UInt64(i) << 12)
                if !(pte.kind == .present && pte.pfn == d.memory.zeroPFN) { out.collected += 1 }
                continue
            }
            guard d.vram.contains(page) else { continue }
            out.collected += 1
            if page == faultPage { faultIndex = i }
            if residency > 0, let faultPage, d.isYoungNeighbour(page, faultPage: faultPage, residency, now: now) {
                kept += 1
                continue
            }
            movable[i] = 1
            want += 1
        }
        if faultPage != nil { d.counters.add(.youngNeighboursSkipped, kept) }
        return want
    }

    func finalizeAndMap(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeBufferPointer<MigratePFN>,
                        start: UInt64, end: UInt64) {
        guard let fence else { return }
        let d = device
        let n = src.count
        let committed = committedEntries(buffers.src, buffers.dst, n)   // the same arrays as src/dst
        d.emit(.migratePagesEnd, .toRAM, begin: pagesBegin, batch: batch, seqno: fence.seqno, address: start,
               pages: committed)
        let failures = d.waitFence(fence, signal, .toRAM, batch, address: start)
        var redo: [(source: PFN?, page: PFN)] = []
        for f in failures {
            let i = Int(buffers.slot[f.index])
            if src[i].contains(.migrate), let page = dst[i].page {
                redo.append((src[i].page, page))
            } else {
                out.failed += 1   // not committed: finalize restores it, data and all
            }
        }
        d.counters.add(.pagesLeftAfterCopyFailure, out.failed)
        d.redoCommitted(redo, policy, toRAM: true)
        out.moved = committed
        d.markDeparted(buffers.src, buffers.dst, n)
        beginFinalize(start)
    }

    /// `migrateVMA` calls `migrateVMAFinalize` next: reports its start.
    private func beginFinalize(_ start: UInt64) {
        finalizing = true
        finalizeBegin = device.stamp()
        device.emit(.finalizeBegin, .toRAM, batch: batch, seqno: fence?.seqno ?? 0, address: start)
    }
}

extension Device {
    /// One batch back to RAM through the 2017 callback API (`migrate_vma` with
    /// `nouveau_dmem_fault_migrate_ops`); same outcome as `migrateBatchToRAM`. The caller
    /// holds the mmap lock. Device-private VRAM only: `migrateVMA(ops:)` selects no
    /// coherent pages.
    func legacyBatchToRAM(_ b: MigrationBuffers, _ vma: VMA, _ start: UInt64, _ end: UInt64, faultPage: PFN?,
                          _ mm: AddressSpace, _ policy: MigrationPolicy,
                          _ pool: ChannelPool) throws(DeviceError) -> ToRAMOutcome {
        let batch = nextBatch()
        let ops = LegacyDmemFaultOps(device: self, policy: policy, mm: mm, buffers: b, pool: pool,
                                     faultPage: faultPage, batch: batch)
        emit(.setupBegin, .toRAM, batch: batch, address: start)
        ops.setupBegin = stamp()   // after the batch's begin: setup nests inside the batch
        // Inside `migrateToRAM`, HostMM passes the fault's page as `faultPage` itself.
        do {
            try migrateVMA(ops: ops, vma: vma, start: start, end: end, src: b.src, dst: b.dst, pgmapOwner: owner)
        } catch { throw .hostMM(error) }
        guard ops.called else {
            // migrateVMA calls no callback when setup collected nothing.
            emit(.setupEnd, .toRAM, begin: ops.setupBegin, batch: batch, address: start, pages: 0)
            return ops.out
        }
        if ops.finalizing {
            emit(.finalizeEnd, .toRAM, begin: ops.finalizeBegin, batch: batch, seqno: ops.fence?.seqno ?? 0,
                 address: start, pages: ops.out.moved)
            counters.add(.pagesToRAM, ops.out.moved)
        }
        // A fault's batch that failed with only neighbours collected fails no access (see
        // `migrateBatchToRAM`); otherwise the error is the batch's, as in the three steps.
        if let error = ops.error, faultPage == nil || ops.faultIndex != nil { throw error }
        return ops.out
    }
}
