import DMAEngine
import DeviceEmu
import Glibc
import HostMM
import NIOConcurrencyHelpers
import Synchronization
import Testing

@Suite struct EvictionTests {
    /// 16 MiB through 4 MiB of VRAM: each migration evicts the coldest pages; all data survives.
    @Test func vramExhaustionEvictsColdPagesAndKeepsTheData() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 4)
        defer { try? gpu.shutdown() }
        let pages = 4096
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 51)
        let space = try gpu.bind(mm)
        for part in 0..<4 {
            let r = try gpu.migrateToDevice(mm, range: range(a + UInt64(part * 1024 * pageSize), pages: 1024))
            #expect(r.migrated == 1024)
        }
        #expect(gpu.counters[.pressureEvictions] >= 3 && gpu.counters[.pagesEvicted] == 3072)
        #expect(gpu.vram.inUsePageCount == 1024)
        // LRU: the last quarter is resident, the first three are back in RAM.
        #expect(gpu.residentPages(mm, a + 3 * 1024 * 4096, pages: 1024) == 1024)
        #expect(entryKinds(mm, a, pages: 3072) == [.present: 3072])
        #expect(try pattern.gpuMismatches(space, a, first: 3072, pages: 1024).isEmpty)
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
    }

    @Test func oneMigrationLargerThanVRAMEndsWithTheTailResident() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 2)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 2048, seed: 52)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 2048))
        #expect(r.migrated == 2048)
        #expect(gpu.residentPages(mm, a + 1536 * 4096, pages: 512) == 512)
        #expect(try pattern.cpuMismatches(mm, a, pages: 2048).isEmpty)
    }

    @Test func gpuAccessesKeepPagesHot() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 256
        let gpu = try makeDevice(memory, vramMiB: 2, policy: policy)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 768, seed: 53)
        let space = try gpu.bind(mm)
        try gpu.migrateToDevice(mm, range: range(a, pages: 256))                 // A
        try gpu.migrateToDevice(mm, range: range(a + 256 * 4096, pages: 256))    // B
        #expect(try pattern.gpuMismatches(space, a, pages: 256).isEmpty)        // A is hot again
        try gpu.migrateToDevice(mm, range: range(a + 512 * 4096, pages: 256))    // C evicts B, not A
        #expect(gpu.residentPages(mm, a, pages: 256) == 256)
        #expect(gpu.residentPages(mm, a + 256 * 4096, pages: 256) == 0)
        #expect(try pattern.cpuMismatches(mm, a, pages: 768).isEmpty)
    }

    @Test func fifoIgnoresAccesses() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 256
        let gpu = try makeDevice(memory, vramMiB: 2, policy: policy, eviction: .firstInFirstOut)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 768 * pageSize)
        try PagePattern(seed: 54).fill(mm, a, pages: 768)
        let space = try gpu.bind(mm)
        try gpu.migrateToDevice(mm, range: range(a, pages: 256))
        try gpu.migrateToDevice(mm, range: range(a + 256 * 4096, pages: 256))
        _ = try space.read(at: a, count: 256 * pageSize)
        try gpu.migrateToDevice(mm, range: range(a + 512 * 4096, pages: 256))
        #expect(gpu.residentPages(mm, a, pages: 256) == 0)
        #expect(gpu.residentPages(mm, a + 256 * 4096, pages: 256) == 256)
    }

    /// A page freed (here brought home by a CPU fault) leaves the eviction list: still
    /// listed, it would be offered as a victim by the next pressure eviction, which would
    /// then evict one page fewer than the migration needs and leave one of its pages in RAM.
    @Test func aFreedPageIsNoLongerOfferedAsAVictim() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 256
        let gpu = try makeDevice(memory, vramMiB: 2, policy: policy)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 768, seed: 55)
        try gpu.migrateToDevice(mm, range: range(a, pages: 256))                 // A, the coldest
        try gpu.migrateToDevice(mm, range: range(a + 256 * 4096, pages: 256))    // B: VRAM full
        _ = try mm.read(at: a, count: 1)                                         // A's first page comes home
        #expect(gpu.vram.inUsePageCount == 511)
        let r = try gpu.migrateToDevice(mm, range: range(a + 512 * 4096, pages: 256))
        #expect(r.migrated == 256)
        #expect(gpu.counters[.pagesEvicted] == 255)
        #expect(gpu.residentPages(mm, a + 512 * 4096, pages: 256) == 256)
        #expect(try pattern.cpuMismatches(mm, a, pages: 768).isEmpty)
    }

    /// Teardown-style eviction with batches in flight (`pipelineDepth`): every page comes
    /// back with its data (GPU writes included), failed copies leave their page in VRAM
    /// for the next pass, and nothing leaks.
    @Test(arguments: [1, 2, 4])
    func evictAllWithBatchesInFlightKeepsEveryByte(_ depth: Int) throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 256
        policy.pipelineDepth = depth
        let flaky = CopyBackendKind.faultInjecting(FaultPlan(seed: 3, rules: [.init(.every(97), .fail(.ioError))]),
                                                   wrapping: .ioUring)
        let gpu = try makeDevice(memory, vramMiB: 16, backend: flaky, policy: policy)
        defer { try? gpu.shutdown() }
        let pages = 3000
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 40 + UInt64(depth))
        let space = try gpu.bind(mm)
        let moved = try gpu.migrateToDevice(mm, range: range(a, pages: pages)).migrated
        #expect(moved > pages - pages / 90)
        try space.write(at: a + 5 * 4096, bytes: [7, 7, 7])  // a GPU write lands in VRAM (or RAM)
        let resident = gpu.vram.inUsePageCount
        let evictedBefore = gpu.counters[.pagesEvicted]
        #expect(gpu.evictAll() == resident)
        #expect(gpu.vram.inUsePageCount == 0 && gpu.counters[.pagesEvicted] - evictedBefore == resident)
        #expect(gpu.counters[.pagesLeftAfterCopyFailure] > 0, "some eviction copies failed and were retried")
        #expect(entryKinds(mm, a, pages: pages) == [.present: pages])
        #expect(try mm.read(at: a + 5 * 4096, count: 3) == [7, 7, 7])
        var expected = pattern.page(5)
        expected.replaceSubrange(0..<3, with: [7, 7, 7])
        #expect(try mm.read(at: a + 5 * 4096, count: pageSize) == expected)
        let mismatches = try pattern.cpuMismatches(mm, a, pages: pages)
        #expect(mismatches == [5])
        #expect(gpu.checkInvariants().isEmpty)
    }

    @Test func lruListOrder() {
        let lru = LRUEvictionPolicy(capacity: 8)
        for p in [3, 1, 4, 5] { lru.pageBecameResident(p) }
        lru.pageAccessed(1)
        lru.pageAccessed(7)         // not resident: ignored
        lru.pageFreed(4)
        #expect(lru.coldToHot == [3, 5, 1] && lru.residentCount == 3)
        var out = [Int](repeating: -1, count: 2)
        #expect(out.withUnsafeMutableBufferPointer { lru.selectVictims(into: $0) } == 2)
        #expect(out == [3, 5])
        #expect(lru.coldToHot == [1, 3, 5])   // offered victims go to the hot end
        lru.pageFreed(99)
        #expect(lru.residentCount == 3)
    }

    /// The residency filter: ineligible pages are passed over and keep their place.
    @Test func lruFilteredSelectionSkipsIneligiblePages() {
        let lru = LRUEvictionPolicy(capacity: 8)
        for p in [3, 1, 4, 5, 2] { lru.pageBecameResident(p) }
        var out = [Int](repeating: -1, count: 2)
        #expect(out.withUnsafeMutableBufferPointer { lru.selectVictims(into: $0, where: { $0 != 3 && $0 != 4 }) } == 2)
        #expect(out == [1, 5])
        #expect(lru.coldToHot == [3, 4, 2, 1, 5])
        var many = [Int](repeating: -1, count: 8)
        #expect(many.withUnsafeMutableBufferPointer { lru.selectVictims(into: $0, where: { _ in false }) } == 0)
        #expect(lru.coldToHot == [3, 4, 2, 1, 5])
    }

    /// A custom policy without its own filtered selection gets the default: its victims,
    /// less the ineligible ones.
    @Test func defaultFilteredSelectionDropsIneligibleVictims() {
        final class Oldest: EvictionPolicy, @unchecked Sendable {
            func pageBecameResident(_ page: Int) {}
            func pageAccessed(_ page: Int) {}
            func pageFreed(_ page: Int) {}
            func selectVictims(into out: UnsafeMutableBufferPointer<Int>) -> Int {
                for k in 0..<out.count { out[k] = 10 + k }
                return out.count
            }
        }
        var out = [Int](repeating: -1, count: 4)
        #expect(out.withUnsafeMutableBufferPointer { Oldest().selectVictims(into: $0, where: { $0 % 2 == 1 }) } == 2)
        #expect(out[0..<2] == [11, 13])
    }
}

@Suite(.timeLimit(.minutes(1))) struct EvictionStressTests {
    /// A migrating thread keeps pulling quarters of a range four times VRAM's size into
    /// VRAM (evicting the others) while a CPU thread reads and writes random pages; with a
    /// minimum residency too (evictions and CPU faults then wait for young pages).
    @Test(arguments: [Duration.zero, .milliseconds(2)])
    func evictionUnderPressureRacesCPUTrafficWithoutLosingAByte(residency: Duration) throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 64
        policy.minimumResidency = residency
        let gpu = try makeDevice(memory, vramMiB: 2, backend: .ioUring, policy: policy)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let pages = 2048
        let a = try mm.mmap(length: pages * pageSize)
        try PagePattern(seed: 55).fill(mm, a, pages: pages)
        let bad = Atomic<Int>(0)
        let stop = Atomic<Bool>(false)
        let started = Atomic<Bool>(false)   // set once VRAM holds pages: every access from then on may fault
        let writerDone = Atomic<Bool>(false)
        // The CPU stamps a counter into the first word of random pages and checks it back.
        let writer = TestThread {
            defer { writerDone.store(true, ordering: .releasing) }
            while !started.load(ordering: .acquiring) && !stop.load(ordering: .relaxed) { usleep(100) }
            var rng = SystemRandomNumberGenerator()
            var expected = [UInt64](repeating: 0, count: pages)
            var n: UInt64 = 0
            while !stop.load(ordering: .relaxed) && n < 20_000 {
                n += 1
                let p = Int.random(in: 0..<pages, using: &rng)
                let addr = a + UInt64(p * pageSize)
                do {
                    if expected[p] != 0, try mm.read(at: addr, count: 8) != withUnsafeBytes(of: expected[p], Array.init) {
                        bad.add(1, ordering: .relaxed)
                    }
                    try mm.write(at: addr, bytes: withUnsafeBytes(of: n, Array.init))
                    expected[p] = n
                } catch { bad.add(1, ordering: .relaxed) }
            }
        }
        for round in 0..<12 {
            let quarter = round % 4
            try gpu.migrateToDevice(mm, range: range(a + UInt64(quarter * 512 * pageSize), pages: 512))
            started.store(true, ordering: .releasing)
        }
        // A writer not scheduled during those rounds (a loaded machine) has not met a VRAM
        // page yet: the last quarter stays in VRAM until it does, or has made all its accesses.
        let deadline = ContinuousClock.now + .seconds(20)
        while gpu.counters[.cpuFaults] == 0 && !writerDone.load(ordering: .acquiring) && ContinuousClock.now < deadline {
            usleep(1000)
        }
        stop.store(true, ordering: .relaxed)
        let joined = writer.join(seconds: 30)
        #expect(joined, "the CPU thread is stuck")
        guard joined else { return }
        #expect(bad.load(ordering: .relaxed) == 0)
        #expect(gpu.counters[.pagesEvicted] > 0 && gpu.counters[.cpuFaults] > 0)
        // Everything past the first word still holds the original pattern.
        let pattern = PagePattern(seed: 55)
        var intact = 0
        for p in 0..<pages {
            var page = try mm.read(at: a + UInt64(p * pageSize), count: pageSize)
            let original = pattern.page(p)
            page.replaceSubrange(0..<8, with: original[0..<8])
            if page == original { intact += 1 }
        }
        #expect(intact == pages)
        #expect(memory.diagnostics.unlocksOfUnlockedPages == 0 && memory.diagnostics.refcountUnderflowCount == 0)
    }
}

/// Evicts the most recently migrated pages first, the opposite of LRU: a policy of one's
/// own through `EvictionPolicyKind.custom`, as the driver guide (section 9) describes.
final class MostRecentFirstEviction: EvictionPolicy, @unchecked Sendable {
    private let lock = NIOLock()
    private var order: [Int] = []          // guarded by lock: resident pages, oldest first
    private var selectCalls = 0            // guarded by lock

    var selections: Int { lock.withLock { selectCalls } }

    func pageBecameResident(_ page: Int) { lock.withLock { order.append(page) } }
    func pageAccessed(_ page: Int) {}
    func pageFreed(_ page: Int) { lock.withLock { order.removeAll { $0 == page } } }

    func selectVictims(into out: UnsafeMutableBufferPointer<Int>) -> Int {
        lock.withLock {
            selectCalls += 1
            let n = min(out.count, order.count)
            for k in 0..<n { out[k] = order[order.count - 1 - k] }
            return n
        }
    }
}

@Suite struct CustomEvictionTests {
    /// VRAM holds range A (two batches); migrating B evicts the batch the policy names:
    /// A's second batch under the custom policy, its first under the default LRU.
    @Test(arguments: [true, false])
    func pressureEvictionAsksTheCustomPolicy(custom: Bool) throws {
        let memory = try makeMemory(mib: 64)
        let policy = MostRecentFirstEviction()
        var migration = MigrationPolicy()
        migration.batchPages = 256
        let gpu = try makeDevice(memory, vramMiB: 2, policy: migration,
                                 eviction: custom ? .custom { _ in policy } : .leastRecentlyUsed)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 768, seed: 71)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 512)).migrated == 512)
        #expect(try gpu.migrateToDevice(mm, range: range(a + 512 * 4096, pages: 256)).migrated == 256)
        #expect(gpu.counters[.pagesEvicted] == 256)
        let (kept, evicted) = custom ? (a, a + 256 * 4096) : (a + 256 * 4096, a)
        #expect(entryKinds(mm, kept, pages: 256) == [.devicePrivate: 256])
        #expect(entryKinds(mm, evicted, pages: 256) == [.present: 256])
        #expect(entryKinds(mm, a + 512 * 4096, pages: 256) == [.devicePrivate: 256])
        #expect((policy.selections > 0) == custom)
        #expect(try pattern.cpuMismatches(mm, a, pages: 768).isEmpty)
    }

    /// A custom policy that answers out of contract (a negative count, more victims than
    /// asked for, indices that name no page) does not trap the device: the count is
    /// clamped, unknown indices are skipped, and the migration stays best effort.
    @Test(arguments: [OutOfContractEviction.Answer.negative, .tooMany, .unknownPages])
    func outOfContractAnswersOfACustomPolicyAreClamped(answer: OutOfContractEviction.Answer) throws {
        let memory = try makeMemory(mib: 64)
        var migration = MigrationPolicy()
        migration.batchPages = 256
        let gpu = try makeDevice(memory, vramMiB: 2, policy: migration,
                                 eviction: .custom { _ in OutOfContractEviction(answer) })
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 768, seed: 72)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 512)).migrated == 512)
        let r = try gpu.migrateToDevice(mm, range: range(a + 512 * 4096, pages: 256))
        // `.tooMany` names real pages (dense indices 0…): those are evicted and B moves in.
        #expect(r.migrated == (answer == .tooMany ? 256 : 0))
        #expect(gpu.counters[.pagesEvicted] == (answer == .tooMany ? 256 : 0))
        #expect(try pattern.cpuMismatches(mm, a, pages: 768).isEmpty)
        var out = [Int](repeating: -1, count: 4)
        let kept = out.withUnsafeMutableBufferPointer { OutOfContractEviction(answer).selectVictims(into: $0, where: { _ in true }) }
        #expect(kept == (answer == .negative ? 0 : 4))
    }
}

/// An eviction policy that breaks `selectVictims(into:)`'s contract in one of three ways.
final class OutOfContractEviction: EvictionPolicy, @unchecked Sendable {
    enum Answer: Sendable { case negative, tooMany, unknownPages }
    let answer: Answer
    init(_ answer: Answer) { self.answer = answer }
    func pageBecameResident(_ page: Int) {}
    func pageAccessed(_ page: Int) {}
    func pageFreed(_ page: Int) {}
    func selectVictims(into out: UnsafeMutableBufferPointer<Int>) -> Int {
        switch answer {
        case .negative: return -1
        case .tooMany:
            for k in 0..<out.count { out[k] = k }
            return out.count + 5
        case .unknownPages:
            for k in 0..<out.count { out[k] = 1_000_000 + k }
            return out.count
        }
    }
}
