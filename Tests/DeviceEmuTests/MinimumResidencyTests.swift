import DMAEngine
import Foundation
import DeviceEmu
import HostMM
import Testing

/// Xe's anti-thrash timeslice (`MigrationPolicy.minimumResidency`) beyond the single-page
/// CPU fault (`MigrateToRAMTests`): eviction under VRAM pressure, fault-around and
/// whole-allocation faults, teardown. Pages are made "old" by sleeping past the
/// residency (a sleep lasts at least as long as asked). "Young" pages must still be young
/// when the access that meets them starts: each scenario checks that less than half a
/// residency has passed since their migration began, and when a slow or loaded machine
/// (Thread Sanitizer, CI) took longer, it is run again with a four times longer residency
/// before it asserts anything (`withResidency`).
/// Assertions are on counters and page placement, never on elapsed time.
@Suite(.timeLimit(.minutes(1))) struct MinimumResidencyTests {
    static let long: Duration = .milliseconds(300)

    /// Runs `scenario` with the residency `long`, then 4× and 16× it, until a run was fast
    /// enough for its own premise: `scenario` returns false, before asserting anything, when
    /// its young pages may have come of age on their own (`stillYoung`).
    static func withResidency(_ scenario: (Duration) throws -> Bool) throws {
        for residency in [long, long * 4, long * 16] {
            if try scenario(residency) { return }
        }
        Issue.record("every run was too slow for its residency (the last one \(long * 16))")
    }

    /// Whether less than half of `residency` has passed since `start`: pages migrated after
    /// it are still young for an access starting now, with half a residency to reach its check.
    static func stillYoung(since start: ContinuousClock.Instant, _ residency: Duration) -> Bool {
        ContinuousClock.now - start < residency / 2
    }

    /// 512 pages of VRAM in 256-page batches.
    static func pressureDevice(_ memory: PhysicalMemory, residency: Duration) throws -> Device {
        var policy = MigrationPolicy()
        policy.batchPages = 256
        policy.minimumResidency = residency
        return try makeDevice(memory, vramMiB: 2, policy: policy)
    }

    /// 8 MiB of VRAM, the given residency, and CPU faults that bring back `cpuFaults`.
    static func residencyDevice(_ memory: PhysicalMemory, residency: Duration,
                                cpuFaults: MigrationPolicy.CPUFaultGranularity) throws -> Device {
        var policy = MigrationPolicy()
        policy.cpuFaultGranularity = cpuFaults
        policy.minimumResidency = residency
        return try makeDevice(memory, vramMiB: 8, policy: policy)
    }

    static func sleep(_ d: Duration) { Thread.sleep(forTimeInterval: Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18) }

    /// A (old, but GPU-accessed last: hottest in the LRU) and B (just migrated, so colder)
    /// fill VRAM; C needs room. Plain LRU would evict B; with the residency, B is too
    /// young and A goes.
    @Test func pressureEvictsOldPagesNotJustMigratedOnes() throws {
        try Self.withResidency { residency in
            let memory = try makeMemory(mib: 64)
            let gpu = try Self.pressureDevice(memory, residency: residency)
            defer { try? gpu.shutdown() }
            let (mm, a, pattern) = try makeProcess(memory, pages: 768, seed: 81)
            let space = try gpu.bind(mm)
            let (regionA, regionB, regionC) = (a, a + 256 * 4096, a + 512 * 4096)
            try gpu.migrateToDevice(mm, range: range(regionA, pages: 256))
            Self.sleep(residency + .milliseconds(20))                               // A comes of age
            let start = ContinuousClock.now
            try gpu.migrateToDevice(mm, range: range(regionB, pages: 256))
            let gpuMismatches = try pattern.gpuMismatches(space, a, pages: 256)      // A is the hottest now
            guard Self.stillYoung(since: start, residency) else { return false }    // B must be young for C
            let migrated = try gpu.migrateToDevice(mm, range: range(regionC, pages: 256)).migrated
            #expect(gpuMismatches.isEmpty)
            #expect(migrated == 256)
            #expect(gpu.residentPages(mm, regionA, pages: 256) == 0)
            #expect(gpu.residentPages(mm, regionB, pages: 256) == 256)
            #expect(gpu.residentPages(mm, regionC, pages: 256) == 256)
            #expect(gpu.counters[.pagesEvicted] == 256 && gpu.counters[.evictionResidencyWaits] == 0)
            #expect(try pattern.cpuMismatches(mm, a, pages: 256).isEmpty)
            #expect(gpu.checkInvariants().isEmpty)
            return true
        }
    }

    /// Only young pages are resident: the eviction waits once, for the oldest batch (A) to
    /// come of age, and evicts it; B, migrated after A, is not evicted.
    @Test func onlyYoungPagesLeftWaitsForTheOldestOnce() throws {
        try Self.withResidency { residency in
            let memory = try makeMemory(mib: 64)
            let gpu = try Self.pressureDevice(memory, residency: residency)
            defer { try? gpu.shutdown() }
            let (mm, a, pattern) = try makeProcess(memory, pages: 768, seed: 82)
            let start = ContinuousClock.now
            try gpu.migrateToDevice(mm, range: range(a, pages: 512))                // A then B, one call
            guard Self.stillYoung(since: start, residency) else { return false }
            let r = try gpu.migrateToDevice(mm, range: range(a + 512 * 4096, pages: 256))
            #expect(r.migrated == 256)
            #expect(gpu.counters[.evictionResidencyWaits] == 1 && gpu.counters[.pagesEvicted] == 256)
            #expect(gpu.residentPages(mm, a, pages: 256) == 0)
            #expect(gpu.residentPages(mm, a + 256 * 4096, pages: 512) == 512)
            #expect(try pattern.cpuMismatches(mm, a, pages: 768).isEmpty)
            return true
        }
    }

    /// Young pages that cannot be evicted (locked elsewhere): the eviction waits for them
    /// to come of age, fails to evict them, and gives up after one residency at most; the
    /// migration returns with what fit (nothing) instead of hanging.
    @Test func youngUnevictablePagesEndTheWaitAndTheBatchFallsShort() throws {
        try Self.withResidency { residency in
            let memory = try makeMemory(mib: 64)
            let gpu = try Self.pressureDevice(memory, residency: residency)
            defer { try? gpu.shutdown() }
            let (mm, a, pattern) = try makeProcess(memory, pages: 768, seed: 83)
            let start = ContinuousClock.now
            try gpu.migrateToDevice(mm, range: range(a, pages: 512))
            let held = (0..<512).map { mm.pageTableEntry(a + UInt64($0 * pageSize)).pfn }
            for page in held { memory.lockPage(page) }
            guard Self.stillYoung(since: start, residency) else {
                for page in held { memory.unlockPage(page) }
                return false
            }
            let r = try gpu.migrateToDevice(mm, range: range(a + 512 * 4096, pages: 256))
            for page in held { memory.unlockPage(page) }
            #expect(r.migrated == 0 && r.collected == 256)
            #expect((1...2).contains(gpu.counters[.evictionResidencyWaits]))
            #expect(gpu.counters[.pagesEvicted] == 0 && gpu.vram.inUsePageCount == 512)
            #expect(entryKinds(mm, a + 512 * 4096, pages: 256) == [.present: 256])
            #expect(try pattern.cpuMismatches(mm, a, pages: 768).isEmpty)
            return true
        }
    }

    /// Suspend and teardown do not wait for pages to age: everything goes at once.
    @Test func evictAllAndSuspendIgnoreTheResidency() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try Self.pressureDevice(memory, residency: .seconds(30))
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 512, seed: 84)
        try gpu.migrateToDevice(mm, range: range(a, pages: 256))
        #expect(gpu.evictAll() == 256)
        try gpu.migrateToDevice(mm, range: range(a + 256 * 4096, pages: 256))
        try gpu.suspend()
        #expect(gpu.vram.inUsePageCount == 0 && gpu.counters[.pagesEvicted] == 512)
        try gpu.resume()
        #expect(gpu.counters[.evictionResidencyWaits] == 0 && gpu.counters[.residencyWaits] == 0)
        #expect(try pattern.cpuMismatches(mm, a, pages: 512).isEmpty)
    }

    /// Fault-around: the faulting page is old (no wait); the window's young half (a later
    /// migration) stays in VRAM, still mapped by the GPU; touching it later waits once and
    /// brings it back.
    @Test func faultAroundLeavesYoungNeighboursInVRAM() throws {
        try Self.withResidency { residency in
            let memory = try makeMemory(mib: 64)
            let gpu = try Self.residencyDevice(memory, residency: residency, cpuFaults: .faultAround(pages: 16))
            defer { try? gpu.shutdown() }
            let (mm, a, pattern) = try makeProcess(memory, pages: 16, seed: 85)
            let space = try gpu.bind(mm)
            try gpu.migrateToDevice(mm, range: range(a, pages: 8))
            Self.sleep(residency + .milliseconds(20))
            let start = ContinuousClock.now
            try gpu.migrateToDevice(mm, range: range(a + 8 * 4096, pages: 8))
            let page3 = try mm.read(at: a + 3 * 4096, count: pageSize)
            let (waits, skipped, toRAM) = (gpu.counters[.residencyWaits], gpu.counters[.youngNeighboursSkipped],
                                           gpu.counters[.pagesToRAM])
            let resident = (gpu.residentPages(mm, a, pages: 8), gpu.residentPages(mm, a + 8 * 4096, pages: 8))
            let gpuMapped = (8..<16).allSatisfy { space.entry(at: a + UInt64($0 * pageSize)).kind == .vram }
            guard Self.stillYoung(since: start, residency) else { return false }  // page 12 must be young still
            let page12 = try mm.read(at: a + 12 * 4096, count: pageSize)
            #expect(page3 == pattern.page(3))
            #expect(waits == 0 && skipped == 8)
            #expect(toRAM == 8)
            #expect(resident.0 == 0 && resident.1 == 8)
            #expect(gpuMapped)
            #expect(page12 == pattern.page(12))
            #expect(gpu.counters[.residencyWaits] == 1 && gpu.counters[.youngNeighboursSkipped] == 8)
            #expect(gpu.vram.inUsePageCount == 0 && gpu.counters[.cpuFaults] == 2)
            #expect(try pattern.cpuMismatches(mm, a, pages: 16).isEmpty)
            return true
        }
    }

    /// Fault-around on a young page: the fault waits for it, and the neighbours migrated
    /// with it come back with it.
    @Test func faultAroundWaitsForTheFaultingPageAndTakesItsBatch() throws {
        try Self.withResidency { residency in
            let memory = try makeMemory(mib: 64)
            let gpu = try Self.residencyDevice(memory, residency: residency, cpuFaults: .faultAround(pages: 16))
            defer { try? gpu.shutdown() }
            let (mm, a, pattern) = try makeProcess(memory, pages: 16, seed: 86)
            let start = ContinuousClock.now
            try gpu.migrateToDevice(mm, range: range(a, pages: 16))
            guard Self.stillYoung(since: start, residency) else { return false }
            #expect(try mm.read(at: a + 5 * 4096, count: pageSize) == pattern.page(5))
            #expect(gpu.counters[.residencyWaits] == 1 && gpu.counters[.youngNeighboursSkipped] == 0)
            #expect(gpu.counters[.pagesToRAM] == 16 && gpu.vram.inUsePageCount == 0)
            #expect(try pattern.cpuMismatches(mm, a, pages: 16).isEmpty)
            return true
        }
    }

    /// Whole allocation: the fault on an old page of an allocation whose second half was
    /// migrated again since (young) waits for that youngest page, then moves it all — the
    /// allocation is not split.
    @Test func wholeAllocationWaitsForItsYoungestPage() throws {
        try Self.withResidency { residency in
            let memory = try makeMemory(mib: 64)
            let gpu = try Self.residencyDevice(memory, residency: residency, cpuFaults: .wholeAllocation)
            defer { try? gpu.shutdown() }
            let (mm, a, pattern) = try makeProcess(memory, pages: 64, seed: 87)
            try gpu.migrateToDevice(mm, range: range(a, pages: 64))
            Self.sleep(residency + .milliseconds(20))
            let secondHalf = range(a + 32 * 4096, pages: 32)
            let toRAM = try gpu.migrateRangeToRAM(mm, range: secondHalf).migrated
            let start = ContinuousClock.now
            let toDevice = try gpu.migrateToDevice(mm, range: secondHalf).migrated
            guard Self.stillYoung(since: start, residency) else { return false }
            #expect(toRAM == 32 && toDevice == 32)
            #expect(try mm.read(at: a, count: pageSize) == pattern.page(0))          // page 0 is old
            #expect(gpu.counters[.residencyWaits] == 1 && gpu.counters[.youngNeighboursSkipped] == 0)
            #expect(gpu.counters[.cpuFaults] == 1 && gpu.counters[.pagesToRAM] == 32 + 64)
            #expect(gpu.vram.inUsePageCount == 0)
            #expect(try pattern.cpuMismatches(mm, a, pages: 64).isEmpty)
            return true
        }
    }
}
