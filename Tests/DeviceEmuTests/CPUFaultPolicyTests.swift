import DMAEngine
import DeviceEmu
import HostMM
import NIOConcurrencyHelpers
import Testing

/// A `CPUFaultPolicy` that records what it is asked and answers with `answer`.
private final class RecordingCPUPolicy: CPUFaultPolicy, @unchecked Sendable {
    let answer: @Sendable (CPUFaultInfo) -> Range<UInt64>
    let faults = NIOLockedValueBox<[CPUFaultInfo]>([])
    let unbound = NIOLockedValueBox<[ObjectIdentifier]>([])

    init(_ answer: @escaping @Sendable (CPUFaultInfo) -> Range<UInt64>) { self.answer = answer }

    func window(for fault: CPUFaultInfo) -> Range<UInt64> {
        faults.withLockedValue { $0.append(fault) }
        return answer(fault)
    }
    func addressSpaceUnbound(_ addressSpace: ObjectIdentifier) { unbound.withLockedValue { $0.append(addressSpace) } }
}

private func device(_ memory: PhysicalMemory, _ policy: any CPUFaultPolicy) throws -> Device {
    var p = MigrationPolicy()
    p.cpuFaultGranularity = .custom(policy)
    return try makeDevice(memory, vramMiB: 8, policy: p)
}

@Suite struct CPUFaultPolicyTests {
    @Test func theDeviceAsksThePolicyAndBringsBackItsWindow() throws {
        let memory = try makeMemory(mib: 64)
        let (mm, a, pattern) = try makeProcess(memory, pages: 64, seed: 81)
        let page = UInt64(pageSize)
        // Fault at page 10: bring back pages 8..<20, given with unaligned bounds.
        let policy = RecordingCPUPolicy { _ in a + 8 * page + 100 ..< a + 19 * page + 1 }
        let gpu = try device(memory, policy)
        defer { try? gpu.shutdown() }
        try gpu.migrateToDevice(mm, range: a + 4 * page ..< a + 36 * page)
        #expect(try mm.read(at: a + 10 * page + 7, count: 1) == [pattern.page(10)[7]])
        #expect(policy.faults.withLockedValue { $0 } == [
            CPUFaultInfo(address: a + 10 * page, vma: a ..< a + 64 * page, addressSpace: ObjectIdentifier(mm),
                         allocation: a + 4 * page ..< a + 36 * page),
        ])
        #expect(gpu.counters[.cpuFaults] == 1 && gpu.counters[.pagesToRAM] == 12)
        #expect(gpu.residentPages(mm, a, pages: 64) == 32 - 12)
        // A CPU write says so (pages 8..<20 are back in RAM; page 30 is still in VRAM).
        try mm.write(at: a + 30 * page, bytes: pattern.page(30))
        #expect(policy.faults.withLockedValue { $0.last.map { ($0.address, $0.isWrite) } } ?? (0, false) == (a + 30 * page, true))
        #expect(try pattern.cpuMismatches(mm, a, pages: 64).isEmpty)
    }

    @Test func windowsWithoutTheFaultingPageOrOutsideTheVMAAreRepaired() throws {
        let memory = try makeMemory(mib: 64)
        let (mm, a, pattern) = try makeProcess(memory, pages: 16, seed: 82)
        let page = UInt64(pageSize)
        let answers = NIOLockedValueBox<[Range<UInt64>]>([
            a + 12 * page ..< a + 14 * page,        // misses the fault at page 0: that page alone
            0 ..< UInt64.max,                        // the whole VMA (clamped)
        ])
        let policy = RecordingCPUPolicy { f in answers.withLockedValue { $0.isEmpty ? f.address ..< f.address : $0.removeFirst() } }
        let gpu = try device(memory, policy)
        defer { try? gpu.shutdown() }
        try gpu.migrateToDevice(mm, range: a ..< a + 16 * page)
        #expect(try mm.read(at: a, count: pageSize) == pattern.page(0))
        #expect(gpu.counters[.pagesToRAM] == 1 && gpu.residentPages(mm, a, pages: 16) == 15)
        #expect(try mm.read(at: a + page, count: pageSize) == pattern.page(1))
        #expect(gpu.counters[.pagesToRAM] == 16 && gpu.counters[.cpuFaults] == 2)
        // An empty answer is the faulting page alone too.
        try gpu.migrateToDevice(mm, range: a ..< a + 16 * page)
        #expect(try mm.read(at: a + 5 * page, count: pageSize) == pattern.page(5))
        #expect(gpu.residentPages(mm, a, pages: 16) == 15)
    }

    @Test func unbindTellsTheCPUPolicyAndEqualityIsIdentity() throws {
        let memory = try makeMemory(mib: 64)
        let policy = RecordingCPUPolicy { $0.address ..< $0.address + 4096 }
        let gpu = try device(memory, policy)
        let mm = AddressSpace(memory: memory)
        _ = try gpu.bind(mm)
        gpu.unbind(mm)
        #expect(policy.unbound.withLockedValue { $0 } == [ObjectIdentifier(mm)])
        try gpu.shutdown()
        let other = RecordingCPUPolicy { $0.address ..< $0.address + 4096 }
        #expect(MigrationPolicy.CPUFaultGranularity.custom(policy) == .custom(policy))
        #expect(MigrationPolicy.CPUFaultGranularity.custom(policy) != .custom(other))
        #expect(MigrationPolicy.CPUFaultGranularity.faultAround(pages: 4) == .faultAround(pages: 4))
        #expect(MigrationPolicy.CPUFaultGranularity.page != .wholeAllocation)
    }
}

@Suite struct SequentialPrefetchPolicyTests {
    private let page = UInt64(pageSize)
    private let space = ObjectIdentifier(SequentialPrefetchPolicyTests.Token.shared)
    private final class Token: Sendable { static let shared = Token() }

    private func fault(_ policy: SequentialPrefetchPolicy, _ p: UInt64, vmaPages: UInt64 = 1 << 20,
                       space: ObjectIdentifier? = nil) -> Int {
        let r = policy.window(for: CPUFaultInfo(address: p * page, vma: 0 ..< vmaPages * page, addressSpace: space ?? self.space))
        #expect(r.lowerBound == p * page)
        return Int((r.upperBound - r.lowerBound) / page)
    }

    @Test func aSequentialScanDoublesTheWindowUpToTheMaximum() throws {
        var params = SequentialPrefetchPolicy.Parameters()
        params.maxPages = 16
        let policy = try SequentialPrefetchPolicy(params)
        var p: UInt64 = 100
        var sizes: [Int] = []
        for _ in 0..<7 {
            let n = fault(policy, p)
            sizes.append(n)
            p += UInt64(n)
        }
        #expect(sizes == [1, 2, 4, 8, 16, 16, 16])
        // A fault inside the last window (a page that did not move) repeats its size.
        #expect(fault(policy, p - 3) == 16)
        #expect(policy.statistics == .init(streamsStarted: 1, sequentialFaults: 7, pagesRequested: 1 + 2 + 4 + 8 + 16 * 4))
    }

    @Test func randomAndBackwardFaultsTakeOnePage() throws {
        let policy = try SequentialPrefetchPolicy()
        for p in stride(from: 5000 as UInt64, to: 4000, by: -1) { #expect(fault(policy, p) == 1) }
        for p: UInt64 in [7, 900, 33, 12_000, 9] { #expect(fault(policy, p) == 1) }
        #expect(policy.statistics.sequentialFaults == 0)
    }

    @Test func interleavedScansAreEachDetectedAndTheOldestStreamGoes() throws {
        var params = SequentialPrefetchPolicy.Parameters()
        params.streams = 2
        let policy = try SequentialPrefetchPolicy(params)
        var a: UInt64 = 0, b: UInt64 = 10_000
        var sizesA: [Int] = [], sizesB: [Int] = []
        for _ in 0..<4 {
            let n = fault(policy, a); sizesA.append(n); a += UInt64(n)
            let m = fault(policy, b); sizesB.append(m); b += UInt64(m)
        }
        #expect(sizesA == [1, 2, 4, 8] && sizesB == [1, 2, 4, 8])
        // A third scan evicts the least recently used stream (a's), so a starts over.
        #expect(fault(policy, 50_000) == 1)
        #expect(fault(policy, b) == 16)
        #expect(fault(policy, a) == 1)
    }

    /// A maximum of `Int.max` pages: the window keeps doubling (clamped to the VMA) and
    /// never overflows.
    @Test func anUnboundedMaximumNeverOverflows() throws {
        var params = SequentialPrefetchPolicy.Parameters()
        params.maxPages = .max
        let policy = try SequentialPrefetchPolicy(params)
        var p: UInt64 = 0
        for _ in 0..<70 { p += UInt64(fault(policy, p, vmaPages: 1 << 35)) }
        #expect(policy.statistics.sequentialFaults == 69)   // all but the first
    }

    @Test func windowsStopAtTheVMAsEnd() throws {
        let policy = try SequentialPrefetchPolicy()
        #expect(fault(policy, 60, vmaPages: 64) == 1)
        #expect(fault(policy, 61, vmaPages: 64) == 2)
        #expect(fault(policy, 63, vmaPages: 64) == 1)   // 4 wanted, 1 left
    }

    /// Parameters near `Int.max` are valid: doubling a window saturates at `maxPages`
    /// rather than overflowing.
    @Test func hugeWindowsSaturateInsteadOfOverflowing() throws {
        var params = SequentialPrefetchPolicy.Parameters()
        params.initialPages = 1 << 62
        params.maxPages = .max
        let policy = try SequentialPrefetchPolicy(params)
        #expect(fault(policy, 0, vmaPages: 4) == 4)                       // 2^62 wanted, 4 left
        #expect(fault(policy, 4, vmaPages: 16) == 12)                     // 2^63 wanted: Int.max
        #expect(fault(policy, 16, vmaPages: 1 << 20) == (1 << 20) - 16)   // Int.max again
        #expect(policy.statistics == .init(streamsStarted: 1, sequentialFaults: 2, pagesRequested: 1 << 20))
    }

    @Test func unboundAndTooManyAddressSpacesAreForgotten() throws {
        let policy = try SequentialPrefetchPolicy()
        let tokens = (0..<300).map { _ in Token() }
        for t in tokens { _ = fault(policy, 1, space: ObjectIdentifier(t)) }
        #expect(policy.trackedAddressSpaces == 256)
        // The latest spaces stayed: the last one continues its stream.
        #expect(fault(policy, 2, space: ObjectIdentifier(tokens[299])) == 2)
        policy.addressSpaceUnbound(ObjectIdentifier(tokens[299]))
        #expect(policy.trackedAddressSpaces == 255)
        #expect(fault(policy, 3, space: ObjectIdentifier(tokens[299])) == 1)
    }

    /// The stream a new one replaces is the least recently used, not the first started:
    /// a continued stream is kept even when it is the oldest.
    @Test func theStreamReplacedIsTheLeastRecentlyUsedNotTheFirstStarted() throws {
        var params = SequentialPrefetchPolicy.Parameters()
        params.streams = 2
        let policy = try SequentialPrefetchPolicy(params)
        #expect(fault(policy, 0) == 1)          // stream a (first slot)
        #expect(fault(policy, 10_000) == 1)     // stream b
        #expect(fault(policy, 1) == 2)          // a continues: b is now the least recently used
        #expect(fault(policy, 50_000) == 1)     // c replaces b
        #expect(fault(policy, 3) == 4)          // a is still tracked
        #expect(fault(policy, 50_001) == 2)     // and so is c
        #expect(fault(policy, 10_001) == 1)     // b starts over
        #expect(policy.statistics == .init(streamsStarted: 4, sequentialFaults: 3, pagesRequested: 1 + 1 + 2 + 1 + 4 + 2 + 1))
    }

    /// The bounds themselves are valid: `initialPages == maxPages` (a fixed window) and
    /// 1 or 64 streams.
    @Test func boundaryParametersAreAccepted() throws {
        var p = SequentialPrefetchPolicy.Parameters()
        p.initialPages = 4
        p.maxPages = 4
        #expect(p.problem == nil)
        let policy = try SequentialPrefetchPolicy(p)
        #expect(fault(policy, 0) == 4)
        #expect(fault(policy, 4) == 4)          // doubling stops at once at the maximum
        for streams in [1, 64] {
            var q = SequentialPrefetchPolicy.Parameters()
            q.streams = streams
            #expect(q.isValid)
            _ = try SequentialPrefetchPolicy(q)
        }
    }

    @Test func invalidParametersThrow() {
        for change: (inout SequentialPrefetchPolicy.Parameters) -> Void in [
            { $0.initialPages = 0 }, { $0.maxPages = 0 }, { $0.initialPages = 8; $0.maxPages = 4 }, { $0.streams = 0 }, { $0.streams = 65 },
        ] {
            var p = SequentialPrefetchPolicy.Parameters()
            change(&p)
            #expect(throws: DeviceError.invalidArgument) { try SequentialPrefetchPolicy(p) }
        }
    }

    /// On a device: a sequential CPU read-back of 1024 migrated pages takes 11 faults
    /// (windows 1, 2, 4 … 256, then 512, then the last page), a backward one 1024, and
    /// every byte arrives either way.
    @Test func aSequentialReadBackTakesLogarithmicallyFewFaults() throws {
        let memory = try makeMemory(mib: 64)
        let policy = try SequentialPrefetchPolicy()
        let gpu = try device(memory, policy)
        defer { try? gpu.shutdown() }
        let pages = 1024
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 83)
        try gpu.migrateToDevice(mm, range: a ..< a + UInt64(pages * pageSize))
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
        #expect(gpu.counters[.cpuFaults] == 11 && gpu.counters[.pagesToRAM] == pages)
        try gpu.migrateToDevice(mm, range: a ..< a + UInt64(pages * pageSize))
        for p in (0..<pages).reversed() {
            #expect(try mm.read(at: a + UInt64(p * pageSize), count: pageSize) == pattern.page(p))
        }
        #expect(gpu.counters[.cpuFaults] == 11 + pages && gpu.counters[.pagesToRAM] == 2 * pages)
    }
}
