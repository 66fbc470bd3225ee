import HostMM
import DMAEngine

/// The 2017 generation (seed 000): the same driver through `migrateVMA(ops:)`, as
/// nouveau first used it — `allocAndCopy` allocates, enqueues the copies and emits the
/// fence (`nouveau_dmem_migrate_alloc_and_copy`); `finalizeAndMap` waits on it and maps
/// (`nouveau_dmem_migrate_finalize_and_map`).
///
/// The callback contract forbids `finalizeAndMap` to change `src` or `dst`, so a copy
/// failure seen there cannot un-migrate the page (one reason the API was turned upside
/// down): the copy is redone while the page is still locked (`redoCommitted`). With
/// coherent VRAM the copies are waited for in `allocAndCopy` instead (`waitBeforePages`).
final class LegacyDmemMigrateOps: MigrateVMAOps {
    unowned let device: Device
    let policy: MigrationPolicy
    let mm: AddressSpace
    /// The device page table of `mm`, looked up once the batch is collected (`allocAndCopy`).
    var space: GPUAddressSpace?
    /// The view's invalidation mark from before setup, and the view it came from.
    let before: GPUAddressSpace?
    let mark: RecentInvalidations.Mark?
    let tag: UInt64
    let batch: UInt64
    let slot: UnsafeMutableBufferPointer<Int32>
    let pages: UnsafeMutableBufferPointer<PFN>
    let indices: UnsafeMutableBufferPointer<Int>
    let writable: Bool
    /// Where the copies go (the bulk channels, or the CPU-copy ones for a small GPU fault).
    let channels: ChannelPool
    var fence: Fence?
    var signal: SignalStamp?
    var result = MigrationResult()
    var error: DeviceError?
    var setupBegin: UInt64 = 0
    var pagesBegin: UInt64 = 0
    /// `.migratePagesBegin` was reported (a batch refused or emptied before its pages step reports none).
    var pagesBegun = false
    var finalizeBegin: UInt64 = 0
    /// Coherent VRAM: `allocAndCopy` already waited for the fence (`waitBeforePages`).
    var waitedBeforePages = false
    /// `.finalizeBegin` was reported: the caller reports `.finalizeEnd` after `migrateVMA` returns.
    var finalizing = false

    init(device: Device, policy: MigrationPolicy, mm: AddressSpace, tag: UInt64, batch: UInt64,
         buffers: MigrationBuffers, writable: Bool, channels: ChannelPool) {
        self.device = device
        self.channels = channels
        self.policy = policy
        self.mm = mm
        before = device.addressSpace(for: mm)
        mark = before?.invalidationMark()
        self.tag = tag
        self.batch = batch
        self.slot = buffers.slot
        self.pages = buffers.pages
        self.indices = buffers.indices
        self.writable = writable
    }

    func allocAndCopy(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeMutableBufferPointer<MigratePFN>,
                      start: UInt64, end: UInt64) {
        let d = device
        let n = src.count
        // System pages and holes only: this device's own pages (selected by owner) stay.
        let movable = { (i: Int) -> Bool in
            src[i].contains(.migrate) && (src[i].page.map { d.memory.isRAM($0) } ?? true)
        }
        let want = (0..<n).reduce(0) { $0 + (movable($1) ? 1 : 0) }
        result.pages = n
        result.collected = want
        d.emit(.setupEnd, .toDevice, begin: setupBegin, batch: batch, address: start, pages: want)
        guard want > 0 else { return }
        result.batches = 1
        d.counters.add(.batchesToDevice)
        if policy.rangeMigration == .allOrNothing && want < n {
            d.counters.add(.batchesRefused)
            result.refusedBatches = 1
            return
        }
        // Looked up after setup: a view bound before it may map collected pages (see
        // `startBatchToDevice`).
        space = d.addressSpace(for: mm)
        space?.zapCollected(start, src, n)
        let got = d.vram.allocPages(into: UnsafeMutableBufferPointer(rebasing: pages[0..<want]))
        if got < want && policy.rangeMigration == .allOrNothing {
            // A page that cannot be allocated restores the whole batch, as in the three-step flow.
            for k in 0..<got { d.releaseUnused(pages[k]) }
            d.counters.add(.batchesRefused)
            result.refusedBatches = 1
            return
        }
        result.withoutVRAM = want - got
        if got < want { d.counters.add(.pagesWithoutVRAM, want - got) }
        let channel: DMAChannel
        do { channel = try channels.checkout() } catch {
            for k in 0..<got { d.releaseUnused(pages[k]) }
            self.error = error
            return
        }
        do {
            var next = 0, descriptors = 0
            for i in 0..<n where movable(i) && next < got {
                let page = pages[next]
                next += 1
                guard let to = d.vram.dmaAddress(of: page) else {
                    d.releaseUnused(page)
                    if policy.rangeMigration == .allOrNothing { return refuseEnqueued(channel, dst, unused: next..<got) }
                    continue
                }
                d.memory.setZoneDeviceData(page, tag)
                do {
                    if let source = src[i].page {
                        try channel.enqueueCopy(from: d.ramAddress(source), to: to, length: pageSize)
                    } else {
                        try channel.enqueueFill(to, length: pageSize, value: 0)
                    }
                } catch {
                    d.releaseUnused(page)
                    if policy.rangeMigration == .allOrNothing { return refuseEnqueued(channel, dst, unused: next..<got) }
                    continue
                }
                slot[descriptors] = Int32(i)
                descriptors += 1
                dst[i] = MigratePFN(pfn: page).union(.locked)   // 2017 drivers set LOCKED
            }
            for k in next..<got { d.releaseUnused(pages[k]) }
            defer { channels.checkin(channel) }
            let fence = try channel.submit()
            self.fence = fence
            signal = d.observeSignal(fence)
            d.emit(.copiesSubmitted, .toDevice, batch: batch, seqno: fence.seqno, channel: fence.channelID,
                   address: start, pages: descriptors)
        } catch {
            for i in 0..<n { if let page = dst[i].page { d.releaseUnused(page); dst[i] = [] } }
            self.error = .dma(error)
        }
        if d.isCoherent, let fence { waitBeforePages(fence, src, dst, start) }
        pagesBegin = d.stamp()
        pagesBegun = true
        d.emit(.migratePagesBegin, .toDevice, batch: batch, seqno: fence?.seqno ?? 0, address: start)
    }

    /// All or nothing, after the channel refused one enqueue: the batch is refused as when
    /// VRAM is short (`Device.abandonEnqueued`: nothing enqueued runs, every device page is
    /// given back, `dst` is emptied, so `migrateVMAPages` moves nothing and finalize
    /// restores every collected page).
    private func refuseEnqueued(_ channel: DMAChannel, _ dst: UnsafeMutableBufferPointer<MigratePFN>,
                                unused: Range<Int>) {
        device.abandonEnqueued(channel, channels, dst, pages, unused: unused)
        device.counters.add(.batchesRefused)
        result.refusedBatches = 1
    }

    /// Coherent VRAM is CPU-visible: `migrateVMAPages` maps a hole's device page with a
    /// present CPU entry at once (`migrate_vma_insert_page`; device-public memory in
    /// 2017), before `finalizeAndMap` runs. So, as the three-step flow does for coherent
    /// VRAM (amdgpu's order), the copies must be done before `allocAndCopy` returns; a page
    /// whose copy failed is dropped from `dst` here, while the callback may still change it
    /// (the source then stays; all or nothing drops the whole batch).
    private func waitBeforePages(_ fence: Fence, _ src: UnsafeBufferPointer<MigratePFN>,
                                 _ dst: UnsafeMutableBufferPointer<MigratePFN>, _ start: UInt64) {
        let d = device
        let failures = d.waitFence(fence, signal, .toDevice, batch, address: start)
        waitedBeforePages = true
        guard !failures.isEmpty else { return }
        for f in failures {
            let i = Int(slot[f.index])
            if let page = dst[i].page { d.releaseUnused(page); dst[i] = [] }
        }
        result.copyFailures += failures.count
        d.counters.add(.pagesLeftAfterCopyFailure, failures.count)
        if policy.rangeMigration == .allOrNothing {
            for i in 0..<src.count { if let page = dst[i].page { d.releaseUnused(page); dst[i] = [] } }
            d.counters.add(.batchesRefused)
            result.refusedBatches = 1
        }
    }

    func finalizeAndMap(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeBufferPointer<MigratePFN>,
                        start: UInt64, end: UInt64) {
        let d = device
        let n = src.count
        var committed = 0
        for i in 0..<n where src[i].contains(.migrate) && dst[i].page != nil { committed += 1 }
        if pagesBegun {   // as in the three-step flow, a batch refused before its pages step reports neither
            d.emit(.migratePagesEnd, .toDevice, begin: pagesBegin, batch: batch, seqno: fence?.seqno ?? 0,
                   address: start, pages: committed)
        }
        guard let fence else {
            if result.collected > 0 { beginFinalize(start) }
            return
        }
        let failures = waitedBeforePages ? [] : d.waitFence(fence, signal, .toDevice, batch, address: start)
        var redo: [(source: PFN?, page: PFN)] = []
        for f in failures {
            let i = Int(slot[f.index])
            if src[i].contains(.migrate), let page = dst[i].page { redo.append((src[i].page, page)) }
        }
        d.redoCommitted(redo, policy)
        if let space {
            let mapped = space.mapMigrated(start, src, dst, n, holesWritable: writable,
                                           since: space === before ? mark : nil)
            d.counters.add(.deviceMappings, mapped)
            d.emit(.deviceMap, .toDevice, batch: batch, seqno: fence.seqno, address: start, pages: mapped)
        }
        var resident = 0
        for i in 0..<n where src[i].contains(.migrate) {
            guard let page = dst[i].page else { continue }
            result.migrated += 1
            if src[i].page == nil { result.holes += 1 }
            if let index = d.vram.pageIndex(of: page) {
                indices[resident] = index
                resident += 1
            }
        }
        d.markResident(UnsafeBufferPointer(rebasing: indices[0..<resident]))
        beginFinalize(start)
    }

    /// `migrateVMA` calls `migrateVMAFinalize` next: reports its start, once.
    private func beginFinalize(_ start: UInt64) {
        guard !finalizing else { return }
        finalizing = true
        finalizeBegin = device.stamp()
        device.emit(.finalizeBegin, .toDevice, batch: batch, seqno: fence?.seqno ?? 0, address: start)
    }
}

extension Device {
    /// One batch through the 2017 callback API. The caller holds the mmap lock.
    func legacyMigrateBatch(_ b: MigrationBuffers, _ vma: VMA, _ start: UInt64, _ end: UInt64,
                            _ policy: MigrationPolicy, _ mm: AddressSpace, _ tag: UInt64,
                            _ pool: ChannelPool) throws(DeviceError) -> MigrationResult {
        let batch = nextBatch()
        let ops = LegacyDmemMigrateOps(device: self, policy: policy, mm: mm, tag: tag, batch: batch,
                                       buffers: b, writable: vma.flags.contains(.write), channels: pool)
        // The batch begins with `.setupBegin`; its setup span starts after it (nests inside).
        emit(.setupBegin, .toDevice, batch: batch, address: start)
        ops.setupBegin = stamp()
        do {
            try migrateVMA(ops: ops, vma: vma, start: start, end: end, src: b.src, dst: b.dst, pgmapOwner: owner)
        } catch { throw .hostMM(error) }
        if ops.finalizing {
            emit(.finalizeEnd, .toDevice, begin: ops.finalizeBegin, batch: batch, seqno: ops.fence?.seqno ?? 0,
                 address: start, pages: ops.result.migrated)
        }
        // migrateVMA calls no callback when setup collected nothing: the range was walked anyway.
        if ops.result.pages == 0 {
            ops.result.pages = Int((end - start) >> 12)
            emit(.setupEnd, .toDevice, begin: ops.setupBegin, batch: batch, address: start, pages: 0)
        }
        counters.add(.pagesToDevice, ops.result.migrated)
        counters.add(.holesPopulated, ops.result.holes)
        if let error = ops.error { throw error }
        return ops.result
    }
}
