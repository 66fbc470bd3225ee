import DMAEngine
import DeviceEmu
import Foundation
import HostMM
import NIOConcurrencyHelpers
import Synchronization
import Testing

/// The policy seams under concurrency: threads reading, writing and atomically adding by
/// GPU and CPU over one address space whose fault windows straddle every thread's pages
/// (page i belongs to thread i % owners), with a counting `GPUFaultPolicy` that migrates
/// on remote accesses, `ThrashingMitigationPolicy`, `SequentialPrefetchPolicy` under CPU
/// scans, `setPolicy` swapping among them, VRAM smaller than the range (pressure
/// eviction), checked mode on, and unbind / munmap racing the accesses. Fixed iteration
/// counts (a deadline only stops a stuck run); every byte is verified at the end and no
/// device page may outlive the address space.
@Suite(.serialized, .timeLimit(.minutes(1))) struct PolicyStressTests {
    /// Pages owned by the threads (word 0 is the owner's value, the rest the pattern), then
    /// pages nobody writes (pattern only).
    static let ownedPages = 900
    static let sharedPages = 124
    static var totalPages: Int { ownedPages + sharedPages }

    /// One run: memory (checked), a 2 MiB device (512 pages: half of `totalPages`), one address
    /// space filled with the pattern, a shadow of each owned page's word 0, problems seen.
    final class Rig: @unchecked Sendable {
        let memory: PhysicalMemory
        let gpu: Device
        let mm: AddressSpace
        let base: UInt64
        let pattern = PagePattern(seed: 0x5157)
        let owners: Int
        let problems = NIOLockedValueBox<[String]>([])
        let stop = Atomic<Bool>(false)
        let deadline = ContinuousClock.now + .seconds(20)
        /// Written by each owner only; read after the owners joined.
        let shadows: [NIOLockedValueBox<[Int: UInt64]>]

        init(owners: Int, policy: MigrationPolicy) throws {
            memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 17, checked: .on)
            gpu = try makeDevice(memory, vramMiB: 2, policy: policy)
            mm = AddressSpace(memory: memory)
            base = try mm.mmap(length: PolicyStressTests.totalPages * pageSize)
            try pattern.fill(mm, base, pages: PolicyStressTests.totalPages)
            self.owners = owners
            shadows = (0..<owners).map { t in
                NIOLockedValueBox(Dictionary(uniqueKeysWithValues: stride(from: t, to: PolicyStressTests.ownedPages, by: owners)
                    .map { ($0, PagePattern(seed: 0x5157).page($0).withUnsafeBytes { $0.load(as: UInt64.self) }) }))
            }
        }

        func address(_ page: Int) -> UInt64 { base + UInt64(page * pageSize) }
        func report(_ s: String) { problems.withLockedValue { if $0.count < 20 { $0.append(s) } } }
        func running(_ n: Int, _ limit: Int) -> Bool {
            n < limit && !stop.load(ordering: .relaxed) && ContinuousClock.now < deadline
        }

        /// Whether `bytes` (one page) is page `page` of the pattern from byte 8 on, and
        /// holds `word` (when given) in its first 8 bytes.
        func check(_ page: Int, _ bytes: [UInt8], word: UInt64?) -> String? {
            var expected = pattern.page(page)
            if let word { withUnsafeBytes(of: word) { expected.replaceSubrange(0..<8, with: $0) }
            } else { expected.replaceSubrange(0..<8, with: bytes[0..<8]) }
            if bytes == expected { return nil }
            let w = bytes.withUnsafeBytes { $0.load(as: UInt64.self) }
            return "page \(page): word \(w) expected \(word.map(String.init) ?? "any"), tail \(bytes[8...] == expected[8...] ? "ok" : "wrong")"
        }

        /// Thread `t`'s mix: word writes, atomics and verified reads of its own pages by
        /// GPU and CPU, verified reads of the shared pages, and 4-page GPU reads across
        /// everybody's pages (tails verified). `space()` gives the view to use.
        func owner(_ t: Int, iterations: Int, seed: UInt64, gpuOnly: Bool = false,
                   tolerating: (any Error) -> Bool = { _ in false }, space: () throws -> GPUAddressSpace) {
            var rng = SplitMix(seed: seed)
            var shadow = shadows[t].withLockedValue { $0 }
            let mine = Array(shadow.keys).sorted()
            var n = 0
            while running(n, iterations) {
                n += 1
                let p = mine[rng.next(mine.count)]
                let op = rng.next(9)
                do {
                    let space = try space()
                    switch op {
                    case 0 where !gpuOnly:
                        let v = UInt64(t) << 56 | UInt64(n) << 1
                        try mm.write(at: address(p), bytes: withUnsafeBytes(of: v) { Array($0) })
                        shadow[p] = v
                    case 0, 1:
                        let v = UInt64(t) << 56 | UInt64(n) << 1 | 1
                        try space.write(at: address(p), bytes: withUnsafeBytes(of: v) { Array($0) })
                        shadow[p] = v
                    case 2:
                        let old = try space.atomicAdd(at: address(p), 2)
                        if old != shadow[p] { report("t\(t) atomic on page \(p) saw \(old), expected \(shadow[p]!)") }
                        shadow[p]! &+= 2
                    case 3 where !gpuOnly:
                        if let bad = check(p, try mm.read(at: address(p), count: pageSize), word: shadow[p]) { report("t\(t) CPU: \(bad)") }
                    case 3, 4:
                        if let bad = check(p, try space.read(at: address(p), count: pageSize), word: shadow[p]) { report("t\(t) GPU: \(bad)") }
                    case 5 where !gpuOnly:
                        let s = PolicyStressTests.ownedPages + rng.next(PolicyStressTests.sharedPages)
                        if let bad = check(s, try mm.read(at: address(s), count: pageSize), word: pattern.page(s).withUnsafeBytes { $0.load(as: UInt64.self) }) {
                            report("t\(t) CPU shared: \(bad)")
                        }
                    case 5, 6:
                        let s = PolicyStressTests.ownedPages + rng.next(PolicyStressTests.sharedPages)
                        if let bad = check(s, try space.read(at: address(s), count: pageSize), word: pattern.page(s).withUnsafeBytes { $0.load(as: UInt64.self) }) {
                            report("t\(t) GPU shared: \(bad)")
                        }
                    default:
                        // Four pages at once, anybody's: a remote access on one page may
                        // migrate the window the next pages of the same access lie in.
                        let first = rng.next(PolicyStressTests.totalPages - 4)
                        let bytes = try space.read(at: address(first), count: 4 * pageSize)
                        for k in 0..<4 {
                            if let bad = check(first + k, Array(bytes[k * pageSize ..< (k + 1) * pageSize]), word: nil) {
                                report("t\(t) GPU span: \(bad)")
                            }
                        }
                    }
                } catch where tolerating(error) {
                    // Nothing happened (e.g. the view was unbound under the access).
                } catch {
                    report("t\(t) op \(op) page \(p): \(error)")
                }
            }
            shadows[t].withLockedValue { $0 = shadow }
        }

        /// Joins `threads` (a stuck one is a failure), then verifies every page by GPU and CPU.
        func finish(_ threads: [TestThread]) throws {
            let joined = threads.map { $0.join(seconds: 30) }.allSatisfy { $0 }
            stop.store(true, ordering: .relaxed)
            #expect(joined, "a thread is stuck")
            guard joined else { return }
            let seen = problems.withLockedValue { $0 }
            #expect(seen.isEmpty, "\(seen)")
            let space = try gpu.bind(mm)   // the view the run used, or a new one if it was unbound
            for t in 0..<owners {
                for (p, word) in shadows[t].withLockedValue({ $0 }) {
                    if let bad = check(p, try space.read(at: address(p), count: pageSize), word: word) { Issue.record("final GPU: \(bad)") }
                    if let bad = check(p, try mm.read(at: address(p), count: pageSize), word: word) { Issue.record("final CPU: \(bad)") }
                }
            }
            let shared = PolicyStressTests.ownedPages
            #expect(try pattern.gpuMismatches(space, base, first: shared, pages: PolicyStressTests.sharedPages) == [])
            #expect(try pattern.cpuMismatches(mm, base, first: shared, pages: PolicyStressTests.sharedPages) == [])
        }

        /// No device page survives eviction, unbind and munmap; no protocol violation.
        func tearDown() throws {
            #expect(gpu.checkInvariants().isEmpty, "\(gpu.checkInvariants().prefix(3))")
            gpu.evictAll()
            #expect(gpu.vram.inUsePageCount == 0)
            gpu.unbind(mm)
            try mm.munmap(base, length: PolicyStressTests.totalPages * pageSize)
            #expect(gpu.vram.inUsePageCount == 0)
            #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations.prefix(3) ?? [])")
            try gpu.shutdown()
            #expect(gpu.vram.strayFreeCount == 0)
            #expect(memory.diagnostics.refcountUnderflowCount == 0 && memory.diagnostics.unlocksOfUnlockedPages == 0)
        }
    }

    /// (a) Maps on faults; every `threshold`th remote access to a 4-page window migrates
    /// its 32-page window. Every call is counted so the device's counters can be checked.
    final class CountingPolicy: GPUFaultPolicy, @unchecked Sendable {
        let threshold: Int
        let lock = NIOLock()
        private var counts: [ObjectIdentifier: [UInt64: Int]] = [:]
        private(set) var resolves = 0, resolved = 0, remoteCalls = 0, migrateAnswers = 0, unbound = 0
        init(threshold: Int) { self.threshold = threshold }

        var countsRemoteAccesses: Bool { true }
        var trackedSpaces: Int { lock.withLock { counts.count } }
        func resolve(_ fault: GPUFaultInfo) -> GPUFaultDecision {
            lock.withLock { resolves += 1 }
            return .mapSystemMemory(pages: 4)
        }
        func gpuFaultResolved(_ fault: GPUFaultInfo, decision: GPUFaultDecision, migrated: Int, mapped: Int) {
            lock.withLock { resolved += 1 }
        }
        func remoteAccess(_ access: GPURemoteAccess) -> GPURemoteAccessResponse {
            lock.withLock {
                remoteCalls += 1
                let n = counts[access.addressSpace, default: [:]][access.address >> 14, default: 0] + 1
                counts[access.addressSpace, default: [:]][access.address >> 14] = n % threshold
                guard n == threshold else { return .none }
                migrateAnswers += 1
                return .migrateToVRAM(pages: 32)
            }
        }
        func addressSpaceUnbound(_ addressSpace: ObjectIdentifier) {
            lock.withLock { counts[addressSpace] = nil; unbound += 1 }
        }
    }

    @Test func accessCounterPolicyUnderPressure() throws {
        let counting = CountingPolicy(threshold: 3)
        var policy = MigrationPolicy()
        policy.gpuFault = .custom(counting)
        policy.cpuFaultGranularity = .faultAround(pages: 4)
        policy.batchPages = 64
        let rig = try Rig(owners: 3, policy: policy)
        let space = try rig.gpu.bind(rig.mm)
        let threads = (0..<3).map { t in TestThread { rig.owner(t, iterations: 3000, seed: UInt64(t) + 1) { space } } }
        try rig.finish(threads)
        let c = rig.gpu.counters
        counting.lock.withLock {
            #expect(c[.remoteAccesses] == counting.remoteCalls && c[.remoteAccessMigrations] == counting.migrateAnswers)
            #expect(c[.gpuFaults] == counting.resolves && counting.resolved == counting.resolves)
            #expect(counting.migrateAnswers > 0 && c[.pressureEvictions] > 0 && c[.cpuFaults] > 0)
        }
        try rig.tearDown()
        #expect(counting.trackedSpaces == 0 && counting.lock.withLock { counting.unbound } == 1)
    }

    /// (b) uvm's thrashing detection with the CPU and the GPU taking turns on every
    /// window: windows pin and unpin (a 5 ms pin) while pressure evicts.
    @Test func thrashingMitigationUnderPingPong() throws {
        var t = ThrashingMitigationPolicy.Parameters()
        t.windowPages = 8
        t.threshold = 2
        t.lapse = .seconds(30)   // every change of direction counts: no timing in the outcome
        t.pin = .milliseconds(5)
        let thrashing = try ThrashingMitigationPolicy(t)
        var policy = MigrationPolicy()
        policy.gpuFault = .custom(thrashing)
        policy.batchPages = 64
        let rig = try Rig(owners: 3, policy: policy)
        let space = try rig.gpu.bind(rig.mm)
        let threads = (0..<3).map { t in TestThread { rig.owner(t, iterations: 3000, seed: UInt64(t) + 11) { space } } }
        try rig.finish(threads)
        let s = thrashing.statistics
        #expect(s.pins > 0 && s.migrations > 0 && s.pinnedFaults > 0, "\(s)")
        #expect(rig.gpu.counters[.cpuFaults] > 0 && rig.gpu.counters[.pressureEvictions] > 0)
        try rig.tearDown()
        #expect(thrashing.trackedWindows == 0)
    }

    /// (c) Sequential CPU scans of the whole range (readahead windows growing to 64
    /// pages) racing GPU faults that migrate 16-page windows and a migrator pushing the
    /// range back to VRAM.
    @Test func sequentialPrefetchScansRacingGPUFaults() throws {
        var params = SequentialPrefetchPolicy.Parameters()
        params.maxPages = 64
        let prefetch = try SequentialPrefetchPolicy(params)
        var policy = MigrationPolicy()
        policy.gpuFault = .migrateToVRAM(pages: 16)
        policy.cpuFaultGranularity = .custom(prefetch)
        policy.cpuCopyFaultPages = 8   // the larger windows take the engine
        let rig = try Rig(owners: 2, policy: policy)
        let space = try rig.gpu.bind(rig.mm)
        var threads = (0..<2).map { t in TestThread { rig.owner(t, iterations: 2500, seed: UInt64(t) + 21, gpuOnly: t == 0) { space } } }
        threads.append(TestThread {
            var n = 0
            while rig.running(n, 4) {
                n += 1
                for p in 0..<PolicyStressTests.totalPages where !rig.stop.load(ordering: .relaxed) {
                    do {
                        let bytes = try rig.mm.read(at: rig.address(p), count: pageSize)
                        let word: UInt64? = p < PolicyStressTests.ownedPages ? nil : rig.pattern.page(p).withUnsafeBytes { $0.load(as: UInt64.self) }
                        if let bad = rig.check(p, bytes, word: word) { rig.report("scan: \(bad)") }
                    } catch { rig.report("scan page \(p): \(error)") }
                }
            }
        })
        threads.append(TestThread {
            var n = 0
            while rig.running(n, 40) {
                n += 1
                let first = (n * 97) % (PolicyStressTests.totalPages - 256)
                do { try rig.gpu.migrateToDevice(rig.mm, range: range(rig.address(first), pages: 256)) }
                catch { rig.report("migrate: \(error)") }
            }
        })
        try rig.finish(threads)
        #expect(prefetch.statistics.sequentialFaults > 0, "\(prefetch.statistics)")
        #expect(rig.gpu.counters[.gpuFaults] > 0 && rig.gpu.counters[.pressureEvictions] > 0)
        try rig.tearDown()
        #expect(prefetch.trackedAddressSpaces == 0)
    }

    /// (d) `setPolicy` swapping among counting, thrashing, fixed and prefetch policies
    /// (and batch, pipeline, residency and fault-around settings) while the owners run.
    @Test func setPolicySwappingMidRun() throws {
        let counting = CountingPolicy(threshold: 2)
        let silent = SilentPolicy()
        var t = ThrashingMitigationPolicy.Parameters()
        t.threshold = 2
        t.pin = .milliseconds(2)
        let thrashing = try ThrashingMitigationPolicy(t)
        let prefetch = try SequentialPrefetchPolicy()
        let gpuFaults: [MigrationPolicy.GPUFaultResolution] = [.custom(counting), .custom(thrashing), .migrateToVRAM(pages: 16),
                                                     .mapSystemMemory(pages: 4), .custom(silent)]
        let cpuFaults: [MigrationPolicy.CPUFaultGranularity] = [.page, .faultAround(pages: 8), .custom(prefetch), .wholeAllocation]
        let rig = try Rig(owners: 3, policy: MigrationPolicy())
        let space = try rig.gpu.bind(rig.mm)
        var threads = (0..<3).map { t in TestThread { rig.owner(t, iterations: 2500, seed: UInt64(t) + 31) { space } } }
        threads.append(TestThread {
            var n = 0
            while rig.running(n, 400) {
                n += 1
                var p = MigrationPolicy()
                p.gpuFault = gpuFaults[n % gpuFaults.count]
                p.cpuFaultGranularity = cpuFaults[(n / 5) % cpuFaults.count]
                p.batchPages = [512, 16, 64][n % 3]
                p.pipelineDepth = 1 + n % 2
                p.minimumResidency = n % 7 == 0 ? .microseconds(100) : .zero
                p.cpuCopyFaultPages = n % 2 == 0 ? 16 : 0
                do { try rig.gpu.setPolicy(p) } catch { rig.report("setPolicy: \(error)") }
                usleep(500)
            }
        })
        try rig.finish(threads)
        #expect(silent.remoteCalls.load(ordering: .relaxed) == 0, "a policy that does not count was told of remote accesses")
        #expect(rig.gpu.counters[.remoteAccessMigrations] > 0 && rig.gpu.counters[.pressureEvictions] > 0)
        try rig.tearDown()
    }

    /// (e, f) Every remote access migrates its window while views are unbound and bound
    /// again under the accesses, and a neighbouring VMA is unmapped and mapped again under
    /// GPU reads of it; nothing may be lost and no device page may outlive the mappings.
    @Test func unbindAndMunmapRacingRemoteMigrations() throws {
        let counting = CountingPolicy(threshold: 1)
        var policy = MigrationPolicy()
        policy.gpuFault = .custom(counting)
        let rig = try Rig(owners: 3, policy: policy)
        let side = try rig.mm.mmap(length: 64 * pageSize)
        let unbound: @Sendable (any Error) -> Bool = { ($0 as? DeviceError) == .shutDown }
        var threads = (0..<3).map { t in
            TestThread {
                rig.owner(t, iterations: 2000, seed: UInt64(t) + 41, tolerating: unbound) {
                    try rig.gpu.addressSpace(for: rig.mm) ?? rig.gpu.bind(rig.mm)
                }
            }
        }
        threads.append(TestThread {
            var n = 0
            while rig.running(n, 60) {
                n += 1
                rig.gpu.unbind(rig.mm)
                usleep(2000)
            }
        })
        threads.append(TestThread {
            var n = 0
            while rig.running(n, 150) {
                n += 1
                do {
                    if n % 2 == 0 {
                        try rig.mm.munmap(side, length: 64 * pageSize)
                        _ = try rig.mm.mmap(length: 64 * pageSize, at: side)
                    }
                    try rig.mm.touch(side, length: 64 * pageSize, write: true)
                } catch { rig.report("churn: \(error)") }
                // The GPU on the churned VMA: faults, remote accesses and their migrations
                // race the munmap; any outcome but a wrong value or a trap is fine.
                for k in stride(from: 0, to: 64, by: 8) {
                    guard let space = try? rig.gpu.addressSpace(for: rig.mm) ?? rig.gpu.bind(rig.mm) else { continue }
                    if let bytes = try? space.read(at: side + UInt64(k * pageSize), count: 8), bytes != [UInt8](repeating: 0, count: 8) {
                        rig.report("side page \(k) read \(bytes)")
                    }
                }
            }
        })
        try rig.finish(threads)
        #expect(rig.gpu.counters[.remoteAccessMigrations] > 0 && counting.lock.withLock { counting.unbound } > 0)
        try rig.mm.munmap(side, length: 64 * pageSize)
        try rig.tearDown()
        #expect(counting.trackedSpaces == 0)
    }

    /// Views unbound and bound again while their VRAM entries are evicted and the GPU
    /// migrates pages back in: no migration may finalize while any view (even one being
    /// unbound) still maps the page it moved (checked mode's `device-pte-maps-migrated-page`).
    @Test func unbindRacingEvictionsOfMappedPages() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 17, checked: .on)
        var policy = MigrationPolicy()
        policy.gpuFault = .migrateToVRAM(pages: 4)
        let gpu = try makeDevice(memory, vramMiB: 2, policy: policy)
        let (mm, a, pattern) = try makeProcess(memory, pages: 64, seed: 77)
        let stop = Atomic<Bool>(false)
        let problems = NIOLockedValueBox<[String]>([])
        let readers = (0..<2).map { t in
            TestThread {
                var n = 0
                while n < 20_000 && !stop.load(ordering: .relaxed) {
                    n += 1
                    let p = (n * 7 + t * 13) % 64
                    guard let space = try? gpu.bind(mm) else { continue }
                    do {
                        let bytes = try space.read(at: a + UInt64(p * pageSize), count: pageSize)
                        if bytes != pattern.page(p) { problems.withLockedValue { $0.append("page \(p) wrong") } }
                    } catch DeviceError.shutDown {
                    } catch { problems.withLockedValue { $0.append("page \(p): \(error)") } }
                }
            }
        }
        let churn = TestThread {
            for n in 0..<400 where !stop.load(ordering: .relaxed) {
                gpu.unbind(mm)
                if n % 2 == 0 { gpu.evictAll() } else { _ = try? gpu.migrateRangeToRAM(mm, range: range(a, pages: 64)) }
            }
        }
        let evictor = TestThread {
            for _ in 0..<400 where !stop.load(ordering: .relaxed) { gpu.evictAll() }
        }
        let joined = [churn, evictor].allSatisfy { $0.join(seconds: 30) }
        stop.store(true, ordering: .relaxed)
        let readersJoined = readers.allSatisfy { $0.join(seconds: 30) }
        #expect(problems.withLockedValue { $0 }.isEmpty, "\(problems.withLockedValue { $0.prefix(3) })")
        #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations.prefix(3) ?? [])")
        guard joined && readersJoined else {
            // A stuck thread holds the device gate (a GPU access) or waits for it (unbind):
            // `unbind`/`shutdown` below would wait for it forever and hang the whole run.
            // Fail here, naming what a GPU fault could be waiting on.
            Issue.record("a thread is stuck (churn and evictor joined: \(joined)); \(stuckPages(memory, mm, a, pages: 64)); \(lockedVRAMPages(gpu)); invariants: \(gpu.checkInvariants().prefix(4)); unlocks of unlocked pages: \(memory.diagnostics.unlocksOfUnlockedPages)")
            return
        }
        gpu.unbind(mm)
        gpu.evictAll()
        #expect(gpu.vram.inUsePageCount == 0)
        try gpu.shutdown()
    }

    /// An address space's view unbound while GPU threads keep reading remote pages: once
    /// `unbind` returned and the threads stopped, the policy holds no state for it
    /// (`addressSpaceUnbound` promises the identifier may name another space later).
    @Test func unbindForgetsStateOfAccessesInFlight() throws {
        let memory = try makeMemory(mib: 64)
        let counting = CountingPolicy(threshold: 1_000_000)   // never migrates: every access stays remote
        var policy = MigrationPolicy()
        policy.gpuFault = .custom(counting)
        let gpu = try makeDevice(memory, vramMiB: 2, policy: policy)
        for round in 0..<30 {
            let (mm, a, _) = try makeProcess(memory, pages: 8, seed: UInt64(round))
            let space = try gpu.bind(mm)
            _ = try space.read(at: a, count: 8 * pageSize)   // maps all 8 pages
            let before = counting.lock.withLock { counting.remoteCalls }
            let threads = (0..<2).map { t in
                TestThread {
                    var n = 0
                    while n < 100_000 {
                        n += 1
                        do { _ = try space.read(at: a + UInt64((n + t) % 8 * pageSize), count: 8) } catch { return }
                    }
                }
            }
            while counting.lock.withLock({ counting.remoteCalls }) < before + 500 { sched_yield() }
            gpu.unbind(mm)
            #expect(threads.allSatisfy { $0.join(seconds: 20) })
            #expect(counting.trackedSpaces == 0, "round \(round): state of an unbound space survived")
            try mm.munmap(a, length: 8 * pageSize)
            if counting.trackedSpaces != 0 { break }
        }
        try gpu.shutdown()
    }
}

/// A custom policy that does not count remote accesses: it must never be told of one.
final class SilentPolicy: GPUFaultPolicy, Sendable {
    let remoteCalls = Atomic<Int>(0)
    func resolve(_ fault: GPUFaultInfo) -> GPUFaultDecision { .migrateToVRAM(pages: 8) }
    func remoteAccess(_ access: GPURemoteAccess) -> GPURemoteAccessResponse {
        remoteCalls.add(1, ordering: .relaxed)
        return .none
    }
}

/// A small seeded generator: each thread's sequence of operations is reproducible.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next(_ bound: Int) -> Int {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Int((z ^ (z >> 31)) % UInt64(bound))
    }
}

/// The process's pages a stuck GPU fault or CPU access may be waiting on: migration entries
/// (`hmm_range_fault` sleeps on their page lock, `migration_entry_wait`) and locked pages.
private func stuckPages(_ memory: PhysicalMemory, _ mm: AddressSpace, _ a: UInt64, pages: Int) -> String {
    let lines = (0..<pages).compactMap { p -> String? in
        let pte = mm.pageTableEntry(a + UInt64(p * pageSize))
        let locked = pte.kind != .none && memory.isPageLocked(pte.pfn)
        guard pte.kind == .migration || locked else { return nil }
        return "page \(p): \(pte.kind) pfn \(pte.pfn.rawValue) locked \(locked) refcount \(memory.refcount(pte.pfn))"
    }
    return lines.isEmpty ? "no migration entry or locked page" : lines.joined(separator: "; ")
}

/// This device's VRAM pages that are locked (a GPU fault waits on its own locked page: a
/// migration into it that has not finalized), with their refcounts.
private func lockedVRAMPages(_ gpu: Device) -> String {
    var lines: [String] = []
    for chunk in gpu.vram.chunks {
        for raw in chunk.pfns.lowerBound.rawValue ..< chunk.pfns.upperBound.rawValue {
            let pfn = PFN(raw)
            if gpu.memory.isPageLocked(pfn) { lines.append("VRAM pfn \(raw) locked, refcount \(gpu.memory.refcount(pfn))") }
        }
    }
    return lines.isEmpty ? "no locked VRAM page" : lines.joined(separator: "; ")
}
