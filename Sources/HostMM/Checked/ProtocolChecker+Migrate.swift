/// Checked mode's checks of the three migration steps (`migrate_vma_setup` /
/// `migrate_device_range` → driver copies → `…_pages` → fence → `…_finalize`).
///
/// Each check runs before its step changes anything, so that in throwing mode the step
/// can refuse; in recording mode the step goes on, made safe where the violation would
/// corrupt state (a step out of order is skipped, a duplicate destination is dropped,
/// finalize without the pages step restores the sources).
///
/// Threads: the migrating thread (the one that owns the arrays).
extension ProtocolChecker {
    typealias Entries = UnsafeMutableBufferPointer<MigratePFN>
    typealias Session = MigrationSessions.Session

    /// What a pages step or finalize should do after its checks.
    struct StepPlan {
        /// False: skip the step (out of order); the violation was reported.
        var run: Bool
        /// Entries to process (setup's count when the caller's was wrong).
        var npages: Int
        /// The sessions the arrays cover.
        var sessions: [Session]

        /// `npages` bounded by the arrays: what the checks may index.
        func count(_ src: Entries, _ dst: Entries) -> Int { max(0, min(npages, src.count, dst.count)) }

        /// The session whose entries include `src[i]`.
        func session(at i: Int, _ src: Entries) -> Session? {
            let base = UInt(bitPattern: src.baseAddress!)
            return sessions.first { s in
                let off = s.offset(in: base)
                return i >= off && i < off + s.count
            }
        }
    }

    private static let stride = MemoryLayout<MigratePFN>.stride

    // MARK: Setup

    /// Before setup changes anything: is a migration still in progress on these arrays?
    /// Recording mode finalizes it first (`finishAbandoned`); `dst` is the new setup's
    /// destination array (nil on the PFN path, which has none).
    func willSetup(_ memory: PhysicalMemory, _ src: Entries, _ dst: Entries?, count: Int,
                   site: CallSite) throws(HostMMError) {
        guard let p = src.baseAddress else { return }
        let base = UInt(bitPattern: p)
        let (live, _) = sessions.find(base, base + UInt(max(count, 1) * Self.stride))
        let abandoned = live.filter { $0.collected > 0 }
        guard let old = abandoned.first else { return }
        let v = report(.setupBeforeFinalize, pfn: nil, address: old.start, site: site,
                       "setup on arrays whose migration of \(old.collected) pages (set up at \(old.site)) was never finalized; finalized now")
        if mode.throwsViolations { throw .protocolViolation(v) }
        for s in abandoned { finishAbandoned(memory, s, src, dst, site) }
    }

    /// Recording mode: finalizes a migration whose arrays a new setup is about to reuse, so
    /// that its pages are not left locked behind migration entries for ever. Its sources are
    /// restored unless the pages step ran; `dst` entries still allocated and locked are
    /// finalized with it (used or released), others are left alone. A migration whose
    /// entries reach past `src` is left as it is (its entries cannot be read safely).
    ///
    /// The PFN path's setup has no `dst`: the destinations are those the pages step accepted.
    /// The driver's `dst` array, which that setup does not clear, still names them; they are
    /// noted so that the new migration's pages step and finalize drop those stale entries
    /// (`dropRecoveredDestinations`) instead of releasing the pages a second time.
    private func finishAbandoned(_ memory: PhysicalMemory, _ s: Session, _ src: Entries, _ dst: Entries?,
                                 _ site: CallSite) {
        let off = s.offset(in: UInt(bitPattern: src.baseAddress!))
        guard off >= 0, off + s.count <= src.count else { return }
        let old = Entries(rebasing: src[off ..< off + s.count])
        let recorded = dst == nil ? s.pagesStepDestinations : []
        withUnsafeTemporaryAllocation(of: MigratePFN.self, capacity: s.count) { targets in
            targets.initialize(repeating: [])
            func usable(_ page: PFN) -> Bool {
                memory.isValid(page) && memory.refcount(page) > 0 && memory.isPageLocked(page)
            }
            for i in 0..<s.count {
                guard let dst, off + i < dst.count, let page = dst[off + i].page, usable(page) else { continue }
                targets[i] = dst[off + i]
            }
            var finalized: [(index: Int, page: PFN)] = []
            for (i, entry) in recorded where Int(i) < s.count {
                guard let page = entry.page, usable(page) else { continue }
                targets[Int(i)] = entry
                finalized.append((off + Int(i), page))
            }
            if dst == nil { sessions.noteRecovered(UInt(bitPattern: src.baseAddress!), finalized) }
            if s.phase == .setUp {
                for i in 0..<s.count { old[i].remove(.migrate) }
            }
            // Closed first, as `willFinalize` does: the destinations finalize frees are the
            // driver's again at once, and no longer this migration's.
            sessions.close([s])
            memory.migrateDeviceFinalizeCore(old, targets, s.count, site: site)
        }
    }

    /// After setup: opens the session and takes the checksum of every collected source page
    /// with CPU-visible bytes (RAM, device-coherent).
    func didSetup(_ memory: PhysicalMemory, _ src: Entries, npages: Int, collected: Int, start: UInt64?, site: CallSite) {
        guard let p = src.baseAddress else { return }
        let session = Session(base: UInt(bitPattern: p), count: npages, collected: collected, start: start, site: site)
        if collected > 0 {
            for i in 0..<npages where src[i].contains(.migrate) {
                guard let page = src[i].page, let bytes = memory.bytes(page) else { continue }
                session.checksums.append((Int32(i), page, pageChecksum(bytes)))
            }
        }
        _ = sessions.open(session)
    }

    // MARK: Pages

    /// Before the pages step: order, arrays, source contents, destinations.
    func willRunPages(_ memory: PhysicalMemory, _ src: Entries, _ dst: Entries, npages: Int, exact: Bool,
                      site: CallSite) throws(HostMMError) -> StepPlan {
        var found: [ProtocolViolation] = []
        var plan = locate(src, dst, npages, exact: exact, twice: .pagesTwice, without: .pagesWithoutSetup, site, &found)
        // Whatever the plan (the pages step validates dst), over every entry it may process.
        dropRecoveredDestinations(memory, src, dst, plan.run ? max(npages, plan.npages) : npages, finalize: false)
        if plan.run, let done = plan.sessions.first(where: { $0.phase != .setUp }) {
            found.append(report(.pagesTwice, pfn: nil, address: done.start, site: site,
                                "the pages step already ran on the migration set up at \(done.site); skipped"))
            plan.run = false
        }
        var fatal = false
        if plan.run {
            checkSources(memory, plan, src, site, &found)
            fatal = checkDestinations(memory, plan, src, dst, site, &found)
            if !fatal { checkCPUVisibleHoles(memory, plan, src, dst, site, &found) }
        }
        if fatal || (mode.throwsViolations && !found.isEmpty) { sessions.releaseDestinations(plan.sessions) }
        if mode.throwsViolations, let first = found.first { throw .protocolViolation(first) }
        if plan.run && !fatal {
            sessions.mark(plan.sessions, .pagesDone)
            recordPagesStepDestinations(plan, src, dst)
        }
        return plan
    }

    /// Keeps, per session, the destinations its pages step accepted (for `finishAbandoned`).
    private func recordPagesStepDestinations(_ plan: StepPlan, _ src: Entries, _ dst: Entries) {
        let base = UInt(bitPattern: src.baseAddress!), n = plan.count(src, dst)
        for s in plan.sessions {
            let off = s.offset(in: base)
            let lo = max(off, 0), hi = min(off + s.count, n)
            var entries: [(index: Int32, entry: MigratePFN)] = []
            for i in lo ..< max(lo, hi) where dst[i].page != nil && src[i].contains(.migrate) {
                entries.append((Int32(i - off), dst[i]))
            }
            sessions.setPagesStepDestinations(s, entries)
        }
    }

    /// Drops `dst` entries that still name a destination recording mode already finalized
    /// (`finishAbandoned` on the PFN path): the driver's stale copy of the abandoned
    /// migration's array, which finalize would otherwise release again.
    ///
    /// Each entry is judged once, with the `src` the driver allocated against: before the
    /// pages step (over every entry it processes), an entry whose `src` does not migrate is
    /// stale (dropped), one whose `src` migrates onto a locked page is the driver's new
    /// choice (a freed page comes back from the allocator at once) and is kept — both are
    /// then forgotten, since the pages step may clear `MIGRATE` on a page that stays, and
    /// finalize must release that new destination. Only an unlocked one (no valid
    /// destination: stale, or a driver's mistake the pages step reports) waits for
    /// finalize, as does every entry when no pages step ran; finalize drops those that do
    /// not migrate, locked or not: a stale page may be locked by whoever uses it now, and
    /// releasing it would unlock that user's page and drop a reference it does not own.
    /// Finalize (`finalize`) forgets the record.
    private func dropRecoveredDestinations(_ memory: PhysicalMemory, _ src: Entries, _ dst: Entries, _ count: Int,
                                           finalize: Bool) {
        guard let p = src.baseAddress else { return }
        let base = UInt(bitPattern: p)
        let n = max(0, min(count, src.count, dst.count))
        let recorded = sessions.recovered(base, take: finalize)
        guard !recorded.isEmpty else { return }
        var undecided: [(index: Int, page: PFN)] = []
        for (i, page) in recorded {
            guard i < n, dst[i].page == page else {
                if i >= n { undecided.append((i, page)) }   // beyond this call: not judged yet
                continue
            }
            if !src[i].contains(.migrate) {
                dst[i] = []
            } else if !finalize && !memory.isPageLocked(page) {
                undecided.append((i, page))
            }
        }
        if !finalize { sessions.noteRecovered(base, undecided) }
    }

    /// Holes whose destination the pages step maps present for the CPU (anything but
    /// device-private memory) must have no copy into it in flight.
    private func checkCPUVisibleHoles(_ memory: PhysicalMemory, _ plan: StepPlan, _ src: Entries, _ dst: Entries,
                                      _ site: CallSite, _ found: inout [ProtocolViolation]) {
        let set = currentOracles
        guard !set.copy.isEmpty else { return }
        for i in 0..<plan.count(src, dst) where src[i].page == nil && src[i].contains(.migrate) {
            guard let d = dst[i].page, memory.isKnownPFN(d), memory.zone(d) != .devicePrivate,
                  copiesInFlight(d, set).contains(.into) else { continue }
            found.append(report(.holeMappedWithCopyInFlight, pfn: d, address: address(plan, src, i, memory), site: site,
                                "dst[\(i)] fills a hole with a CPU-reachable page the CPU can read as soon as the pages step maps it, but a copy into it has not completed"))
        }
    }

    /// Finds the sessions `src` covers and the entry count to use; reports steps on arrays
    /// that were never set up or are already finalized, and arrays of the wrong extent.
    private func locate(_ src: Entries, _ dst: Entries, _ npages: Int, exact: Bool, twice: ProtocolRule,
                        without: ProtocolRule, _ site: CallSite, _ found: inout [ProtocolViolation]) -> StepPlan {
        guard let p = src.baseAddress, npages >= 0 else { return StepPlan(run: true, npages: npages, sessions: []) }
        let base = UInt(bitPattern: p)
        let extent = max(min(npages, src.count), 1)   // never past the buffer, whatever npages says
        // Without a migration in progress, entries still marked MIGRATE are either left
        // over from a finalized one or never came from a setup: the step must not touch
        // them. Arrays with none (a step after a setup that failed or collected nothing)
        // are a no-op, as in the kernel; only the error path looks at finished sessions.
        let armed = (0..<min(npages, src.count)).contains { src[$0].contains(.migrate) }
        let (live, finished) = sessions.find(base, base + UInt(extent * Self.stride), finished: armed)
        guard let first = live.first else {
            guard armed else { return StepPlan(run: true, npages: npages, sessions: []) }
            if let old = finished.first(where: { $0.collected > 0 }) {
                found.append(report(twice, pfn: nil, address: old.start, site: site,
                                    "the migration set up at \(old.site) was already finalized; skipped"))
            } else {
                found.append(report(without, pfn: nil, address: nil, site: site,
                                    "no setup prepared these arrays (\(npages) entries); skipped"))
            }
            return StepPlan(run: false, npages: 0, sessions: [])
        }
        var n = npages
        let needed = Int((live.map(\.end).max()! - base)) / Self.stride
        if first.base < base {
            found.append(report(.wrongArrayLength, pfn: nil, address: first.start, site: site,
                                "src starts inside the arrays set up at \(first.site)"))
        } else if exact && live.count == 1 && first.base == base && npages != first.count {
            found.append(report(.wrongArrayLength, pfn: nil, address: first.start, site: site,
                                "npages is \(npages) but setup (\(first.site)) filled \(first.count) entries; using \(first.count)"))
            n = first.count
        } else if needed > npages {
            found.append(report(.wrongArrayLength, pfn: nil, address: first.start, site: site,
                                "npages is \(npages) but the arrays set up (\(first.site)) hold \(needed) entries; using \(needed)"))
            n = needed
        }
        if src.count < n || dst.count < n {
            found.append(report(.wrongArrayLength, pfn: nil, address: first.start, site: site,
                                "src has \(src.count) and dst \(dst.count) entries, fewer than the \(n) set up"))
            n = min(n, src.count, dst.count)
        }
        return StepPlan(run: true, npages: n, sessions: live)
    }

    /// Compares each still-migrating source page with its checksum at setup; a page is
    /// reported once (its checksum is dropped after a mismatch).
    private func checkSources(_ memory: PhysicalMemory, _ plan: StepPlan, _ src: Entries, _ site: CallSite,
                              _ found: inout [ProtocolViolation]) {
        let base = UInt(bitPattern: src.baseAddress!)
        for s in plan.sessions where !s.checksums.isEmpty {
            let off = s.offset(in: base)
            s.checksums.removeAll { c in
                let i = off + Int(c.index)
                guard i >= 0, i < min(plan.npages, src.count), src[i].contains(.migrate), src[i].page == c.pfn,
                      let bytes = memory.bytes(c.pfn) else { return true }
                if pageChecksum(bytes) == c.sum { return false }
                let va = s.start.map { $0 + UInt64(c.index) << pageShift } ?? memory.virtualAddress(of: c.pfn)
                found.append(report(.sourceModifiedAfterSetup, pfn: c.pfn, address: va, site: site,
                                    "the source page's bytes changed after setup (\(s.site)); it is locked and unmapped, so the copy may hold old or new data"))
                return true
            }
        }
    }

    /// Checks every `dst` entry; returns true when the pages step will refuse the arrays
    /// (`.invalidArgument`: an unlocked or free destination).
    private func checkDestinations(_ memory: PhysicalMemory, _ plan: StepPlan, _ src: Entries, _ dst: Entries,
                                   _ site: CallSite, _ found: inout [ProtocolViolation]) -> Bool {
        var fatal = false
        var seen = Set<PFN>()
        var claims: [(index: Int, page: PFN, session: Session)] = []
        for i in 0..<plan.count(src, dst) {
            guard let page = dst[i].page else { continue }
            let va = address(plan, src, i, memory)
            guard memory.isValid(page), memory.refcount(page) > 0 else {
                found.append(report(.destinationNotAllocated, pfn: page, address: va, site: site,
                                    "dst[\(i)] names a page that is not allocated memory"))
                fatal = true
                continue
            }
            if !memory.isPageLocked(page) {
                found.append(report(.destinationNotLocked, pfn: page, address: va, site: site,
                                    "dst[\(i)] is not locked (lock it, or take it from zone_device_page_init)"))
                fatal = true
            }
            if !src[i].contains(.migrate) {
                found.append(report(.destinationWithoutMigrate, pfn: page, address: va, site: site,
                                    "dst[\(i)] is set but src[\(i)] has no MIGRATE_PFN_MIGRATE; finalize will free it"))
            }
            if !seen.insert(page).inserted {
                found.append(report(.destinationSetTwice, pfn: page, address: va, site: site,
                                    "dst[\(i)] repeats a destination of an earlier entry; the repeat is dropped"))
                dst[i] = []
            } else if let own = plan.session(at: i, src) {
                claims.append((i, page, own))
            }
        }
        // Pages another migration in progress already has (the driver's allocator handed one out twice).
        for (i, other) in sessions.claimDestinations(claims) {
            guard let page = dst[i].page else { continue }
            found.append(report(.destinationSetTwice, pfn: page, address: address(plan, src, i, memory), site: site,
                                "dst[\(i)] is already a destination of the migration set up at \(other.site), still in progress; the repeat is dropped"))
            dst[i] = []
        }
        return fatal
    }

    /// The virtual address of entry `i`: from the session on the address path, by rmap on the PFN path.
    private func address(_ plan: StepPlan, _ src: Entries, _ i: Int, _ memory: PhysicalMemory) -> UInt64? {
        let base = UInt(bitPattern: src.baseAddress!)
        for s in plan.sessions {
            let off = s.offset(in: base)
            guard i >= off, i < off + s.count else { continue }
            if let start = s.start { return start + UInt64(i - off) << pageShift }
        }
        return src[i].page.flatMap { memory.virtualAddress(of: $0) }
    }

    // MARK: Finalize

    /// Before finalize: order, arrays, copies still in flight, device mappings of pages
    /// that moved, source contents. Closes the sessions.
    func willFinalize(_ memory: PhysicalMemory, _ src: Entries, _ dst: Entries, npages: Int, exact: Bool,
                      site: CallSite) -> StepPlan {
        dropRecoveredDestinations(memory, src, dst, npages, finalize: true)    // whatever the plan: finalize releases dst
        var found: [ProtocolViolation] = []
        let plan = locate(src, dst, npages, exact: exact, twice: .finalizeTwice, without: .finalizeWithoutSetup,
                          site, &found)
        guard plan.run, !plan.sessions.isEmpty else { return plan }
        restoreWithoutPages(plan, src, dst, site)
        checkCopiesAndMappings(memory, plan, src, dst, site)
        checkSources(memory, plan, src, site, &found)
        sessions.close(plan.sessions)
        return plan
    }

    /// Sessions finalized without the pages step but with destinations set: their
    /// sources are restored (`.migrate` removed), so finalize frees the destinations
    /// instead of mapping pages whose `struct page` state never moved.
    private func restoreWithoutPages(_ plan: StepPlan, _ src: Entries, _ dst: Entries, _ site: CallSite) {
        let base = UInt(bitPattern: src.baseAddress!)
        for s in plan.sessions where s.phase == .setUp {
            let off = s.offset(in: base)
            let lo = max(off, 0), hi = min(off + s.count, plan.count(src, dst))
            var restored = 0
            for i in lo ..< max(lo, hi) where dst[i].page != nil && src[i].contains(.migrate) {
                src[i].remove(.migrate)
                restored += 1
            }
            if restored > 0 {
                report(.finalizeWithoutPages, pfn: nil, address: s.start, site: site,
                       "\(restored) destinations were set but the pages step never ran (setup at \(s.site)); sources restored")
            }
        }
    }

    private func checkCopiesAndMappings(_ memory: PhysicalMemory, _ plan: StepPlan, _ src: Entries, _ dst: Entries,
                                        _ site: CallSite) {
        let set = currentOracles
        guard !set.isEmpty else { return }
        for i in 0..<plan.count(src, dst) {
            let target = dst[i].page.flatMap { memory.isKnownPFN($0) ? $0 : nil }
            if let d = target {
                let dir = copiesInFlight(d, set)
                if !dir.isEmpty {
                    report(.finalizeWithCopyInFlight, pfn: d, address: address(plan, src, i, memory), site: site,
                           "a copy \(Self.words(dir)) destination dst[\(i)] has not completed (its fence has not signalled)")
                }
            }
            guard let s = src[i].page, memory.isKnownPFN(s) else { continue }
            let dir = copiesInFlight(s, set)
            if !dir.isEmpty {
                report(.finalizeWithCopyInFlight, pfn: s, address: address(plan, src, i, memory), site: site,
                       "a copy \(Self.words(dir)) source src[\(i)] has not completed (its fence has not signalled)")
            }
            if src[i].contains(.migrate), target != nil, let va = deviceMapping(s, set) {
                report(.devicePTEMapsMigratedPage, pfn: s, address: va, site: site,
                       "src[\(i)] moved to a new page but a device page-table entry at va:0x\(String(va, radix: 16)) still maps the old one")
                noteMappingReported(s)
            }
        }
    }

    private static func words(_ dir: CopyDirections) -> String {
        switch (dir.contains(.into), dir.contains(.outOf)) {
        case (true, true): return "into and out of"
        case (true, false): return "into"
        default: return "out of"
        }
    }
}

extension PhysicalMemory {
    /// A virtual address where `pfn` is (or was last) mapped, found by rmap; nil for
    /// pages without a mapping. For reports only (takes the mapping root's lock).
    func virtualAddress(of pfn: PFN) -> UInt64? {
        guard isKnownPFN(pfn) else { return nil }
        var cache = RootCache()
        var found: UInt64?
        rmapWalk(pfn, cache: &cache) { _, address in
            found = address
            return false
        }
        return found
    }
}
