public import HostMM
import DMAEngine

/// Migration of device pages back to System RAM by virtual address:
/// `nouveau_dmem_migrate_to_ram` (the pgmap's CPU-fault handler) and dmirror's
/// "migrate to system" command. Under `apiGeneration == .callbacks2017`, device-private
/// batches go through `migrateVMA(ops:)` with the 2017 fault ops instead
/// (`LegacyFaultOps.swift`); what follows is the three-step batch.
///
/// Per batch: `migrateVMASetup` with SELECT_DEVICE_PRIVATE (SELECT_DEVICE_COHERENT for
/// coherent VRAM), owner = this device (and
/// `faultPage` on a fault) → a locked RAM page per collected device page, a D2H copy
/// into it → `submit()` → `migrateVMAPages` → wait for the fence → `migrateVMAFinalize`.
/// The device page-table entries of collected pages are zapped before the copy is
/// enqueued (the notifier skips the device's own migrations).
extension Device {
    /// `dev_pagemap_ops.migrate_to_ram` (`nouveau_dmem_migrate_to_ram`): a CPU access hit a
    /// device-private entry of this device. Brings back the faulting page — or, by
    /// `policy.cpuFaultGranularity`, a fault-around window or the whole range it was
    /// migrated with — after the minimum residency, if any (`waitForResidency`: the
    /// faulting page's, or the whole allocation's; young fault-around neighbours stay in
    /// VRAM). Returns `.sigbus` when setup refuses the faulting batch or the faulting
    /// page's copy fails — refused at enqueue, at submit, or reported by the fence — (as
    /// nouveau does), `.oom` when no RAM page is left for it (nouveau: SIGBUS), and `.done`
    /// otherwise: also when only neighbours failed (they stay in VRAM), and when the page
    /// could not move because another thread holds it (a concurrent fault on the same page,
    /// a migration): the access is retried, as the kernel retries it. The table is in
    /// docs/kernel-map.md. Under `.callbacks2017` the batches go through
    /// `migrateVMA(ops:)` with nouveau's 2017 fault ops (`LegacyFaultOps.swift`): there a
    /// copy failure the fence reports comes after the page was committed, so the copy is
    /// redone and the access succeeds; only a copy refused at enqueue or submit is SIGBUS.
    public func migrateToRAM(_ fault: VMFault) -> VMFaultResult {
        ungatedMigrations.add(1, ordering: .sequentiallyConsistent)
        defer { ungatedMigrations.subtract(1, ordering: .sequentiallyConsistent) }
        counters.add(.cpuFaults)
        let t0 = stamp()
        emit(.cpuFaultBegin, .toRAM, address: fault.address)
        let policy = self.policy
        let window = faultWindow(fault, policy)
        waitForResidency(fault, window, policy)
        let buffers = spareBuffers.take(min(policy.batchPages, Int((window.upperBound - window.lowerBound) >> 12)))
        defer { spareBuffers.give(buffers) }
        let pool = channels(forFault: window, policy)
        var result = VMFaultResult.done
        var moved = 0
        let span = UInt64(min(buffers.capacity, policy.batchPages)) << 12
        let batches = Int((window.upperBound - window.lowerBound + span - 1) / span)
        let faulting = Int((fault.address - window.lowerBound) / span)
        for k in 0..<batches {
            // The faulting batch, then the rest of the window in address order.
            let index = k == 0 ? faulting : (k <= faulting ? k - 1 : k)
            let start = window.lowerBound + UInt64(index) * span
            let end = min(window.upperBound, start + span)
            do {
                let r = try batchToRAM(buffers, fault.vma, start, end, faultPage: fault.page, fault.mm, policy, pool)
                moved += r.moved
                if k == 0, r.faultPageCopyFailed { result = .sigbus }
                if k == 0, r.faultPageWithoutRAM { result = .oom }
            } catch {
                if k == 0 { result = .sigbus }
            }
        }
        if moved > 0, let custom = policy.gpuFault.customPolicy {
            custom.cpuFaultMigratedToRAM(window, pages: moved, addressSpace: ObjectIdentifier(fault.mm))
        }
        emit(.cpuFaultEnd, .toRAM, begin: t0, address: fault.address, pages: moved)
        return result
    }

    /// Migrates this device's pages in `[range)` of `mm` back to RAM (dmirror's
    /// `HMM_DMIRROR_MIGRATE_TO_SYS`). Takes the mmap lock for read. Under `.callbacks2017`,
    /// device-private batches go through `migrateVMA(ops:)` (`legacyBatchToRAM`).
    /// - Throws: `.invalidArgument` for an empty or unaligned range, `.hostMM` when setup refuses a VMA.
    @discardableResult
    public func migrateRangeToRAM(_ mm: AddressSpace, range: Range<UInt64>) throws(DeviceError) -> MigrationResult {
        try Self.checkPageRange(range)
        ungatedMigrations.add(1, ordering: .sequentiallyConsistent)
        defer { ungatedMigrations.subtract(1, ordering: .sequentiallyConsistent) }
        let policy = self.policy
        let buffers = MigrationBuffers(capacity: policy.batchPages)
        var total = MigrationResult()
        mm.mmapLock.readLock()
        defer { mm.mmapLock.readUnlock() }
        try forEachBatch(mm, range, batch: policy.batchPages) { (vma, start, end) throws(DeviceError) in
            let r = try batchToRAM(buffers, vma, start, end, faultPage: nil, mm, policy, channels)
            total.pages += Int((end - start) >> 12)
            total.collected += r.collected
            total.migrated += r.moved
            total.copyFailures += r.failed
            total.batches += r.collected > 0 ? 1 : 0
        }
        return total
    }

    struct ToRAMOutcome {
        var collected = 0
        var moved = 0
        var failed = 0
        /// The faulting page's copy failed, reported by the fence or refused at enqueue
        /// (SIGBUS).
        var faultPageCopyFailed = false
        /// No RAM page could be allocated for the faulting page (OOM).
        var faultPageWithoutRAM = false
    }

    /// One batch back to RAM in the policy's API generation: device-private VRAM under
    /// `.callbacks2017` through `migrateVMA(ops:)` (`legacyBatchToRAM`, nouveau's 2017
    /// fault ops), else the three steps. The caller holds the mmap lock.
    @inline(__always)
    func batchToRAM(_ b: MigrationBuffers, _ vma: VMA, _ start: UInt64, _ end: UInt64, faultPage: PFN?,
                    _ mm: AddressSpace, _ policy: MigrationPolicy,
                    _ pool: ChannelPool) throws(DeviceError) -> ToRAMOutcome {
        if policy.apiGeneration == .callbacks2017 && !isCoherent {
            return try legacyBatchToRAM(b, vma, start, end, faultPage: faultPage, mm, policy, pool)
        }
        return try migrateBatchToRAM(b, vma, start, end, faultPage: faultPage, mm, policy, pool)
    }

    /// One batch back to RAM by the three steps. The caller holds the mmap lock (the fault
    /// path: the faulting thread's). Holes in the window are left alone.
    func migrateBatchToRAM(_ b: MigrationBuffers, _ vma: VMA, _ start: UInt64, _ end: UInt64, faultPage: PFN?,
                           _ mm: AddressSpace, _ policy: MigrationPolicy,
                           _ pool: ChannelPool) throws(DeviceError) -> ToRAMOutcome {
        let batch = nextBatch()
        emit(.setupBegin, .toRAM, batch: batch, address: start)
        let t0 = stamp()   // after the batch's begin: setup nests inside the batch
        // This device's own kind of page (`dmirror_select_device`): coherent VRAM is never
        // faulted on, but `migrateRangeToRAM` must select it.
        var args = MigrateVMA(vma: vma, start: start, end: end, src: b.src, dst: b.dst, pgmapOwner: owner,
                              flags: isCoherent ? .selectDeviceCoherent : .selectDevicePrivate, faultPage: faultPage)
        do { try migrateVMASetup(&args) } catch { throw .hostMM(error) }
        emit(.setupEnd, .toRAM, begin: t0, batch: batch, address: start, pages: args.cpages)
        var out = ToRAMOutcome(collected: args.cpages)
        guard args.cpages > 0 else { return out }
        if let faultPage, keepYoungNeighbours(b.src, args.npages, faultPage: faultPage, policy) == args.cpages {
            // Only young neighbours were collected: every entry is restored.
            let tf = stamp()
            emit(.finalizeBegin, .toRAM, batch: batch, address: start)
            do { try migrateVMAPages(&args) } catch {}
            migrateVMAFinalize(&args)
            emit(.finalizeEnd, .toRAM, begin: tf, batch: batch, address: start, pages: 0)
            return out
        }
        // Looked up once the pages are collected (see `startBatchToDevice`).
        addressSpace(for: mm)?.zapCollected(start, UnsafeBufferPointer(b.src), args.npages)
        let faultIndex = faultPage.flatMap { fp in (0..<args.npages).first { b.src[$0].page == fp } }
        // A fault's batch whose failure below restores only neighbours (the faulting page
        // is in another batch of the window, held by another thread, or gone) fails no
        // access: the access is retried, as after nouveau's `if (!args.cpages) return 0`.
        let neighboursOnly = faultPage != nil && faultIndex == nil
        let fence: Fence, descriptors: Int, withoutRAM: Bool
        do throws(DeviceError) {
            (fence, descriptors, withoutRAM) = try enqueueToRAM(b, &args, pool, faultIndex: faultIndex)
        } catch {
            if neighboursOnly { return out }
            throw error
        }
        if let fi = faultIndex, b.dst[fi].page == nil {
            // No frame left for it (the model's VM_FAULT_OOM), or its copy could not be
            // queued (a dead channel, an unknown region): nouveau's SIGBUS.
            if withoutRAM { out.faultPageWithoutRAM = true } else { out.faultPageCopyFailed = true }
        }
        let signal = observeSignal(fence)
        emit(.copiesSubmitted, .toRAM, batch: batch, seqno: fence.seqno, channel: fence.channelID,
             address: start, pages: descriptors)
        do throws(DeviceError) { try migrateVMAPagesInFlight(&args, b, fence, .toRAM, batch: batch, address: start) } catch {
            if neighboursOnly { return out }
            throw error
        }
        let failures = waitFence(fence, signal, .toRAM, batch, address: start)
        for f in failures {
            // The device page keeps the data: finalize restores its entry and frees the RAM page.
            let i = Int(b.slot[f.index])
            b.src[i].remove(.migrate)
            if i == faultIndex { out.faultPageCopyFailed = true }
        }
        out.failed = failures.count
        counters.add(.pagesLeftAfterCopyFailure, failures.count)
        for i in 0..<args.npages where b.src[i].contains(.migrate) && b.dst[i].page != nil { out.moved += 1 }
        markDeparted(b.src, b.dst, args.npages)
        let tf = stamp()
        emit(.finalizeBegin, .toRAM, batch: batch, seqno: fence.seqno, address: start)
        migrateVMAFinalize(&args)
        emit(.finalizeEnd, .toRAM, begin: tf, batch: batch, seqno: fence.seqno, address: start, pages: out.moved)
        counters.add(.pagesToRAM, out.moved)
        return out
    }

    /// `queueCopiesToRAM` for the three steps: on failure the batch is finalized (every
    /// collected page restored) before the error is thrown.
    private func enqueueToRAM(_ b: MigrationBuffers, _ args: inout MigrateVMA, _ pool: ChannelPool,
                              faultIndex: Int?) throws(DeviceError) -> (Fence, Int, faultPageWithoutRAM: Bool) {
        let src = b.src
        do throws(DeviceError) {
            return try queueCopiesToRAM(b, UnsafeBufferPointer(src), b.dst, args.npages, pool, faultIndex: faultIndex) {
                src[$0].contains(.migrate) && src[$0].page != nil
            }
        } catch {
            migrateVMAFinalize(&args)   // restores every collected page
            throw error
        }
    }

    /// The range a CPU fault brings back, by policy, clamped to the VMA.
    func faultWindow(_ fault: VMFault, _ policy: MigrationPolicy) -> Range<UInt64> {
        let page = fault.address ..< fault.address + 4096
        switch policy.cpuFaultGranularity {
        case .page:
            return page
        case .faultAround(let n):
            return GPUAddressSpace.window(fault.address, pages: n, fault.vma.start, fault.vma.end)
        case .wholeAllocation:
            guard let r = Self.allocationRange(memory.zoneDeviceData(fault.page)), r.contains(fault.address) else { return page }
            return max(r.lowerBound, fault.vma.start) ..< min(r.upperBound, fault.vma.end)
        case .custom(let custom):
            let info = CPUFaultInfo(address: fault.address, vma: fault.vma.start ..< fault.vma.end,
                                    addressSpace: ObjectIdentifier(fault.mm),
                                    allocation: Self.allocationRange(memory.zoneDeviceData(fault.page)),
                                    isWrite: fault.isWrite)
            let r = custom.window(for: info)
            // Page-aligned, inside the VMA, and holding the faulting page; else that page alone.
            let lower = max(r.lowerBound & ~4095, fault.vma.start)
            let roundedUp = r.upperBound > UInt64.max - 4095 ? UInt64.max & ~4095 : (r.upperBound + 4095) & ~4095
            let upper = min(roundedUp, fault.vma.end)
            guard lower <= fault.address, fault.address < upper else { return page }
            return lower ..< upper
        }
    }
}
