import DMAEngine
import HostMM

/// Xe's anti-thrash "timeslice" (`MigrationPolicy.minimumResidency`; drm_gpusvm's
/// `timeslice_ms`): a page migrated to VRAM is left there for a minimum time before the
/// driver moves it out again.
///
/// Who honours it, and how:
/// - a CPU fault on a young page waits until the page has been resident that long
///   (`waitForResidency`, counted in `residencyWaits`);
/// - a fault-around window (`.faultAround`, and a `.custom` policy's window) waits for
///   the faulting page only; its other pages still young after that wait stay in VRAM,
///   mapped by the GPU (`youngNeighboursSkipped`): the CPU did not ask for them, the GPU
///   may still be using them, and each waits out its own timeslice when the CPU touches it;
/// - a whole-allocation fault (`.wholeAllocation`) waits until the youngest page of the
///   allocation has come of age, then moves it all: the allocation is the unit, as Xe's
///   timeslice is per range (its pages carry the stamps of their own batches, or of a
///   later migration of part of it; skipping the younger ones would split it);
/// - eviction under VRAM pressure takes only pages that have been resident that long, and
///   waits (bounded) when only young ones are left (`Evict.swift`, `evictionResidencyWaits`);
/// - `migrateRangeToRAM` (an explicit request), `evictAll` (suspend, teardown) and
///   unmapping ignore it: they empty VRAM at once.
///
/// The clock is `Device.residentSince`, one atomic per device page, stamped when a batch is
/// finalized into VRAM and cleared when the page is freed; 0 means "no residency": a page
/// without a stamp is never young.
///
/// Threads: any; relaxed atomics only (a stale stamp only shifts a wait).
extension Device {
    /// The page's timeslice expiry (drm_gpusvm's `timeslice_expiration`): when device page
    /// `index` will have been resident `residency` ns (monotonic), or 0 if it has no stamp.
    @inline(__always)
    func residencyEnd(_ index: Int, _ residency: UInt64) -> UInt64 {
        let since = residentSince[index].load(ordering: .relaxed)
        return since == 0 ? 0 : since &+ residency
    }

    /// Whether device page `index` became resident less than `residency` ns before `now`.
    @inline(__always)
    func isYoung(_ index: Int, _ residency: UInt64, now: UInt64) -> Bool {
        residencyEnd(index, residency) > now
    }

    /// Xe's timeslice on a CPU fault: waits until the faulting page has been resident
    /// `minimumResidency` — or, with `.wholeAllocation` granularity, until every page of
    /// this device in `window` has (the allocation moves as a unit, as Xe's per-range
    /// timeslice has it). At most one `minimumResidency`: every stamp is in the past.
    func waitForResidency(_ fault: VMFault, _ window: Range<UInt64>, _ policy: MigrationPolicy) {
        guard policy.minimumResidency > .zero, let index = vram.pageIndex(of: fault.page) else { return }
        let residency = MonotonicTime.nanoseconds(policy.minimumResidency)
        var until = residencyEnd(index, residency)
        if policy.cpuFaultGranularity == .wholeAllocation {
            // The caller (the faulting thread) holds the mmap lock: a `ptep_get` walk.
            var address = window.lowerBound
            while address < window.upperBound {
                let pte = fault.mm.pageTableEntry(address)
                if pte.kind == .devicePrivate, let i = vram.pageIndex(of: pte.pfn) {
                    until = max(until, residencyEnd(i, residency))
                }
                address += 4096
            }
        }
        let now = MonotonicTime.now()
        guard until > now else { return }
        counters.add(.residencyWaits)
        MonotonicTime.sleep(nanoseconds: min(until - now, residency))
    }

    /// Fault-around under the timeslice: clears MIGRATE on the pages a CPU fault's window
    /// collected, other than the faulting page, that are still younger than
    /// `minimumResidency` — finalize restores their entries, so they stay in VRAM, mapped
    /// by the GPU. Called after the faulting page's own wait, so neighbours migrated with it
    /// come back with it. Returns how many stay.
    func keepYoungNeighbours(_ src: UnsafeMutableBufferPointer<MigratePFN>, _ npages: Int, faultPage: PFN,
                             _ policy: MigrationPolicy) -> Int {
        guard policy.minimumResidency > .zero else { return 0 }
        let residency = MonotonicTime.nanoseconds(policy.minimumResidency)
        let now = MonotonicTime.now()
        var kept = 0
        for i in 0..<npages where src[i].contains(.migrate) {
            guard let page = src[i].page, isYoungNeighbour(page, faultPage: faultPage, residency, now: now) else { continue }
            src[i].remove(.migrate)
            kept += 1
        }
        counters.add(.youngNeighboursSkipped, kept)
        return kept
    }

    /// Whether `page`, collected by a CPU fault on `faultPage`, is a neighbour of this
    /// device still younger than `residency` (ns) at `now`: fault-around leaves it in VRAM.
    @inline(__always)
    func isYoungNeighbour(_ page: PFN, faultPage: PFN, _ residency: UInt64, now: UInt64) -> Bool {
        guard page != faultPage, let index = vram.pageIndex(of: page) else { return false }
        return isYoung(index, residency, now: now)
    }

    /// The earliest time (monotonic ns) at which a page that is young at `now` comes of
    /// age, or nil when no page is young. Scans every page's stamp: eviction's cold path only.
    func nextComingOfAge(_ residency: UInt64, now: UInt64) -> UInt64? {
        var earliest = UInt64.max
        for index in 0..<vram.pageCount {
            let end = residencyEnd(index, residency)
            if end > now && end < earliest { earliest = end }
        }
        return earliest == .max ? nil : earliest
    }
}
