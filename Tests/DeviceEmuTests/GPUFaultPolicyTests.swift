import DMAEngine
import DeviceEmu
import Glibc
import HostMM
import NIOConcurrencyHelpers
import Testing

/// A `GPUFaultPolicy` that records what it is told and answers with `decide`.
private final class RecordingPolicy: GPUFaultPolicy, @unchecked Sendable {
    let decide: @Sendable (GPUFaultInfo) -> GPUFaultDecision
    let faults = NIOLockedValueBox<[GPUFaultInfo]>([])
    let cpuMoves = NIOLockedValueBox<[(range: Range<UInt64>, pages: Int, space: ObjectIdentifier)]>([])
    let unbound = NIOLockedValueBox<[ObjectIdentifier]>([])
    let resolved = NIOLockedValueBox<[(address: UInt64, decision: GPUFaultDecision, migrated: Int, mapped: Int)]>([])

    init(_ decide: @escaping @Sendable (GPUFaultInfo) -> GPUFaultDecision) { self.decide = decide }

    func gpuFaultResolved(_ fault: GPUFaultInfo, decision: GPUFaultDecision, migrated: Int, mapped: Int) {
        resolved.withLockedValue { $0.append((fault.address, decision, migrated, mapped)) }
    }

    func resolve(_ fault: GPUFaultInfo) -> GPUFaultDecision {
        faults.withLockedValue { $0.append(fault) }
        return decide(fault)
    }
    func cpuFaultMigratedToRAM(_ range: Range<UInt64>, pages: Int, addressSpace: ObjectIdentifier) {
        cpuMoves.withLockedValue { $0.append((range, pages, addressSpace)) }
    }
    func addressSpaceUnbound(_ addressSpace: ObjectIdentifier) { unbound.withLockedValue { $0.append(addressSpace) } }
}

/// A policy object that records only the default hooks (for the defaults' test).
private final class MigrateEverything: GPUFaultPolicy {
    func resolve(_ fault: GPUFaultInfo) -> GPUFaultDecision { .migrateToVRAM(pages: 4) }
}

private func device(_ memory: PhysicalMemory, _ policy: any GPUFaultPolicy, faultAround: Int = 1) throws -> Device {
    var p = MigrationPolicy()
    p.gpuFault = .custom(policy)
    if faultAround > 1 { p.cpuFaultGranularity = .faultAround(pages: faultAround) }
    return try makeDevice(memory, vramMiB: 8, policy: p)
}

@Suite struct GPUFaultPolicyTests {
    @Test func theDeviceAsksThePolicyPerFaultAndFollowsItsDecision() throws {
        let memory = try makeMemory(mib: 64)
        let (mm, a, pattern) = try makeProcess(memory, pages: 32, seed: 51)
        let half = a + UInt64(16 * pageSize)
        // Migrate 8-page windows in the first half, map 4-page windows in the second.
        let policy = RecordingPolicy { $0.address < half ? .migrateToVRAM(pages: 8) : .mapSystemMemory(pages: 4) }
        let gpu = try device(memory, policy)
        defer { try? gpu.shutdown() }
        let space = try gpu.bind(mm)
        #expect(try space.read(at: a + 5, count: 3) == Array(pattern.page(0)[5..<8]))
        try space.write(at: half + 9, bytes: [1])
        _ = try space.atomicAdd(at: half + UInt64(8 * pageSize), 1)

        let faults = policy.faults.withLockedValue { $0 }
        let vma = a ..< a + UInt64(32 * pageSize)
        let id = ObjectIdentifier(mm)
        #expect(faults == [
            GPUFaultInfo(address: a, access: .read, vma: vma, vmaFlags: [.read, .write], cpuEntry: .present, addressSpace: id),
            GPUFaultInfo(address: half, access: .write, vma: vma, vmaFlags: [.read, .write], cpuEntry: .present, addressSpace: id),
            GPUFaultInfo(address: half + UInt64(8 * pageSize), access: .atomic, vma: vma, vmaFlags: [.read, .write],
                         cpuEntry: .present, addressSpace: id),
        ])
        #expect(gpu.counters[.gpuFaults] == 3)
        #expect(gpu.residentPages(mm, a, pages: 16) == 8)            // one 8-page window migrated
        #expect(gpu.residentPages(mm, half, pages: 16) == 0)         // the rest stayed in RAM
        #expect(space.entry(at: half).kind == .system && space.entry(at: half + UInt64(3 * pageSize)).kind == .system)
        #expect(space.entry(at: half + UInt64(4 * pageSize)).kind == .none)   // outside the 4-page window
        #expect(space.entry(at: half + UInt64(8 * pageSize)).kind == .exclusive)
        #expect(try mm.read(at: half + 9, count: 1) == [1])
        // What came of each decision: 8 pages migrated; 4 system pages mapped; 1 exclusive entry.
        let outcomes = policy.resolved.withLockedValue { $0 }
        #expect(outcomes.map(\.address) == faults.map(\.address))
        #expect(outcomes.map(\.migrated) == [8, 0, 0] && outcomes.map(\.mapped) == [0, 4, 1])
        #expect(outcomes.map(\.decision) == [.migrateToVRAM(pages: 8), .mapSystemMemory(pages: 4), .mapSystemMemory(pages: 4)])
    }

    /// What driver-guide §9 tells a policy that counts faults per page: a mapped read of a
    /// page the CPU wrote is writable (no second fault for a store); a read of a page never
    /// touched maps the zero page read-only, and the store faults again.
    @Test func aStoreAfterAMappedReadFaultsAgainOnlyOnTheZeroPage() throws {
        let memory = try makeMemory(mib: 64)
        let policy = RecordingPolicy { _ in .mapSystemMemory(pages: 1) }
        let gpu = try device(memory, policy)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        let fresh = a + UInt64(pageSize)
        try mm.write(at: a, bytes: [1])
        let space = try gpu.bind(mm)
        _ = try space.read(at: a, count: 1)
        try space.write(at: a, bytes: [2])
        #expect(policy.faults.withLockedValue { $0.map(\.address) } == [a])
        _ = try space.read(at: fresh, count: 1)
        try space.write(at: fresh, bytes: [3])
        #expect(policy.faults.withLockedValue { $0.map { [$0.address: $0.access] } } == [[a: .read], [fresh: .read], [fresh: .write]])
        #expect(try mm.read(at: a, count: 1) == [2] && mm.read(at: fresh, count: 1) == [3])
    }

    /// The fault tells the policy where the page is (never touched; in this VRAM, once the
    /// device's own entry is gone) and what the VMA is (shared or not).
    @Test func theFaultSaysWhereThePageIsAndWhatTheVMAIs() throws {
        let memory = try makeMemory(mib: 64)
        let policy = RecordingPolicy { _ in .mapSystemMemory(pages: 1) }
        let gpu = try device(memory, policy)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let fresh = try mm.mmap(length: 4 * pageSize)
        let shared = try mm.mmap(.anonymousShared, length: 4 * pageSize)
        let space = try gpu.bind(mm)
        _ = try space.read(at: fresh, count: 1)
        _ = try space.read(at: shared, count: 1)
        let faults = policy.faults.withLockedValue { $0 }
        #expect(faults.map(\.cpuEntry) == [.none, .none])
        #expect(!faults[0].vmaFlags.contains(.shared) && faults[1].vmaFlags.contains(.shared))
        #expect(policy.resolved.withLockedValue { $0.map(\.mapped) } == [1, 1])
        // A page in this device's VRAM whose device entry is gone faults as `.devicePrivate`.
        try mm.write(at: fresh + UInt64(pageSize), bytes: [1])
        try gpu.migrateToDevice(mm, range: fresh ..< fresh + UInt64(2 * pageSize))
        gpu.unbind(mm)
        let again = try gpu.bind(mm)
        _ = try again.read(at: fresh + UInt64(pageSize), count: 1)
        #expect(policy.faults.withLockedValue { $0.last?.cpuEntry } == .devicePrivate)
    }

    /// A migration that moves nothing (a shared VMA) is reported as such: the policy learns
    /// that its window was mapped from system memory instead.
    @Test func aMigrationThatMovesNothingIsReported() throws {
        let memory = try makeMemory(mib: 64)
        let policy = RecordingPolicy { _ in .migrateToVRAM(pages: 4) }
        let gpu = try device(memory, policy)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let shared = try mm.mmap(.anonymousShared, length: 8 * pageSize)
        try mm.write(at: shared, bytes: [UInt8](repeating: 3, count: 8 * pageSize))
        let space = try gpu.bind(mm)
        #expect(try space.read(at: shared + UInt64(pageSize), count: 1) == [3])
        let outcomes = policy.resolved.withLockedValue { $0 }
        #expect(outcomes.count == 1 && outcomes.first?.migrated == 0 && outcomes.first?.mapped == 4)
    }

    @Test func decisionsWithWindowsOutOfRangeAreClampedNotTrapped() throws {
        let memory = try makeMemory(mib: 64)
        let (mm, a, pattern) = try makeProcess(memory, pages: 16, seed: 52)
        let answers = NIOLockedValueBox<[GPUFaultDecision]>([.migrateToVRAM(pages: 0), .migrateToVRAM(pages: -7),
                                                             .mapSystemMemory(pages: Int.max)])
        let policy = RecordingPolicy { _ in answers.withLockedValue { $0.isEmpty ? .mapSystemMemory(pages: 1) : $0.removeFirst() } }
        let gpu = try device(memory, policy)
        defer { try? gpu.shutdown() }
        let space = try gpu.bind(mm)
        #expect(try space.read(at: a, count: pageSize) == pattern.page(0))
        #expect(gpu.residentPages(mm, a, pages: 16) == 1)              // a window of 0 pages is 1
        #expect(try space.read(at: a + UInt64(pageSize), count: pageSize) == pattern.page(1))
        #expect(gpu.residentPages(mm, a, pages: 16) == 2)              // so is one of -7
        #expect(try pattern.gpuMismatches(space, a, pages: 16).isEmpty)
        #expect(gpu.counters[.gpuFaults] == 3)                         // Int.max: the whole VMA at once
        #expect(space.mappedPageCount == 16)
    }

    /// The window of a GPU fault near the start of a VMA stops at that start
    /// (`GPUAddressSpace.window`, as `nouveau_svm_fault` intersects its window with the
    /// VMA): no page of the VMA below, inside the aligned window, is migrated or mapped.
    /// Both resolutions; counts, entries and data checked.
    @Test(arguments: [GPUFaultDecision.migrateToVRAM(pages: 16), .mapSystemMemory(pages: 16)])
    func aWindowNearAVMAStartStopsAtThatStart(decision: GPUFaultDecision) throws {
        let memory = try makeMemory(mib: 64)
        let (mm, a, pattern) = try makeProcess(memory, pages: 64, seed: 58)
        // Split the mapping at page `s`, 3 pages past a 16-page boundary of the address
        // space: the lower VMA (read-only) ends inside the aligned window of page s + 5,
        // which is pages s - 3 ..< s + 13.
        let first = Int(a >> 12)
        let s = 16 + (3 - first % 16 + 16) % 16
        try mm.mprotect(a, length: s * pageSize, protection: .read)
        let policy = RecordingPolicy { _ in decision }
        let gpu = try device(memory, policy)
        defer { try? gpu.shutdown() }
        let space = try gpu.bind(mm)
        #expect(try space.read(at: a + UInt64((s + 5) * pageSize), count: pageSize) == pattern.page(s + 5))
        func page(_ p: Int) -> UInt64 { a + UInt64(p * pageSize) }
        let outcomes = policy.resolved.withLockedValue { $0 }
        #expect(outcomes.count == 1 && gpu.counters[.gpuFaults] == 1)
        // Nothing of the VMA below moved or got a device entry.
        #expect(entryKinds(mm, a, pages: s) == [.present: s])
        #expect((0..<s).allSatisfy { space.entry(at: page($0)) == .none })
        // The window's pages in this VMA did, from its start.
        let moved = outcomes.first?.migrated ?? -1, mapped = outcomes.first?.mapped ?? -1
        if case .migrateToVRAM = decision {
            #expect(mapped == 0 && moved >= 13 && moved <= 16)
            #expect(gpu.residentPages(mm, page(s), pages: moved) == moved)
            #expect(gpu.residentPages(mm, a, pages: 64) == moved && gpu.counters[.pagesToDevice] == moved)
        } else {
            #expect(moved == 0 && mapped >= 13 && mapped <= 16)
            #expect(gpu.residentPages(mm, a, pages: 64) == 0)
        }
        let window = max(moved, mapped)
        #expect(space.mappedPageCount == window)
        #expect((s..<s + window).allSatisfy { space.entry(at: page($0)) != .none })
        #expect(try pattern.gpuMismatches(space, a, first: s, pages: window).isEmpty)
        #expect(try pattern.cpuMismatches(mm, a, pages: 64).isEmpty)
        // docs/driver-guide.md: the window is aligned from address 0, *then* clamped to the
        // VMA, so it ends where the aligned window ends (page s + 13); it once slid up by the
        // 3 pages cut, taking s ..< s + 16.
        #expect(window == 13)
    }

    @Test func cpuFaultsTellThePolicyTheirWindowOthersDoNot() throws {
        let memory = try makeMemory(mib: 64)
        let (mm, a, pattern) = try makeProcess(memory, pages: 32, seed: 53)
        let policy = RecordingPolicy { _ in .migrateToVRAM(pages: 16) }
        let gpu = try device(memory, policy, faultAround: 4)
        defer { try? gpu.shutdown() }
        let space = try gpu.bind(mm)
        #expect(try pattern.gpuMismatches(space, a, pages: 32).isEmpty)
        #expect(gpu.residentPages(mm, a, pages: 32) == 32)
        // A CPU fault brings back its 4-page window and says so.
        #expect(try mm.read(at: a + UInt64(5 * pageSize), count: pageSize) == pattern.page(5))
        var moves = policy.cpuMoves.withLockedValue { $0 }
        #expect(moves.count == 1)
        #expect(moves.first?.range == a + UInt64(4 * pageSize) ..< a + UInt64(8 * pageSize))
        #expect(moves.first?.pages == 4 && moves.first?.space == ObjectIdentifier(mm))
        // An explicit migration back and an eviction are not CPU faults.
        try gpu.migrateRangeToRAM(mm, range: a ..< a + UInt64(16 * pageSize))
        _ = gpu.evictAll()
        #expect(gpu.residentPages(mm, a, pages: 32) == 0)
        moves = policy.cpuMoves.withLockedValue { $0 }
        #expect(moves.count == 1)
        #expect(try pattern.cpuMismatches(mm, a, pages: 32).isEmpty)
    }

    @Test func unbindAndShutdownTellThePolicy() throws {
        let memory = try makeMemory(mib: 64)
        let policy = RecordingPolicy { _ in .mapSystemMemory(pages: 1) }
        let gpu = try device(memory, policy)
        let one = AddressSpace(memory: memory), two = AddressSpace(memory: memory)
        _ = try gpu.bind(one)
        _ = try gpu.bind(two)
        gpu.unbind(one)
        gpu.unbind(one)   // not bound any more: nothing to tell
        #expect(policy.unbound.withLockedValue { $0 } == [ObjectIdentifier(one)])
        try gpu.shutdown()
        #expect(policy.unbound.withLockedValue { $0 } == [ObjectIdentifier(one), ObjectIdentifier(two)])
    }

    @Test func customResolutionsCompareByIdentityAndAreAlwaysValid() throws {
        let x = MigrateEverything(), y = MigrateEverything()
        #expect(MigrationPolicy.GPUFaultResolution.custom(x) == .custom(x))
        #expect(MigrationPolicy.GPUFaultResolution.custom(x) != .custom(y))
        #expect(MigrationPolicy.GPUFaultResolution.custom(x) != .migrateToVRAM(pages: 4))
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        var p = gpu.policy
        p.gpuFault = .custom(x)
        try gpu.setPolicy(p)
        #expect(gpu.policy == p)
        // The protocol's default hooks: a policy with only `resolve` works end to end.
        let (mm, a, pattern) = try makeProcess(memory, pages: 8, seed: 54)
        let space = try gpu.bind(mm)
        #expect(try pattern.gpuMismatches(space, a, pages: 8).isEmpty)
        #expect(gpu.residentPages(mm, a, pages: 8) == 8)
        #expect(try pattern.cpuMismatches(mm, a, pages: 8).isEmpty)
        gpu.unbind(mm)
    }
}

/// A clock the test moves by hand (nanoseconds), so that lapses and pins never depend on
/// how fast the machine runs.
private final class ManualClock: Sendable {
    private let now = NIOLockedValueBox<UInt64>(1_000_000_000)
    func advance(milliseconds: UInt64) { now.withLockedValue { $0 += milliseconds * 1_000_000 } }
    var read: @Sendable () -> UInt64 { { [now] in now.withLockedValue { $0 } } }
}

@Suite struct ThrashingMitigationPolicyTests {
    private func parameters(window: Int = 16, threshold: Int = 3, lapse: Duration = .seconds(60),
                            pin: Duration = .seconds(60)) -> ThrashingMitigationPolicy.Parameters {
        var p = ThrashingMitigationPolicy.Parameters()
        p.windowPages = window
        p.threshold = threshold
        p.lapse = lapse
        p.pin = pin
        return p
    }

    /// GPU writes then CPU reads of the same pages, round after round: the ping-pong the
    /// policy is for. Returns the CPU faults of each round.
    private func pingPong(rounds: Int, _ policy: ThrashingMitigationPolicy) throws -> (cpuFaults: [Int], gpuFaults: [Int], vramInUse: Int) {
        let memory = try makeMemory(mib: 64)
        let gpu = try device(memory, policy)
        defer { try? gpu.shutdown() }
        let pages = 64
        let (mm, a, _) = try makeProcess(memory, pages: pages, seed: 60)
        let space = try gpu.bind(mm)
        var cpu: [Int] = [], gpuFaults: [Int] = []
        for round in 0..<rounds {
            let pattern = PagePattern(seed: 61 + UInt64(round))
            let g0 = gpu.counters[.gpuFaults], c0 = gpu.counters[.cpuFaults]
            for p in 0..<pages { try space.write(at: a + UInt64(p * pageSize), bytes: pattern.page(p)) }
            #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty, "round \(round)")
            gpuFaults.append(gpu.counters[.gpuFaults] - g0)
            cpu.append(gpu.counters[.cpuFaults] - c0)
        }
        let inUse = gpu.vram.inUsePageCount
        gpu.unbind(mm)
        return (cpu, gpuFaults, inUse)
    }

    @Test func aWindowThatPingPongsIsPinnedInSystemMemory() throws {
        let policy = try ThrashingMitigationPolicy(parameters())
        let r = try pingPong(rounds: 5, policy)
        // Rounds 1 and 2 migrate (4 windows each) and fault every page back; the second
        // CPU phase is each window's third change of direction: pinned. From round 3 the
        // GPU maps RAM (one fault per window, then none) and the CPU never faults again.
        #expect(r.gpuFaults == [4, 4, 4, 0, 0])
        #expect(r.cpuFaults == [64, 64, 0, 0, 0])
        #expect(r.vramInUse == 0)
        #expect(policy.statistics == .init(pins: 4, migrations: 8, pinnedFaults: 4))
    }

    @Test func movesFartherApartThanTheLapseAreNotThrashing() throws {
        let policy = try ThrashingMitigationPolicy(parameters(lapse: .nanoseconds(1)))
        let r = try pingPong(rounds: 4, policy)
        #expect(r.cpuFaults == [64, 64, 64, 64])
        #expect(policy.statistics == .init(pins: 0, migrations: 16, pinnedFaults: 0))
    }

    /// A policy on a hand-moved clock, and a GPU write fault on page 1 of an address space.
    private func onePage(_ p: ThrashingMitigationPolicy.Parameters) throws -> (ThrashingMitigationPolicy, ManualClock, GPUFaultInfo) {
        let clock = ManualClock()
        let policy = try ThrashingMitigationPolicy(p, clock: clock.read)
        return (policy, clock, GPUFaultInfo(address: 0x1000, access: .write, vma: 0 ..< 0x10000,
                                            addressSpace: ObjectIdentifier(Self.space)))
    }
    private static let space = ManualClock()   // any object: its identity names the address space

    /// A change of direction later than `lapse` after the previous move is no thrashing
    /// event: with a threshold of 1 it pins nothing, and it does not count toward the next.
    @Test func aLateChangeOfDirectionIsNoThrashingEvent() throws {
        let (policy, clock, fault) = try onePage(parameters(window: 1, threshold: 1, lapse: .milliseconds(100)))
        let s = fault.addressSpace
        #expect(policy.resolve(fault) == .migrateToVRAM(pages: 1))
        clock.advance(milliseconds: 101)
        policy.cpuFaultMigratedToRAM(0x1000 ..< 0x2000, pages: 1, addressSpace: s)   // late: not thrashing
        #expect(!policy.isPinned(0x1000, addressSpace: s))
        #expect(policy.resolve(fault) == .mapSystemMemory(pages: 1))                 // quick: an event, pinned, mapped
        #expect(policy.isPinned(0x1000, addressSpace: s))
        #expect(policy.statistics == .init(pins: 1, migrations: 1, pinnedFaults: 1))
    }

    /// After its pin expires a window is watched afresh, even when the pin is shorter than
    /// the lapse: its first move is no thrashing event, so it is not pinned again at once.
    @Test func anExpiredPinStartsTheCountAfresh() throws {
        let (policy, clock, fault) = try onePage(parameters(window: 1, threshold: 1, pin: .milliseconds(100)))
        let s = fault.addressSpace
        #expect(policy.resolve(fault) == .migrateToVRAM(pages: 1))
        policy.cpuFaultMigratedToRAM(0x1000 ..< 0x2000, pages: 1, addressSpace: s)   // 1st change: pinned
        #expect(policy.isPinned(0x1000, addressSpace: s))
        clock.advance(milliseconds: 100)
        #expect(policy.resolve(fault) == .migrateToVRAM(pages: 1))                   // afresh: no event
        #expect(!policy.isPinned(0x1000, addressSpace: s))
        policy.cpuFaultMigratedToRAM(0x1000 ..< 0x2000, pages: 1, addressSpace: s)   // a change again: pinned
        #expect(policy.isPinned(0x1000, addressSpace: s))
        #expect(policy.statistics == .init(pins: 2, migrations: 2, pinnedFaults: 0))
    }

    /// A CPU fault window covering windows this policy never migrated does not start
    /// records for them (their first migration is no change of direction), also when the
    /// range is wider than the table; and a pin of zero never pins.
    @Test func cpuMovesUpdateKnownWindowsOnlyAndAZeroPinNeverPins() throws {
        let policy = try ThrashingMitigationPolicy(parameters(window: 1, threshold: 1))
        let mm = AddressSpace(memory: try makeMemory(mib: 16))
        let s = ObjectIdentifier(mm)
        func fault(_ page: UInt64) -> GPUFaultDecision {
            policy.resolve(GPUFaultInfo(address: page << 12, access: .read, vma: 0 ..< 1 << 40, addressSpace: s))
        }
        #expect(fault(5) == .migrateToVRAM(pages: 1))
        policy.cpuFaultMigratedToRAM(0 ..< 16 << 12, pages: 16, addressSpace: s)   // window 5 pinned; others unknown
        #expect(policy.trackedWindows == 1 && policy.isPinned(5 << 12, addressSpace: s))
        #expect(fault(9) == .migrateToVRAM(pages: 1))                               // first move of window 9
        policy.cpuFaultMigratedToRAM(0 ..< 1 << 40, pages: 2, addressSpace: s)      // wider than the table
        #expect(policy.trackedWindows == 2 && policy.isPinned(9 << 12, addressSpace: s))
        #expect(policy.statistics == .init(pins: 2, migrations: 2, pinnedFaults: 0))

        let never = try ThrashingMitigationPolicy(parameters(window: 1, threshold: 1, pin: .zero))
        for _ in 0..<3 {
            #expect(never.resolve(GPUFaultInfo(address: 0x1000, access: .read, vma: 0 ..< 0x10000, addressSpace: s))
                    == .migrateToVRAM(pages: 1))
            never.cpuFaultMigratedToRAM(0x1000 ..< 0x2000, pages: 1, addressSpace: s)
        }
        #expect(never.statistics == .init(pins: 0, migrations: 3, pinnedFaults: 0))
        withExtendedLifetime(mm) {}
    }

    @Test func thePinExpiresAndEachAddressSpaceIsTrackedApart() throws {
        let clock = ManualClock()
        let policy = try ThrashingMitigationPolicy(parameters(window: 4, threshold: 2, pin: .milliseconds(200)), clock: clock.read)
        let one = AddressSpace(memory: try makeMemory(mib: 16)), two = AddressSpace(memory: try makeMemory(mib: 16))
        let s1 = ObjectIdentifier(one), s2 = ObjectIdentifier(two)
        let window = 0x10000 as UInt64 ..< 0x14000
        func fault(_ space: ObjectIdentifier, _ address: UInt64 = 0x11000) -> GPUFaultDecision {
            policy.resolve(GPUFaultInfo(address: address, access: .write, vma: 0 ..< 1 << 30, addressSpace: space))
        }
        #expect(fault(s1) == .migrateToVRAM(pages: 4))
        policy.cpuFaultMigratedToRAM(window, pages: 1, addressSpace: s1)            // 1st change
        #expect(fault(s2) == .migrateToVRAM(pages: 4))                               // the other space
        #expect(fault(s1, 0x13000) == .mapSystemMemory(pages: 4))                    // 2nd change: pinned, mapped
        #expect(policy.isPinned(0x10000, addressSpace: s1) && !policy.isPinned(0x10000, addressSpace: s2))
        #expect(!policy.isPinned(0x14000, addressSpace: s1))                         // the next window
        #expect(fault(s1) == .mapSystemMemory(pages: 4))
        policy.cpuFaultMigratedToRAM(window, pages: 1, addressSpace: s1)            // ignored while pinned
        clock.advance(milliseconds: 199)
        #expect(policy.isPinned(0x10000, addressSpace: s1))
        clock.advance(milliseconds: 1)
        #expect(!policy.isPinned(0x10000, addressSpace: s1))
        #expect(fault(s1) == .migrateToVRAM(pages: 4))
        #expect(policy.statistics == .init(pins: 1, migrations: 3, pinnedFaults: 2))
        withExtendedLifetime((one, two)) {}
    }

    /// Four threads ping-pong their own ranges of one address space at once: the policy is
    /// asked and told concurrently, every round's bytes verify, and every window is pinned.
    @Test func concurrentPingPongsAreEachPinned() throws {
        let policy = try ThrashingMitigationPolicy(parameters())
        let memory = try makeMemory(mib: 64)
        let gpu = try device(memory, policy)
        defer { try? gpu.shutdown() }
        let pages = 64, threads = 4
        let (mm, a, _) = try makeProcess(memory, pages: pages * threads, seed: 70)
        let space = try gpu.bind(mm)
        let mismatches = NIOLockedValueBox<[String]>([])
        let workers = (0..<threads).map { t in
            TestThread {
                let base = a + UInt64(t * pages * pageSize)
                do {
                    for round in 0..<5 {
                        let pattern = PagePattern(seed: 100 + UInt64(t * 10 + round))
                        for p in 0..<pages { try space.write(at: base + UInt64(p * pageSize), bytes: pattern.page(p)) }
                        let bad = try pattern.cpuMismatches(mm, base, pages: pages)
                        if !bad.isEmpty { mismatches.withLockedValue { $0.append("thread \(t) round \(round): \(bad)") } }
                    }
                } catch {
                    mismatches.withLockedValue { $0.append("thread \(t): \(error)") }
                }
            }
        }
        for w in workers { #expect(w.join()) }
        #expect(mismatches.withLockedValue { $0 }.isEmpty)
        #expect(policy.statistics.pins == threads * pages / 16)
        #expect(policy.trackedWindows == threads * pages / 16)
        #expect(gpu.residentPages(mm, a, pages: pages * threads) == 0)
        gpu.unbind(mm)
        #expect(policy.trackedWindows == 0)
    }

    @Test func unbindForgetsAnAddressSpacesPins() throws {
        let policy = try ThrashingMitigationPolicy(parameters(window: 1, threshold: 1))
        let mm = AddressSpace(memory: try makeMemory(mib: 16))
        let s = ObjectIdentifier(mm)
        _ = policy.resolve(GPUFaultInfo(address: 0x1000, access: .read, vma: 0 ..< 0x10000, addressSpace: s))
        policy.cpuFaultMigratedToRAM(0x1000 ..< 0x2000, pages: 1, addressSpace: s)
        #expect(policy.isPinned(0x1000, addressSpace: s) && policy.trackedWindows == 1)
        policy.addressSpaceUnbound(s)
        #expect(!policy.isPinned(0x1000, addressSpace: s) && policy.trackedWindows == 0)
        withExtendedLifetime(mm) {}
    }

    /// A window of 2^52 pages or more (all of a 64-bit address space and beyond) is valid,
    /// as `.migrateToVRAM(pages: .max)` is: the whole VMA is one window, tracked as one.
    @Test func windowsAsLargeAsTheAddressSpaceAreOneWindow() throws {
        for pages in [1 << 52, Int.max] {
            let policy = try ThrashingMitigationPolicy(parameters(window: pages, threshold: 1))
            let mm = AddressSpace(memory: try makeMemory(mib: 16))
            let s = ObjectIdentifier(mm)
            let vma = 0x10000 as UInt64 ..< 0x100000
            #expect(policy.resolve(GPUFaultInfo(address: 0x20000, access: .write, vma: vma, addressSpace: s))
                    == .migrateToVRAM(pages: pages))
            policy.cpuFaultMigratedToRAM(0x80000 ..< 0x81000, pages: 1, addressSpace: s)
            #expect(policy.isPinned(0x10000, addressSpace: s) && policy.isPinned(0xff000, addressSpace: s))
            #expect(policy.resolve(GPUFaultInfo(address: 0xff000, access: .read, vma: vma, addressSpace: s))
                    == .mapSystemMemory(pages: pages))
            #expect(policy.trackedWindows == 1 && policy.statistics == .init(pins: 1, migrations: 1, pinnedFaults: 1))
            withExtendedLifetime(mm) {}
        }
    }

    /// Durations of centuries are valid and clamp: 18446744073.8 s is below `UInt64.max` ns
    /// in whole seconds, above it with its fraction.
    @Test func hugeDurationsClampInsteadOfOverflowing() throws {
        let huge = Duration.seconds(18_446_744_073) + .milliseconds(800)
        let policy = try ThrashingMitigationPolicy(parameters(window: 1, threshold: 1, lapse: huge, pin: huge))
        let mm = AddressSpace(memory: try makeMemory(mib: 16))
        let s = ObjectIdentifier(mm)
        #expect(policy.resolve(GPUFaultInfo(address: 0x1000, access: .read, vma: 0 ..< 0x10000, addressSpace: s))
                == .migrateToVRAM(pages: 1))
        policy.cpuFaultMigratedToRAM(0x1000 ..< 0x2000, pages: 1, addressSpace: s)
        #expect(policy.isPinned(0x1000, addressSpace: s))
        withExtendedLifetime(mm) {}
    }

    /// A change of direction exactly `lapse` after the previous move still counts as a
    /// thrashing event ("longest gap … that still counts").
    @Test func aChangeExactlyOneLapseLaterIsStillAnEvent() throws {
        let (policy, clock, fault) = try onePage(parameters(window: 1, threshold: 1, lapse: .milliseconds(100)))
        let s = fault.addressSpace
        #expect(policy.resolve(fault) == .migrateToVRAM(pages: 1))
        clock.advance(milliseconds: 100)
        policy.cpuFaultMigratedToRAM(0x1000 ..< 0x2000, pages: 1, addressSpace: s)
        #expect(policy.isPinned(0x1000, addressSpace: s))
        #expect(policy.statistics == .init(pins: 1, migrations: 1, pinnedFaults: 0))
    }

    /// A late change of direction starts the count over: the events before it no longer
    /// count toward the threshold.
    @Test func aLateChangeForgetsTheEventsBeforeIt() throws {
        let (policy, clock, fault) = try onePage(parameters(window: 1, threshold: 2, lapse: .milliseconds(100)))
        let s = fault.addressSpace
        #expect(policy.resolve(fault) == .migrateToVRAM(pages: 1))
        clock.advance(milliseconds: 10)
        policy.cpuFaultMigratedToRAM(0x1000 ..< 0x2000, pages: 1, addressSpace: s)   // event 1
        clock.advance(milliseconds: 200)
        #expect(policy.resolve(fault) == .migrateToVRAM(pages: 1))                   // late: count over
        clock.advance(milliseconds: 10)
        policy.cpuFaultMigratedToRAM(0x1000 ..< 0x2000, pages: 1, addressSpace: s)   // event 1 again
        #expect(!policy.isPinned(0x1000, addressSpace: s))
        clock.advance(milliseconds: 10)
        #expect(policy.resolve(fault) == .mapSystemMemory(pages: 1))                 // event 2: pinned
        #expect(policy.statistics == .init(pins: 1, migrations: 2, pinnedFaults: 1))
    }

    /// Pruning keeps a pinned window, however long ago it last moved: the pin outlives
    /// the table's growth.
    @Test func pruningKeepsPinnedWindows() throws {
        let clock = ManualClock()
        let policy = try ThrashingMitigationPolicy(parameters(window: 1, threshold: 1, lapse: .milliseconds(1),
                                                              pin: .seconds(60)), clock: clock.read)
        let mm = AddressSpace(memory: try makeMemory(mib: 16))
        let s = ObjectIdentifier(mm)
        func fault(_ w: UInt64) -> GPUFaultDecision {
            policy.resolve(GPUFaultInfo(address: w << 12, access: .read, vma: 0 ..< 1 << 30, addressSpace: s))
        }
        #expect(fault(0) == .migrateToVRAM(pages: 1))
        policy.cpuFaultMigratedToRAM(0 ..< 0x1000, pages: 1, addressSpace: s)   // pinned
        clock.advance(milliseconds: 2)                                          // idle longer than the lapse
        for w in 1...4096 as ClosedRange<UInt64> { _ = fault(w) }               // the 4096th record prunes
        #expect(policy.isPinned(0, addressSpace: s))
        #expect(fault(0) == .mapSystemMemory(pages: 1))
        #expect(policy.trackedWindows == 4097)
        withExtendedLifetime(mm) {}
    }

    @Test func idleWindowsArePrunedAsTheTableGrows() throws {
        let clock = ManualClock()
        let policy = try ThrashingMitigationPolicy(parameters(window: 1, lapse: .milliseconds(1), pin: .zero), clock: clock.read)
        let mm = AddressSpace(memory: try makeMemory(mib: 16))
        let s = ObjectIdentifier(mm)
        for w in 0..<4096 as Range<UInt64> {
            _ = policy.resolve(GPUFaultInfo(address: w << 12, access: .read, vma: 0 ..< 1 << 30, addressSpace: s))
        }
        #expect(policy.trackedWindows == 4096)
        clock.advance(milliseconds: 2)
        _ = policy.resolve(GPUFaultInfo(address: 1 << 29, access: .read, vma: 0 ..< 1 << 30, addressSpace: s))
        #expect(policy.trackedWindows == 1)
        withExtendedLifetime(mm) {}
    }

    @Test func invalidParametersThrow() {
        var p = ThrashingMitigationPolicy.Parameters()
        for change: (inout ThrashingMitigationPolicy.Parameters) -> Void in [
            { $0.windowPages = 0 }, { $0.threshold = 0 }, { $0.lapse = .zero },
            { $0.pin = .milliseconds(-1) },
        ] {
            p = .init()
            change(&p)
            #expect(throws: DeviceError.invalidArgument) { try ThrashingMitigationPolicy(p) }
        }
        #expect(ThrashingMitigationPolicy.Parameters().isValid)
    }
}

/// `MigrationPolicy.problem(maxBatch:)` names what `setPolicy` refuses.
@Suite struct MigrationPolicyProblemTests {
    @Test func eachInvalidSettingIsNamedAndRefused() throws {
        #expect(MigrationPolicy().problem() == nil)
        let cases: [(String, (inout MigrationPolicy) -> Void)] = [
            ("batchPages 0 is outside 1...4096 (the engine's maxBatch)", { $0.batchPages = 0 }),
            ("batchPages 5000 is outside 1...4096 (the engine's maxBatch)", { $0.batchPages = 5000 }),
            ("pipelineDepth 9 is outside 1...8", { $0.pipelineDepth = 9 }),
            ("committedCopyRetries -1 is negative", { $0.committedCopyRetries = -1 }),
            ("cpuCopyFaultPages -2 is negative", { $0.cpuCopyFaultPages = -2 }),
            ("cpuFaultGranularity .faultAround(pages: 0) needs at least 1 page", { $0.cpuFaultGranularity = .faultAround(pages: 0) }),
            ("gpuFault .migrateToVRAM(pages: 0) needs at least 1 page", { $0.gpuFault = .migrateToVRAM(pages: 0) }),
            ("gpuFault .mapSystemMemory(pages: -1) needs at least 1 page", { $0.gpuFault = .mapSystemMemory(pages: -1) }),
        ]
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        for (message, change) in cases {
            var p = MigrationPolicy()
            change(&p)
            #expect(p.problem() == message)
            #expect(throws: DeviceError.invalidArgument) { try gpu.setPolicy(p) }
        }
        var negative = MigrationPolicy()
        negative.minimumResidency = .milliseconds(-1)
        #expect(negative.problem()?.hasPrefix("minimumResidency") == true)
        #expect(MigrationPolicy().problem(maxBatch: 256)?.contains("batchPages 512") == true)
    }
}

/// Maps on every fault and counts GPU accesses to system memory per 4-page window: the
/// `threshold`-th asks for the window's migration (an access-counter policy).
private final class AccessCounter: GPUFaultPolicy, @unchecked Sendable {
    let threshold: Int
    let counting: Bool
    let counts = NIOLockedValueBox<[UInt64: Int]>([:])
    let seen = NIOLockedValueBox<[GPURemoteAccess]>([])

    init(threshold: Int, counting: Bool = true) {
        self.threshold = threshold
        self.counting = counting
    }

    var countsRemoteAccesses: Bool { counting }
    func resolve(_ fault: GPUFaultInfo) -> GPUFaultDecision { .mapSystemMemory(pages: 4) }
    func remoteAccess(_ access: GPURemoteAccess) -> GPURemoteAccessResponse {
        seen.withLockedValue { $0.append(access) }
        let n = counts.withLockedValue { c -> Int in
            c[access.address >> 14, default: 0] += 1
            return c[access.address >> 14]!
        }
        return n == threshold ? .migrateToVRAM(pages: 4) : .none
    }
}

@Suite struct RemoteAccessTests {
    @Test func theThresholdthRemoteAccessMigratesTheWindow() throws {
        let memory = try makeMemory(mib: 64)
        let policy = AccessCounter(threshold: 3)
        var p = MigrationPolicy()
        p.gpuFault = .custom(policy)
        let gpu = try makeDevice(memory, vramMiB: 8, policy: p)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 8, seed: 90)
        let space = try gpu.bind(mm)
        // The first read faults and maps pages 0..<4; it is remote access 1 of window 0.
        #expect(try space.read(at: a, count: pageSize) == pattern.page(0))
        #expect(try space.read(at: a + UInt64(pageSize), count: pageSize) == pattern.page(1))   // 2
        #expect(gpu.residentPages(mm, a, pages: 8) == 0)
        try space.write(at: a + 2 * UInt64(pageSize), bytes: [7])                               // 3: migrate
        #expect(gpu.residentPages(mm, a, pages: 8) == 4)
        #expect(space.entry(at: a).kind == .vram)
        // VRAM accesses are not remote; the other window's are counted from 1 again.
        #expect(try space.read(at: a + 3 * UInt64(pageSize), count: pageSize) == pattern.page(3))
        #expect(try space.read(at: a + 4 * UInt64(pageSize), count: pageSize) == pattern.page(4))
        #expect(gpu.counters[.remoteAccesses] == 4 && gpu.counters[.remoteAccessMigrations] == 1)
        #expect(gpu.counters[.gpuFaults] == 2)
        let seen = policy.seen.withLockedValue { $0 }
        #expect(seen.map(\.access) == [.read, .read, .write, .read])
        #expect(seen.map(\.address) == [a, a + 4096, a + 8192, a + 16384])
        #expect(seen.allSatisfy { $0.addressSpace == ObjectIdentifier(mm) })
        #expect(try mm.read(at: a + 2 * UInt64(pageSize), count: 1) == [7])
        #expect(try pattern.cpuMismatches(mm, a, pages: 8) == [2])   // the page the GPU wrote
    }

    @Test func policiesThatDoNotCountAreNotToldAndSetPolicyTogglesIt() throws {
        let memory = try makeMemory(mib: 64)
        var p = MigrationPolicy()
        p.gpuFault = .custom(AccessCounter(threshold: 1, counting: false))
        let gpu = try makeDevice(memory, vramMiB: 8, policy: p)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 8, seed: 91)
        let space = try gpu.bind(mm)
        #expect(try pattern.gpuMismatches(space, a, pages: 8).isEmpty)
        #expect(gpu.counters[.remoteAccesses] == 0 && gpu.residentPages(mm, a, pages: 8) == 0)
        let counting = AccessCounter(threshold: 1)
        p.gpuFault = .custom(counting)
        try gpu.setPolicy(p)
        #expect(try space.read(at: a + 5 * UInt64(pageSize), count: pageSize) == pattern.page(5))   // mapped: remote
        #expect(gpu.counters[.remoteAccesses] == 1 && gpu.residentPages(mm, a, pages: 8) == 4)
        p.gpuFault = .mapSystemMemory(pages: 4)
        try gpu.setPolicy(p)
        #expect(try space.read(at: a, count: pageSize) == pattern.page(0))
        #expect(gpu.counters[.remoteAccesses] == 1)
    }

    /// A migration asked for a window that cannot move (a shared VMA) leaves it mapped.
    @Test func aWindowThatCannotMoveStaysMapped() throws {
        let memory = try makeMemory(mib: 64)
        var p = MigrationPolicy()
        p.gpuFault = .custom(AccessCounter(threshold: 1))
        let gpu = try makeDevice(memory, vramMiB: 8, policy: p)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let shared = try mm.mmap(.anonymousShared, length: 4 * pageSize)
        try mm.write(at: shared, bytes: [5, 6])
        let space = try gpu.bind(mm)
        #expect(try space.read(at: shared, count: 2) == [5, 6])
        #expect(try space.read(at: shared, count: 2) == [5, 6])
        #expect(gpu.counters[.remoteAccesses] == 2 && gpu.counters[.remoteAccessMigrations] == 1)
        #expect(gpu.counters[.pagesToDevice] == 0)
        #expect(space.entry(at: shared).kind == .system)
    }
}
