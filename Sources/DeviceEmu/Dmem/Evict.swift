import HostMM
import DMAEngine

/// Eviction of VRAM pages by PFN, wherever they are mapped (`nouveau_dmem_evict_chunk`):
/// `migrateDeviceRange` → a locked RAM page and a D2H copy per collected page →
/// `submit()` → `migrateDevicePages` → wait → `migrateDeviceFinalize`. No mmap lock is
/// needed; rmap finds every mapping, and the invalidation it raises (not marked as this
/// device's migration) zaps the device page tables.
extension Device {
    /// Evicts every in-use page of VRAM (`nouveau_dmem_evict_chunk` for every chunk), as
    /// suspend and teardown do, but best effort: a page another migration holds locked (or
    /// a CPU fault references) through a few passes, about 20 ms, is left in VRAM, as is a
    /// pinned one. `minimumResidency` does not apply: young pages go too. With
    /// `policy.pipelineDepth` above 1, that many batches are in flight: the next batch is
    /// collected and its copies submitted while earlier copies run (1, the default, is
    /// nouveau's one batch after another). A page another migration has already moved out
    /// but not yet released is given back, not moved or counted again
    /// (`DepartedPages.swift`). Returns pages evicted.
    @discardableResult
    public func evictAll() -> Int { evictEverything(waitingForOthers: false).evicted }

    /// `evictAll` for suspend and teardown (the device gate closed): while a migration that
    /// passes no device gate is in flight (a CPU fault, `migrateRangeToRAM`, an eviction),
    /// passes that move nothing do not count — teardown waits for it as `memunmap_pages`
    /// waits for the pgmap's references (10 s at most). Pages that stay locked or pinned
    /// through a few passes after that are left in VRAM. `outOfRAM` is true when the last
    /// pass that collected pages left some in VRAM for want of a RAM frame: the kernel's
    /// `evict_chunk` allocates with `__GFP_NOFAIL` and cannot fail, the model returns
    /// instead (every page left stays mapped in VRAM with its data, and a later pass
    /// retries it). A pass that collected nothing — every page left was locked by another
    /// migration just then, or pinned — keeps the verdict before it while RAM is too short
    /// for the pages other migrations hold locked (a concurrent `evictAll`, short of RAM
    /// too, holding the pages at the last pass made suspend and teardown report `.busy`, as
    /// if a page were pinned), and clears it once RAM would hold those: what is left then is
    /// left for a pin, which no RAM would move (RAM short at an earlier pass, then freed or
    /// not, and every page but pinned ones brought home by CPU faults, made suspend report
    /// `.hostMM(.outOfMemory)`).
    @discardableResult
    func evictEverything(waitingForOthers: Bool) -> (evicted: Int, outOfRAM: Bool) {
        let policy = self.policy
        let depth = max(1, policy.pipelineDepth)
        let buffers = (0..<depth).map { _ in MigrationBuffers(capacity: policy.batchPages) }
        var inFlight: [EvictionInFlight] = []   // oldest first, at most `depth`
        inFlight.reserveCapacity(depth)
        var evicted = 0
        var pass = 0
        var waits = 0
        var outOfRAM = false
        while vram.inUsePageCount > 0 && pass < 20 {
            pass += 1
            var progress = 0
            var withoutRAM = 0
            var collected = 0
            for chunk in vram.chunks {
                var first = chunk.pfns.lowerBound
                while first < chunk.pfns.upperBound {
                    let count = min(policy.batchPages, chunk.pfns.upperBound - first)
                    if inFlight.count == depth {
                        let r = finishEviction(inFlight.removeFirst())
                        (progress, withoutRAM) = (progress + r.evicted, withoutRAM + r.withoutRAM)
                    }
                    let free = buffers.first { b in !inFlight.contains { $0.buffers === b } } ?? buffers[0]
                    switch startEviction(free, [(first, count)]) {
                    case .done(let got, let done, let short):
                        (collected, progress, withoutRAM) = (collected + got, progress + done, withoutRAM + short)
                    case .inFlight(let e):
                        collected += e.collected
                        inFlight.append(e)
                    }
                    first = first + count
                }
            }
            while !inFlight.isEmpty {
                let r = finishEviction(inFlight.removeFirst())
                (progress, withoutRAM) = (progress + r.evicted, withoutRAM + r.withoutRAM)
            }
            evicted += progress
            if collected > 0 {
                outOfRAM = withoutRAM > 0
            } else if outOfRAM && memory.freeRAMPageCount >= lockedDevicePageCount() {
                outOfRAM = false
            }
            guard progress == 0 else { continue }
            // Pages collected by a concurrent migration are locked until its finalize: retry
            // later. Nothing of this eviction is in flight here, so any migration counted is
            // another thread's; while one runs, the pass is not spent (a bound remains,
            // against migrations that never stop coming).
            if waitingForOthers && waits < Self.evictionWaitLimit
                && (ungatedMigrations.load(ordering: .sequentiallyConsistent) > 0 || vram.faultsInFlight > 0) {
                waits += 1
                pass -= 1
            }
            MonotonicTime.sleep(nanoseconds: 1_000_000)
        }
        return (evicted, outOfRAM)
    }

    /// Device pages locked right now: after a pass of `evictEverything` that collected
    /// nothing, those another migration holds (pinned pages are not locked). One read of
    /// each page's flags.
    private func lockedDevicePageCount() -> Int {
        var locked = 0
        for chunk in vram.chunks {
            var pfn = chunk.pfns.lowerBound
            while pfn < chunk.pfns.upperBound {
                if memory.isPageLocked(pfn) { locked += 1 }
                pfn = pfn + 1
            }
        }
        return locked
    }

    /// Passes (1 ms each) one `evictAll` waits for other migrations in flight, at most: a
    /// pinned page costs that much only while CPU faults keep coming all along. (A page a
    /// fault holds looks pinned — a reference — so while the pgmaps count a fault in flight,
    /// `DevicePagemap.faultsInFlight`, or a migration runs, the passes are not spent.)
    static let evictionWaitLimit = 10_000

    /// Makes room for `pages` more device pages by evicting cold ones (VRAM pressure).
    ///
    /// With `policy.minimumResidency` (Xe's timeslice), only pages resident at least that
    /// long are victims, so a migration never evicts what was just migrated while older
    /// pages are left. When too few old pages are left, it waits for the next young page
    /// to come of age and tries again (`evictionResidencyWaits` counts each wait), until
    /// every page resident when it started has come of age — one `minimumResidency` at
    /// most. Pages that became resident meanwhile stay protected: what is still short then
    /// stays short, and the batch leaves its remaining pages in RAM (or is refused, all or
    /// nothing), as when every resident page is pinned. The wait is a sleep, holding only
    /// the caller's mmap read lock, like the CPU fault's residency wait.
    func reserveVRAM(pages: Int, policy: MigrationPolicy) {
        let need = min(pages, vram.pageCount)
        guard need > vram.availablePageCount else { return }
        counters.add(.pressureEvictions)
        let residency = MonotonicTime.nanoseconds(policy.minimumResidency)
        guard residency > 0 else {
            evictColdPages(need - vram.availablePageCount, policy)
            return
        }
        let deadline = MonotonicTime.now() &+ residency
        while true {
            let now = MonotonicTime.now()
            evictColdPages(need - vram.availablePageCount, policy) { [self] in !isYoung($0, residency, now: now) }
            guard need > vram.availablePageCount, now < deadline,
                  let next = nextComingOfAge(residency, now: now) else { return }
            counters.add(.evictionResidencyWaits)
            let wake = min(next, deadline)
            let current = MonotonicTime.now()
            if wake > current { MonotonicTime.sleep(nanoseconds: wake - current) }
        }
    }

    /// Evicts up to `count` pages chosen by the eviction policy among those `eligible`
    /// (dense indices); returns pages evicted.
    @discardableResult
    func evictColdPages(_ count: Int, _ policy: MigrationPolicy, eligible: ((Int) -> Bool)? = nil) -> Int {
        guard count > 0 else { return 0 }
        let victims = UnsafeMutableBufferPointer<Int>.allocate(capacity: count)
        defer { victims.deallocate() }
        // A departed page frees no room when collected (it is given back untouched): pass
        // over it as over a young one, so the room asked for is made.
        let asked = eviction.selectVictims(into: victims) { [self] index in
            !hasDeparted(index) && (eligible?(index) ?? true)
        }
        let n = min(max(asked, 0), count)   // a policy of the user's own may answer out of range
        var pfns: [PFN] = []
        pfns.reserveCapacity(n)
        for k in 0..<n { if let pfn = vram.pfn(atIndex: victims[k]) { pfns.append(pfn) } }
        pfns.sort()
        // Contiguous runs, packed into batches of at most `batchPages` entries.
        var groups: [[(PFN, Int)]] = [[]]
        var filled = 0
        var k = 0
        while k < pfns.count {
            var len = 1
            while k + len < pfns.count, pfns[k + len] == pfns[k] + len, filled + len < policy.batchPages { len += 1 }
            if filled + len > policy.batchPages {
                groups.append([])
                filled = 0
            }
            groups[groups.count - 1].append((pfns[k], len))
            filled += len
            k += len
        }
        let buffers = MigrationBuffers(capacity: policy.batchPages)
        return groups.reduce(0) { $0 + ($1.isEmpty ? 0 : evictRuns(buffers, $1).evicted) }
    }

    /// Evicts the pages of `runs` (contiguous PFN runs, at most `batchPages` in all)
    /// in one batch with one fence: `startEviction` then `finishEviction`.
    func evictRuns(_ b: MigrationBuffers, _ runs: [(PFN, Int)]) -> (collected: Int, evicted: Int, withoutRAM: Int) {
        switch startEviction(b, runs) {
        case .done(let collected, let evicted, let withoutRAM): return (collected, evicted, withoutRAM)
        case .inFlight(let e): return finishEviction(e)
        }
    }

    /// An eviction batch whose copies are submitted and whose pages step ran: what
    /// `finishEviction` needs to wait for the copies and finalize.
    struct EvictionInFlight {
        let buffers: MigrationBuffers
        let npages: Int
        let collected: Int
        let fence: Fence?
        let signal: SignalStamp?
        let batch: UInt64
        /// Collected pages no RAM frame was left for (they stay in VRAM).
        let withoutRAM: Int
    }

    enum EvictionStart {
        /// Nothing was collected (or nothing is left to wait for).
        case done(collected: Int, evicted: Int, withoutRAM: Int)
        case inFlight(EvictionInFlight)
    }

    /// The first half of `nouveau_dmem_evict_chunk`: `migrateDeviceRange` over `runs`, a
    /// locked RAM page and a D2H copy per collected page, `submit()`, `migrateDevicePages`.
    func startEviction(_ b: MigrationBuffers, _ runs: [(PFN, Int)]) -> EvictionStart {
        let batch = nextBatch()
        // Counted from before collection locks pages until `finishEviction` unlocks them.
        ungatedMigrations.add(1, ordering: .sequentiallyConsistent)
        emit(.setupBegin, .evict, batch: batch)
        let t0 = stamp()   // after the batch's begin: setup nests inside the batch
        var npages = 0
        for (first, count) in runs {
            let slice = UnsafeMutableBufferPointer(rebasing: b.src[npages ..< npages + count])
            do { try memory.migrateDeviceRange(slice, start: first, npages: count) } catch {
                slice.update(repeating: [])
            }
            npages += count
        }
        for i in 0..<npages { b.dst[i] = [] }
        // A page another migration moved out but still references is not evicted again.
        let departed = dropDeparted(b.src, npages)
        let collected = (0..<npages).reduce(0) { $0 + (b.src[$1].contains(.migrate) ? 1 : 0) }
        emit(.setupEnd, .evict, begin: t0, batch: batch, pages: collected)
        guard collected > 0 else {
            if departed > 0 { memory.migrateDeviceFinalize(src: b.src, dst: b.dst, npages: npages) }   // unlock, put
            ungatedMigrations.subtract(1, ordering: .sequentiallyConsistent)
            return .done(collected: 0, evicted: 0, withoutRAM: 0)
        }

        let (fence, withoutRAM) = enqueueEviction(b, npages, collected: collected)
        let signal = fence.flatMap { observeSignal($0) }
        let seqno = fence?.seqno ?? 0
        if let fence {
            emit(.copiesSubmitted, .evict, batch: batch, seqno: seqno, channel: fence.channelID,
                 pages: committedCount(b, npages))
        }
        let tp = stamp()
        emit(.migratePagesBegin, .evict, batch: batch, seqno: seqno)
        do { try memory.migrateDevicePages(src: b.src, dst: b.dst, npages: npages) } catch {
            for i in 0..<npages { b.src[i].remove(.migrate) }   // finalize restores them all
        }
        emit(.migratePagesEnd, .evict, begin: tp, batch: batch, seqno: seqno, pages: committedCount(b, npages))
        return .inFlight(EvictionInFlight(buffers: b, npages: npages, collected: collected, fence: fence,
                                          signal: signal, batch: batch, withoutRAM: withoutRAM))
    }

    /// The second half: wait for the batch's copies (a failed one leaves its page in
    /// VRAM), then `migrateDeviceFinalize`.
    func finishEviction(_ e: EvictionInFlight) -> (collected: Int, evicted: Int, withoutRAM: Int) {
        let b = e.buffers
        let seqno = e.fence?.seqno ?? 0
        if let fence = e.fence {
            // Even a batch that could not move must not be finalized under a running copy.
            let failures = waitFence(fence, e.signal, .evict, e.batch, address: 0)
            for f in failures { b.src[Int(b.slot[f.index])].remove(.migrate) }
            counters.add(.pagesLeftAfterCopyFailure, failures.count)
        }
        let evicted = committedCount(b, e.npages)
        markDeparted(b.src, b.dst, e.npages)
        let tf = stamp()
        emit(.finalizeBegin, .evict, batch: e.batch, seqno: seqno)
        memory.migrateDeviceFinalize(src: b.src, dst: b.dst, npages: e.npages)
        ungatedMigrations.subtract(1, ordering: .sequentiallyConsistent)
        emit(.finalizeEnd, .evict, begin: tf, batch: e.batch, seqno: seqno, pages: evicted)
        counters.add(.pagesEvicted, evicted)
        return (e.collected, evicted, e.withoutRAM)
    }

    /// A locked RAM page and a D2H copy per collected page, submitted; nil (and no
    /// destinations) when no channel could take them. Also returns how many collected
    /// pages got no RAM frame (RAM exhausted).
    private func enqueueEviction(_ b: MigrationBuffers, _ npages: Int, collected: Int) -> (Fence?, withoutRAM: Int) {
        let got = memory.allocPages(into: UnsafeMutableBufferPointer(rebasing: b.pages[0..<collected]))
        DeviceMemory.ascend(UnsafeMutableBufferPointer(rebasing: b.pages[0..<got]))  // RAM pages in order: iovecs merge
        guard let channel = try? channels.checkout() else {
            for k in 0..<got { memory.putPage(b.pages[k]) }
            return (nil, collected - got)
        }
        var next = 0, descriptors = 0
        for i in 0..<npages where b.src[i].contains(.migrate) {
            guard next < got, let source = b.src[i].page, let from = vram.dmaAddress(of: source) else { continue }
            let ram = b.pages[next]
            next += 1
            memory.lockPage(ram)
            do { try channel.enqueueCopy(from: from, to: ramAddress(ram), length: pageSize) } catch {
                releaseUnused(ram)
                continue
            }
            b.slot[descriptors] = Int32(i)
            descriptors += 1
            b.dst[i] = MigratePFN(pfn: ram)
        }
        for k in next..<got { memory.putPage(b.pages[k]) }
        let fence = try? channel.submit()
        channels.checkin(channel)
        if fence == nil {
            for i in 0..<npages { if let ram = b.dst[i].page { releaseUnused(ram); b.dst[i] = [] } }
        }
        return (fence, collected - got)
    }
}
