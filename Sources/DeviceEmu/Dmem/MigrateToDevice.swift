public import HostMM
import DMAEngine

/// Migration of a virtual range to VRAM: `nouveau_dmem_migrate_vma` and
/// `nouveau_dmem_migrate_chunk` on the three-step API.
///
/// Per batch: `migrateVMASetup` (SELECT_SYSTEM, owner = this device) → for each entry
/// with MIGRATE, a device page (allocated locked) receives a copy of the source, or a
/// clear for a hole → `submit()` emits the fence → `migrateVMAPages` → wait for the
/// fence → map the migrated pages in the device page table → `migrateVMAFinalize`.
/// The fence gates finalize: the CPU entries point at the new pages only after every
/// copy into them completed, and the GPU maps them only then too.
///
/// With `policy.pipelineDepth` > 1 the next batches are set up, copied and committed
/// (up to `migrateVMAPages`) while earlier batches' copies are in flight; each batch
/// still waits for its own fence before it is mapped and finalized. Under VRAM pressure
/// that eviction cannot relieve, the batches in flight are finished first (their pages
/// become evictable), so a pipelined migration moves what a strict sequence would.
extension Device {
    /// Refuses an empty or unaligned range with the reason (`migrate_vma_setup`'s first EINVAL checks).
    static func checkPageRange(_ range: Range<UInt64>) throws(DeviceError) {
        let hex = { (a: UInt64) in "0x" + String(a, radix: 16) }
        guard !range.isEmpty else { throw .invalidArgument(reason: "empty range \(hex(range.lowerBound))..<\(hex(range.upperBound))") }
        guard range.lowerBound & 4095 == 0, range.upperBound & 4095 == 0 else {
            throw .invalidArgument(reason: "range \(hex(range.lowerBound))..<\(hex(range.upperBound)) is not page-aligned (4096)")
        }
    }

    /// Migrates the pages of `[range)` in `mm` to VRAM (`nouveau_dmem_migrate_vma`), in
    /// batches of `policy.batchPages` (best effort or all-or-nothing per batch, by policy).
    /// Pages already in this device's VRAM, pinned, locked, file-backed or otherwise
    /// unmovable stay where they are; holes of anonymous VMAs are populated with cleared
    /// device pages. When VRAM is exhausted, cold pages are evicted first
    /// (`Configuration.eviction`).
    ///
    /// Takes `mm`'s mmap lock for read. Pages migrated by batches before an error stay migrated.
    /// - Throws: `.invalidArgument` for an empty or unaligned range; `.suspended`,
    ///   `.shutDown`; `.hostMM` when setup refuses a VMA (special, hugetlb, DAX mappings);
    ///   `.dma` when the copy engine is gone.
    @discardableResult
    public func migrateToDevice(_ mm: AddressSpace, range: Range<UInt64>) throws(DeviceError) -> MigrationResult {
        try Self.checkPageRange(range)
        try gate.enter()
        defer { gate.exit() }
        return try migrateToDevice(mm, range: range, channels: channels)
    }

    /// `migrateToDevice` with its copies on `pool`: a GPU fault's small window takes the
    /// CPU-copy channels, as a small CPU fault does (`MigrationPolicy.cpuCopyFaultPages`).
    ///
    /// The caller holds the device gate: the public entry point, or a GPU access (its
    /// fault's migration is part of the admitted access). Entering the gate again here
    /// refused the migration of a fault in flight once a `suspend()` had closed the gate
    /// — while that suspend waited for the very access: nouveau flushes its fault work
    /// (`nouveau_svm_suspend`) before `nouveau_dmem_suspend` evicts, so the fault finishes.
    func migrateToDevice(_ mm: AddressSpace, range: Range<UInt64>, channels pool: ChannelPool) throws(DeviceError) -> MigrationResult {
        try Self.checkPageRange(range)
        let policy = self.policy
        let tag = Self.allocationTag(range)
        let depth = policy.apiGeneration == .threeStep ? policy.pipelineDepth : 1
        // Each batch owns its buffers from setup until it completes.
        var idle = (0..<depth).map { _ in MigrationBuffers(capacity: policy.batchPages) }
        var inFlight: [BatchToDevice] = []
        var total = MigrationResult()
        func completeOldest() {
            let batch = inFlight.removeFirst()
            total.add(completeBatchToDevice(batch))
            idle.append(batch.buffers)
        }
        mm.mmapLock.readLock()
        defer { mm.mmapLock.readUnlock() }
        do {
            try forEachBatch(mm, range, batch: policy.batchPages) { (vma, start, end) throws(DeviceError) in
                if idle.isEmpty { completeOldest() }
                let need = Int((end - start) >> 12)
                reserveVRAM(pages: need, policy: policy)
                // This migration's batches in flight hold their pages locked, so eviction
                // cannot take them: when nothing else made room, finish them first (as TTM's
                // eviction waits for a busy buffer's fence). Pipelining must not leave in RAM
                // what the strict sequence would have moved.
                while !inFlight.isEmpty && vram.availablePageCount < min(need, vram.pageCount) {
                    completeOldest()
                    reserveVRAM(pages: need, policy: policy)
                }
                let b = idle.removeLast()
                defer { if !inFlight.contains(where: { $0.buffers === b }) { idle.append(b) } }
                switch policy.apiGeneration {
                case .threeStep:
                    switch try startBatchToDevice(b, vma, start, end, policy, mm, tag, pool) {
                    case .done(let outcome): total.add(outcome)
                    case .inFlight(let batch): inFlight.append(batch)
                    }
                case .callbacks2017:
                    total.add(try legacyMigrateBatch(b, vma, start, end, policy, mm, tag, pool))
                }
            }
        } catch {
            // Never leave a batch locked: finish what is in flight, then report.
            while !inFlight.isEmpty { completeOldest() }
            throw error
        }
        while !inFlight.isEmpty { completeOldest() }
        return total
    }

    /// A batch between `migrateVMAPages` and its fence: what completing it needs.
    struct BatchToDevice {
        var args: MigrateVMA
        var out: MigrationResult
        let buffers: MigrationBuffers
        let fence: Fence
        let signal: SignalStamp?
        let batch: UInt64
        let policy: MigrationPolicy
        let space: GPUAddressSpace?
        /// The view's invalidation mark from before setup (nil: map nothing).
        let since: RecentInvalidations.Mark?
        let holesWritable: Bool
    }

    enum BatchStart {
        /// Nothing (left) to wait for: the batch was empty, refused, or finished.
        case done(MigrationResult)
        case inFlight(BatchToDevice)
    }

    /// Setup, allocation, copies, submit and `migrateVMAPages` of one batch
    /// (`nouveau_dmem_migrate_chunk` up to the fence wait). The caller holds the mmap lock.
    func startBatchToDevice(_ b: MigrationBuffers, _ vma: VMA, _ start: UInt64, _ end: UInt64,
                            _ policy: MigrationPolicy, _ mm: AddressSpace, _ tag: UInt64,
                            _ pool: ChannelPool) throws(DeviceError) -> BatchStart {
        let batch = nextBatch()
        // Where the view's foreign invalidations stand before setup: one that removes a
        // collected page's migration entry before finalize must keep it off the GPU.
        let before = addressSpace(for: mm)
        let mark = before?.invalidationMark()
        emit(.setupBegin, .toDevice, batch: batch, address: start)
        let t0 = stamp()   // after the batch's begin: setup nests inside the batch
        var args = MigrateVMA(vma: vma, start: start, end: end, src: b.src, dst: b.dst,
                              pgmapOwner: owner, flags: .selectSystem)
        do { try migrateVMASetup(&args) } catch { throw .hostMM(error) }
        emit(.setupEnd, .toDevice, begin: t0, batch: batch, address: start, pages: args.cpages)
        var out = MigrationResult()
        out.pages = args.npages
        out.collected = args.cpages
        guard args.cpages > 0 else { return .done(out) }
        out.batches = 1
        counters.add(.batchesToDevice)
        if policy.rangeMigration == .allOrNothing && args.cpages < args.npages {
            return .done(refuse(&args, &out, batch))
        }
        // The device page table is looked up now, not when the migration started: the
        // notifier skips this device's own migrations, so a view bound meanwhile (which may
        // have mapped a page collected here) is zapped only by this call.
        let space = addressSpace(for: mm)
        space?.zapCollected(start, UnsafeBufferPointer(b.src), args.npages)
        // A view bound after the mark knows nothing of the invalidations before: no mapping.
        let since = space != nil && space === before ? mark : nil

        // alloc_and_copy: a locked device page per MIGRATE entry, a copy or a clear into it.
        let want = (0..<args.npages).reduce(0) { $0 + (b.src[$1].contains(.migrate) ? 1 : 0) }
        let got = vram.allocPages(into: UnsafeMutableBufferPointer(rebasing: b.pages[0..<want]))
        if got < want && policy.rangeMigration == .allOrNothing {
            for k in 0..<got { releaseUnused(b.pages[k]) }
            return .done(refuse(&args, &out, batch))
        }
        out.withoutVRAM = want - got
        if got < want { counters.add(.pagesWithoutVRAM, want - got) }
        guard let enqueued = try enqueueToDevice(b, &args, got: got, tag: tag, pool: pool,
                                                 allOrNothing: policy.rangeMigration == .allOrNothing)
        else { return .done(refuse(&args, &out, batch)) }
        let (fence, descriptors) = enqueued
        let signal = observeSignal(fence)
        emit(.copiesSubmitted, .toDevice, batch: batch, seqno: fence.seqno, channel: fence.channelID,
             address: start, pages: descriptors)

        if isCoherent {
            // Coherent VRAM is CPU-visible: a hole gets a present CPU entry in
            // migrateVMAPages already, so the copies must be done before it (amdgpu's order).
            let failures = waitFence(fence, signal, .toDevice, batch, address: start)
            dropFailedBeforePages(failures, b, &args, &out, policy)
        }
        try migrateVMAPagesInFlight(&args, b, fence, .toDevice, batch: batch, address: start)
        return .inFlight(BatchToDevice(args: args, out: out, buffers: b, fence: fence, signal: isCoherent ? nil : signal,
                                       batch: batch, policy: policy, space: space, since: since,
                                       holesWritable: vma.flags.contains(.write)))
    }

    /// Fence wait, failure handling, device map and `migrateVMAFinalize` of one batch.
    func completeBatchToDevice(_ inFlight: BatchToDevice) -> MigrationResult {
        var f = inFlight
        let b = f.buffers
        if !isCoherent {
            let failures = waitFence(f.fence, f.signal, .toDevice, f.batch, address: f.args.start)
            handleFailuresAfterPages(failures, b, &f.args, &f.out, f.policy)
        }
        if let space = f.space {
            let mapped = space.mapMigrated(f.args.start, UnsafeBufferPointer(b.src), UnsafeBufferPointer(b.dst),
                                           f.args.npages, holesWritable: f.holesWritable, since: f.since)
            counters.add(.deviceMappings, mapped)
            emit(.deviceMap, .toDevice, batch: f.batch, seqno: f.fence.seqno, address: f.args.start, pages: mapped)
        }
        var migrated = 0, holes = 0
        for i in 0..<f.args.npages where b.src[i].contains(.migrate) {
            guard let page = b.dst[i].page else { continue }
            if b.src[i].page == nil { holes += 1 }
            if let index = vram.pageIndex(of: page) {
                b.indices[migrated] = index
                migrated += 1
            }
        }
        markResident(UnsafeBufferPointer(rebasing: b.indices[0..<migrated]))
        let tf = stamp()
        emit(.finalizeBegin, .toDevice, batch: f.batch, seqno: f.fence.seqno, address: f.args.start)
        migrateVMAFinalize(&f.args)
        emit(.finalizeEnd, .toDevice, begin: tf, batch: f.batch, seqno: f.fence.seqno, address: f.args.start, pages: migrated)
        f.out.migrated = migrated
        f.out.holes = holes
        counters.add(.pagesToDevice, migrated)
        counters.add(.holesPopulated, holes)
        return f.out
    }

    /// Pages (dense indices) that now hold migrated data: residency clock and eviction policy.
    /// Called before finalize, while the pages are locked, so a page cannot be freed first.
    func markResident(_ indices: UnsafeBufferPointer<Int>) {
        guard !indices.isEmpty else { return }
        let now = MonotonicTime.now()
        for index in indices { residentSince[index].store(now, ordering: .relaxed) }
        eviction.pagesBecameResident(indices)
    }

    /// Allocation done; enqueue the copies and clears and submit them. Fills `dst`.
    ///
    /// A copy or clear the channel refuses at enqueue (no engine address for the device
    /// page, an unregistered region, a failed channel…) leaves its page in RAM under best
    /// effort. Under all or nothing it refuses the batch: returns nil with nothing
    /// submitted and every device page given back (the caller restores the batch).
    private func enqueueToDevice(_ b: MigrationBuffers, _ args: inout MigrateVMA, got: Int, tag: UInt64,
                                 pool: ChannelPool, allOrNothing: Bool) throws(DeviceError) -> (Fence, Int)? {
        let channel: DMAChannel
        do { channel = try pool.checkout() } catch {
            for k in 0..<got { releaseUnused(b.pages[k]) }
            migrateVMAFinalize(&args)   // restores every collected page
            throw error
        }
        let batchDst = UnsafeMutableBufferPointer(rebasing: b.dst[0..<args.npages])
        var next = 0, descriptors = 0
        for i in 0..<args.npages where b.src[i].contains(.migrate) {
            guard next < got else { break }  // VRAM exhausted: the rest stays (best effort)
            let page = b.pages[next]
            next += 1
            guard let to = vram.dmaAddress(of: page) else {
                releaseUnused(page)
                if allOrNothing { abandonEnqueued(channel, pool, batchDst, b.pages, unused: next..<got); return nil }
                continue
            }
            memory.setZoneDeviceData(page, tag)
            do {
                if let source = b.src[i].page {
                    try channel.enqueueCopy(from: ramAddress(source), to: to, length: pageSize)
                } else {
                    try channel.enqueueFill(to, length: pageSize, value: 0)
                }
            } catch {
                releaseUnused(page)
                if allOrNothing { abandonEnqueued(channel, pool, batchDst, b.pages, unused: next..<got); return nil }
                continue
            }
            b.slot[descriptors] = Int32(i)
            descriptors += 1
            b.dst[i] = MigratePFN(pfn: page)
        }
        let fence: Fence
        do { fence = try channel.submit() } catch {
            pool.checkin(channel)
            for i in 0..<args.npages { if let page = b.dst[i].page { releaseUnused(page); b.dst[i] = [] } }
            migrateVMAFinalize(&args)
            throw .dma(error)
        }
        pool.checkin(channel)
        return (fence, descriptors)
    }

    /// All or nothing, after one enqueue was refused (both API generations): the
    /// descriptors the batch already enqueued are discarded before submit (the channel is
    /// the batch's alone until its checkin), so no copy or clear can run into a device page
    /// given back here; then every device page of the batch (with a `dst` entry, or
    /// allocated and not reached yet: `pages[unused]`) is released and `dst` emptied, so
    /// finalize restores every collected page.
    func abandonEnqueued(_ channel: DMAChannel, _ pool: ChannelPool, _ dst: UnsafeMutableBufferPointer<MigratePFN>,
                         _ pages: UnsafeMutableBufferPointer<PFN>, unused: Range<Int>) {
        channel.discardPending()
        pool.checkin(channel)
        for i in dst.indices { if let page = dst[i].page { releaseUnused(page); dst[i] = [] } }
        for k in unused { releaseUnused(pages[k]) }
    }

    /// Restores the whole batch (all-or-nothing refused it).
    private func refuse(_ args: inout MigrateVMA, _ out: inout MigrationResult, _ batch: UInt64) -> MigrationResult {
        for i in 0..<args.npages { args.dst[i] = [] }
        let tf = stamp()
        emit(.finalizeBegin, .toDevice, batch: batch, address: args.start)
        migrateVMAFinalize(&args)
        emit(.finalizeEnd, .toDevice, begin: tf, batch: batch, address: args.start, pages: 0)
        counters.add(.batchesRefused)
        out.refusedBatches = 1
        return out
    }

    /// Entries whose `struct page` state moved (or whose hole was filled).
    func committedCount(_ b: MigrationBuffers, _ npages: Int) -> Int {
        committedEntries(b.src, b.dst, npages)
    }

    /// `migrateVMAPages` of a batch whose copies are submitted, between its observer events
    /// (checked mode reports the caller's site). It cannot fail with the locked destinations
    /// the driver allocated; should it, the batch waits for its copies (never finalize under
    /// a running copy), is finalized, and the error thrown.
    func migrateVMAPagesInFlight(_ args: inout MigrateVMA, _ b: MigrationBuffers, _ fence: Fence,
                                 _ direction: MigrationEvent.Direction, batch: UInt64, address: UInt64,
                                 fileID: StaticString = #fileID, line: UInt = #line) throws(DeviceError) {
        let tp = stamp()
        emit(.migratePagesBegin, direction, batch: batch, seqno: fence.seqno, address: address)
        do { try migrateVMAPages(&args, fileID: fileID, line: line) } catch {
            _ = fence.waitForSignal()
            migrateVMAFinalize(&args)
            throw .hostMM(error)
        }
        emit(.migratePagesEnd, direction, begin: tp, batch: batch, seqno: fence.seqno, address: address,
             pages: committedCount(b, args.npages))
    }

    /// Waits for a batch's fence (`nouveau_fence_wait`); returns the failed descriptors.
    /// `address` is the batch's first address (0 for evictions), reported with the events.
    func waitFence(_ fence: Fence, _ signal: SignalStamp?, _ direction: MigrationEvent.Direction,
                   _ batch: UInt64, address: UInt64) -> [DescriptorFailure] {
        let t = stamp()
        emit(.fenceWaitBegin, direction, batch: batch, seqno: fence.seqno, channel: fence.channelID, address: address)
        var failures: [DescriptorFailure] = []
        do { try fence.wait() } catch .copyFailed(let list) { failures = list } catch {}
        reportSignal(signal, fence, direction, batch: batch, address: address)
        emit(.fenceWaitEnd, direction, begin: t, batch: batch, seqno: fence.seqno, channel: fence.channelID,
             address: address, pages: failures.count)
        if !failures.isEmpty { counters.add(.copyFailures, failures.count) }
        return failures
    }

    /// Failures seen before `migrateVMAPages` (coherent VRAM): nothing is committed yet,
    /// so each failed entry simply gets no destination.
    private func dropFailedBeforePages(_ failures: [DescriptorFailure], _ b: MigrationBuffers,
                                       _ args: inout MigrateVMA, _ out: inout MigrationResult, _ policy: MigrationPolicy) {
        guard !failures.isEmpty else { return }
        for f in failures {
            let i = Int(b.slot[f.index])
            if let page = b.dst[i].page { releaseUnused(page); b.dst[i] = [] }
        }
        out.copyFailures += failures.count
        counters.add(.pagesLeftAfterCopyFailure, failures.count)
        if policy.rangeMigration == .allOrNothing {
            for i in 0..<args.npages { if let page = b.dst[i].page { releaseUnused(page); b.dst[i] = [] } }
            counters.add(.batchesRefused)
            out.refusedBatches = 1
        }
    }

    /// Failures seen after `migrateVMAPages`: a page that had a source loses MIGRATE, so
    /// finalize puts the source back and frees the device page — its data never left. A
    /// hole is already committed (mapped to the device page, which stays locked until
    /// finalize, so nobody can read it yet): its clear is issued again.
    private func handleFailuresAfterPages(_ failures: [DescriptorFailure], _ b: MigrationBuffers,
                                          _ args: inout MigrateVMA, _ out: inout MigrationResult,
                                          _ policy: MigrationPolicy) {
        guard !failures.isEmpty else { return }
        var redo: [(source: PFN?, page: PFN)] = []
        var left = 0
        for f in failures {
            let i = Int(b.slot[f.index])
            guard b.src[i].contains(.migrate), let page = b.dst[i].page else { continue }
            if b.src[i].page != nil {
                b.src[i].remove(.migrate)
                left += 1
            } else {
                redo.append((nil, page))
            }
        }
        if policy.rangeMigration == .allOrNothing && left > 0 {
            for i in 0..<args.npages where b.src[i].page != nil { b.src[i].remove(.migrate) }
            counters.add(.batchesRefused)
            out.refusedBatches = 1
        }
        out.copyFailures += left
        counters.add(.pagesLeftAfterCopyFailure, left)
        redoCommitted(redo, policy)
    }
}
