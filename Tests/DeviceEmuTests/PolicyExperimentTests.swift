import DeviceEmu
import HostMM
import NIOConcurrencyHelpers
import Testing

// A driver author's policy experiment, written against the public API only: two policies
// of one's own (an access-counter GPU-fault policy and a stride-detecting CPU-fault
// policy) compared with the built-in ones on a few access patterns. Every assertion is a
// count that follows from the policies' rules, and every workload checks its bytes.

// MARK: - The policies under test

/// nvidia-uvm's access counters, approximated with GPU faults: the GPU maps system memory
/// for the first `threshold` faults of a region (2 MiB: uvm's access-counter granularity),
/// and migrates once the region has faulted that often, so memory the GPU touches a
/// little stays put and memory it keeps touching moves.
///
/// uvm counts the GPU's accesses to system memory it has mapped; this device reports only
/// faults, so a window mapped once never counts again (see the friction notes in the
/// report: a region is "hot" when many of its windows fault, not when one is hammered).
///
/// Threads: any; one lock.
final class AccessCounterPolicy: GPUFaultPolicy, @unchecked Sendable {
    enum Promotion: Sendable, Equatable {
        /// A hot region's fault migrates the fault window only.
        case window
        /// A hot region's fault migrates the whole region (windows mapped earlier included).
        case region
    }

    struct Parameters: Sendable, Equatable {
        /// Faults of a region resolved by mapping before it migrates (0: always migrate).
        var threshold = 4
        var windowPages = 16
        var regionPages = 512
        var promotion = Promotion.window
        /// A CPU fault bringing pages of a region back to RAM restarts its count: the
        /// region must prove itself hot again (a damper for CPU/GPU ping-pong).
        var resetOnCPUFault = false
    }

    struct Statistics: Sendable, Equatable {
        var mapped = 0
        var migrated = 0
        var resets = 0
    }

    let parameters: Parameters
    private struct Key: Hashable {
        var space: ObjectIdentifier
        var region: UInt64
    }
    private let lock = NIOLock()
    // Guarded by `lock`:
    private var faults: [Key: Int] = [:]
    private var stats = Statistics()

    init(_ parameters: Parameters = Parameters()) {
        precondition(parameters.threshold >= 0 && parameters.windowPages >= 1
                     && parameters.regionPages >= parameters.windowPages)
        self.parameters = parameters
    }

    var statistics: Statistics { lock.withLock { stats } }

    private var regionBytes: UInt64 { UInt64(parameters.regionPages) << 12 }

    func resolve(_ fault: GPUFaultInfo) -> GPUFaultDecision {
        let k = Key(space: fault.addressSpace, region: fault.address / regionBytes)
        let hot: Bool = lock.withLock {
            faults[k, default: 0] += 1
            let hot = faults[k]! > parameters.threshold
            if hot { stats.migrated += 1 } else { stats.mapped += 1 }
            return hot
        }
        guard hot else { return .mapSystemMemory(pages: parameters.windowPages) }
        return .migrateToVRAM(pages: parameters.promotion == .region ? parameters.regionPages : parameters.windowPages)
    }

    func cpuFaultMigratedToRAM(_ range: Range<UInt64>, pages: Int, addressSpace: ObjectIdentifier) {
        guard parameters.resetOnCPUFault, pages > 0, !range.isEmpty else { return }
        lock.withLock {
            for r in (range.lowerBound / regionBytes)...((range.upperBound - 1) / regionBytes) {
                let k = Key(space: addressSpace, region: r)
                if let n = faults[k], n > 0 {
                    faults[k] = 0
                    stats.resets += 1
                }
            }
        }
    }

    func addressSpaceUnbound(_ addressSpace: ObjectIdentifier) {
        lock.withLock { faults = faults.filter { $0.key.space != addressSpace } }
    }
}

/// A CPU-fault policy that detects a constant stride between consecutive faults of an
/// address space (forward or backward, in pages) and, once two faults in a row agree,
/// brings back the contiguous range covering the next `depth` accesses along it. A window
/// is one contiguous range, so a stride of s pages brings back s − 1 unwanted pages per
/// access; strides whose window would exceed `maxPages` fall back to one page.
///
/// Threads: any; one lock.
final class StridePrefetchPolicy: CPUFaultPolicy, @unchecked Sendable {
    struct Parameters: Sendable, Equatable {
        /// Accesses a confirmed stride's window covers (the faulting one included).
        var depth = 8
        /// Largest window.
        var maxPages = 64
    }

    struct Statistics: Sendable, Equatable {
        var singlePages = 0
        var prefetches = 0
    }

    let parameters: Parameters
    private struct Stream {
        /// The last page the stream's accesses reached (predicted ones included), in pages.
        var last: Int64
        var stride: Int64?
    }
    private let lock = NIOLock()
    // Guarded by `lock`:
    private var streams: [ObjectIdentifier: Stream] = [:]
    private var stats = Statistics()

    init(_ parameters: Parameters = Parameters()) {
        precondition(parameters.depth >= 1 && parameters.maxPages >= 1)
        self.parameters = parameters
    }

    var statistics: Statistics { lock.withLock { stats } }

    func window(for fault: CPUFaultInfo) -> Range<UInt64> {
        let page = Int64(fault.address >> 12)
        let lo = Int64(fault.vma.lowerBound >> 12), hi = Int64(fault.vma.upperBound >> 12)
        return lock.withLock {
            let previous = streams[fault.addressSpace]
            let stride = previous.map { page - $0.last }
            let span = stride.map { abs($0) * Int64(parameters.depth - 1) } ?? 0
            if let stride, stride != 0, stride == previous?.stride, span + 1 <= Int64(parameters.maxPages) {
                let first = stride > 0 ? page : max(lo, page - span)
                let end = stride > 0 ? min(hi, page + span + 1) : page + 1
                streams[fault.addressSpace] = Stream(last: page + stride * Int64(parameters.depth - 1), stride: stride)
                stats.prefetches += 1
                return UInt64(first) << 12 ..< UInt64(end) << 12
            }
            streams[fault.addressSpace] = Stream(last: page, stride: stride)
            stats.singlePages += 1
            return UInt64(page) << 12 ..< UInt64(page + 1) << 12
        }
    }

    func addressSpaceUnbound(_ addressSpace: ObjectIdentifier) {
        lock.withLock { _ = streams.removeValue(forKey: addressSpace) }
    }
}

// MARK: - The experiment harness

/// Where the working set goes: 2 MiB-aligned, so regions and windows line up with the VMA.
private let base: UInt64 = 0x4000_0000

/// One run: a device with `policy`, a process whose `pages` pages at `base` hold pattern
/// `seed`, bound to the GPU. `body` runs the workload; the counters are read after it.
private struct Run {
    let memory: PhysicalMemory
    let gpu: Device
    let mm: AddressSpace
    let space: GPUAddressSpace
    let pattern: PagePattern

    init(policy: MigrationPolicy, pages: Int, seed: UInt64 = 7) throws {
        memory = try makeMemory(mib: 64)
        gpu = try makeDevice(memory, vramMiB: 16, policy: policy)
        mm = AddressSpace(memory: memory)
        #expect(try mm.mmap(length: pages * pageSize, at: base) == base)
        pattern = PagePattern(seed: seed)
        try pattern.fill(mm, base, pages: pages)
        space = try gpu.bind(mm)
    }

    func address(_ page: Int) -> UInt64 { base + UInt64(page * pageSize) }

    /// Every counter a comparison looks at.
    var counts: Counts {
        Counts(gpuFaults: gpu.counters[.gpuFaults], pagesToDevice: gpu.counters[.pagesToDevice],
               cpuFaults: gpu.counters[.cpuFaults], pagesToRAM: gpu.counters[.pagesToRAM])
    }
}

private struct Counts: Equatable, CustomStringConvertible {
    var gpuFaults = 0, pagesToDevice = 0, cpuFaults = 0, pagesToRAM = 0
    var description: String { "gpu \(gpuFaults) →dev \(pagesToDevice) cpu \(cpuFaults) →ram \(pagesToRAM)" }
}

private func policy(gpu: MigrationPolicy.GPUFaultResolution, cpu: MigrationPolicy.CPUFaultGranularity = .page) -> MigrationPolicy {
    var p = MigrationPolicy()
    p.gpuFault = gpu
    p.cpuFaultGranularity = cpu
    return p
}

/// A thrashing policy whose timing never decides a test: every direction change counts
/// (a 10 s lapse) and a pin outlives the test.
private func makeThrashingPolicy() throws -> ThrashingMitigationPolicy {
    var t = ThrashingMitigationPolicy.Parameters()
    t.windowPages = 16
    t.threshold = 3
    t.lapse = .seconds(10)
    t.pin = .seconds(600)
    return try ThrashingMitigationPolicy(t)
}

/// The GPU-fault policies compared, each with what it is expected to do.
private enum GPUCase: CaseIterable {
    case migrate, map, thrashing, counterWindow, counterRegion, counterReset

    func resolution() throws -> MigrationPolicy.GPUFaultResolution {
        switch self {
        case .migrate: return .migrateToVRAM(pages: 16)
        case .map: return .mapSystemMemory(pages: 16)
        case .thrashing: return .custom(try makeThrashingPolicy())
        case .counterWindow: return .custom(AccessCounterPolicy(.init(threshold: 4)))
        case .counterRegion: return .custom(AccessCounterPolicy(.init(threshold: 4, promotion: .region)))
        case .counterReset: return .custom(AccessCounterPolicy(.init(threshold: 2, resetOnCPUFault: true)))
        }
    }
}

// MARK: - Tests

@Suite struct PolicyExperimentTests {
    @Test func accessCounterMapsTheFirstFaultsOfARegionThenMigrates() {
        let p = AccessCounterPolicy(.init(threshold: 2, resetOnCPUFault: true))
        let a = ObjectIdentifier(p), b = ObjectIdentifier(AccessCounterPolicy.self)
        let vma: Range<UInt64> = base ..< base + (8 << 20)
        func fault(_ offset: UInt64, _ space: ObjectIdentifier = a) -> GPUFaultDecision {
            p.resolve(GPUFaultInfo(address: base + offset, access: .read, vma: vma, addressSpace: space))
        }
        let map = GPUFaultDecision.mapSystemMemory(pages: 16), migrate = GPUFaultDecision.migrateToVRAM(pages: 16)
        // Region 0: faults 1 and 2 map, the third migrates (anywhere in the region).
        #expect(fault(0) == map)
        #expect(fault(0x10000) == map)
        #expect(fault(0x1F_F000) == migrate)
        // Region 1 and another address space count on their own.
        #expect(fault(0x20_0000) == map)
        #expect(fault(0, b) == map)
        // A CPU fault in region 0 restarts its count; region 1's is untouched.
        p.cpuFaultMigratedToRAM(base ..< base + 0x1000, pages: 1, addressSpace: a)
        #expect(fault(0x2000) == map)
        #expect(fault(0x20_0000) == map)
        #expect(fault(0x20_1000) == migrate)
        // Unbinding forgets the address space.
        p.addressSpaceUnbound(a)
        #expect(fault(0x20_1000) == map)
        #expect(p.statistics == .init(mapped: 7, migrated: 2, resets: 1))
        // Threshold 0 migrates at once; `.region` migrates the whole 2 MiB.
        #expect(AccessCounterPolicy(.init(threshold: 0, promotion: .region))
            .resolve(GPUFaultInfo(address: base, access: .write, vma: vma, addressSpace: a)) == .migrateToVRAM(pages: 512))
    }

    @Test func strideDetectionPrefetchesAlongAConfirmedStride() {
        let p = StridePrefetchPolicy(.init(depth: 4, maxPages: 16))
        let s = ObjectIdentifier(p)
        let vma: Range<UInt64> = base ..< base + UInt64(64 * pageSize)
        func fault(_ page: Int) -> Range<Int> {
            let w = p.window(for: CPUFaultInfo(address: base + UInt64(page * pageSize), vma: vma, addressSpace: s))
            return Int((w.lowerBound - base) >> 12) ..< Int((w.upperBound - base) >> 12)
        }
        // Forward stride 3: two faults confirm it, the third covers 4 accesses (10 pages).
        #expect(fault(0) == 0 ..< 1)
        #expect(fault(3) == 3 ..< 4)
        #expect(fault(6) == 6 ..< 16)
        #expect(fault(18) == 18 ..< 28)          // the next access the window did not cover
        // Backward by one page, clamped to the VMA's start.
        #expect(fault(40) == 40 ..< 41)          // stride changed: one page
        #expect(fault(39) == 39 ..< 40)
        #expect(fault(38) == 35 ..< 39)
        #expect(fault(34) == 31 ..< 35)
        // A stride whose window would exceed maxPages stays at one page.
        #expect(fault(10) == 10 ..< 11)
        #expect(fault(15) == 15 ..< 16)
        #expect(fault(20) == 20 ..< 36)          // 5 × 3 + 1 = 16 pages: allowed
        _ = fault(63)
        #expect(fault(63 - 6) == 57 ..< 58)
        #expect(fault(51) == 51 ..< 52)          // 6 × 3 + 1 = 19 > 16
        #expect(p.statistics == .init(singlePages: 9, prefetches: 5))
    }

    /// The GPU reads a 4 MiB working set (two regions) three times, then the CPU reads it.
    @Test func gpuHeavyReuse() throws {
        let pages = 1024, windows = pages / 16, regions = pages / 512
        for c in GPUCase.allCases {
            let run = try Run(policy: policy(gpu: try c.resolution()), pages: pages)
            defer { try? run.gpu.shutdown() }
            for _ in 0..<3 { #expect(try run.pattern.gpuMismatches(run.space, base, pages: pages) == [], "\(c)") }
            let gpuPhase = run.counts
            #expect(try run.pattern.cpuMismatches(run.mm, base, pages: pages) == [], "\(c)")
            let after = run.counts
            // Only the first round faults: every policy's answer maps or migrates a whole window.
            let migrated: Int
            switch c {
            case .migrate, .thrashing: migrated = pages
            case .map: migrated = 0
            case .counterWindow: migrated = regions * (32 - 4) * 16       // the first 4 windows of a region stay mapped
            case .counterRegion: migrated = pages                           // the 5th fault takes the whole region
            case .counterReset: migrated = regions * (32 - 2) * 16
            }
            let faults = c == .counterRegion ? regions * 5 : windows
            #expect(gpuPhase == Counts(gpuFaults: faults, pagesToDevice: migrated), "\(c): \(gpuPhase)")
            // The CPU then faults once per page it finds in VRAM (`.page`).
            #expect(after == Counts(gpuFaults: faults, pagesToDevice: migrated, cpuFaults: migrated, pagesToRAM: migrated),
                    "\(c): \(after)")
        }
    }

    /// Round after round the GPU overwrites one 2 MiB region, then the CPU reads it back.
    @Test func cpuGPUPingPong() throws {
        let pages = 512, windows = pages / 16, rounds = 6
        for c in GPUCase.allCases {
            let run = try Run(policy: policy(gpu: try c.resolution()), pages: pages)
            defer { try? run.gpu.shutdown() }
            for r in 1...rounds {
                let data = PagePattern(seed: UInt64(100 + r))
                for p in 0..<pages { try run.space.write(at: run.address(p), bytes: data.page(p)) }
                #expect(try data.cpuMismatches(run.mm, base, pages: pages) == [], "\(c) round \(r)")
            }
            // Per round: GPU faults, and windows migrated (each 16 pages over and, with `.page`,
            // 16 CPU faults back).
            let perRound: [(faults: Int, migrated: Int)] = (1...rounds).map { r in
                switch c {
                case .migrate: return (windows, windows)
                // Round 1 maps every window writable; the CPU reads don't disturb the entries.
                case .map: return (r == 1 ? windows : 0, 0)
                // Direction changes: round 1's CPU faults (1), round 2's GPU faults (2), round
                // 2's CPU faults (3 = threshold): pinned, so round 3 maps, and nothing faults after.
                case .thrashing: return (r <= 3 ? windows : 0, r <= 2 ? windows : 0)
                // The first 4 windows stay mapped for good; the other 28 fault and migrate each round.
                case .counterWindow: return (r == 1 ? windows : windows - 4, windows - 4)
                // Round 1: 4 faults map, the 5th migrates the whole region (the mapped windows
                // too); the CPU takes it all back, so each later round's first fault migrates it again.
                case .counterRegion: return (r == 1 ? 5 : 1, windows)
                // Each round's CPU faults restart the count, so 2 more windows stay mapped per
                // round: round r faults on the 32 − 2(r − 1) unmapped windows and migrates 32 − 2r.
                case .counterReset: return (windows - 2 * (r - 1), windows - 2 * r)
                }
            }
            let gpuFaults = perRound.map(\.faults).reduce(0, +)
            let moved = perRound.map(\.migrated).reduce(0, +) * 16
            #expect(run.counts == Counts(gpuFaults: gpuFaults, pagesToDevice: moved, cpuFaults: moved, pagesToRAM: moved),
                    "\(c): \(run.counts)")
        }
    }

    /// The GPU reads 48 random pages of an 8 MiB range (four regions), then the CPU reads
    /// them back in the same order; every policy pair is compared on the same trace.
    @Test func sparseRandom() throws {
        let pages = 2048, touches = 48
        var x: UInt64 = 0x2545_F491_4F6C_DD1D
        var trace: [Int] = []
        while trace.count < touches {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            let p = Int(x % UInt64(pages))
            if !trace.contains(p) { trace.append(p) }
        }
        // The GPU side: replay each policy's rule over the trace. A fault resolves its
        // window (or, for a promoted region, the whole region); later touches of it hit.
        for c in GPUCase.allCases {
            var resolved = Set<Int>(), inVRAM = Set<Int>(), regionFaults: [Int: Int] = [:], faults = 0
            for p in trace where !resolved.contains(p / 16) {
                faults += 1
                regionFaults[p / 512, default: 0] += 1
                let n = regionFaults[p / 512]!
                let windows: Range<Int>
                switch c {
                case .counterRegion where n > 4: windows = (p / 512 * 32) ..< (p / 512 * 32 + 32)
                default: windows = p / 16 ..< p / 16 + 1
                }
                resolved.formUnion(windows)
                let migrates = switch c {
                case .migrate, .thrashing: true
                case .map: false
                case .counterWindow, .counterRegion: n > 4
                case .counterReset: n > 2
                }
                if migrates { inVRAM.formUnion(windows) }
            }
            let run = try Run(policy: policy(gpu: try c.resolution()), pages: pages)
            defer { try? run.gpu.shutdown() }
            for p in trace { #expect(try run.pattern.gpuMismatches(run.space, base, first: p, pages: 1) == [], "\(c)") }
            #expect(run.counts == Counts(gpuFaults: faults, pagesToDevice: inVRAM.count * 16), "\(c): \(run.counts)")
            for p in trace { #expect(try run.pattern.cpuMismatches(run.mm, base, first: p, pages: 1) == [], "\(c)") }
            let back = trace.filter { inVRAM.contains($0 / 16) }.count
            #expect(run.counts == Counts(gpuFaults: faults, pagesToDevice: inVRAM.count * 16, cpuFaults: back, pagesToRAM: back),
                    "\(c): \(run.counts)")
            #expect(try run.pattern.cpuMismatches(run.mm, base, pages: pages) == [], "\(c)")
        }

        // The CPU side: everything the GPU touched is in VRAM (16-page windows, one fault
        // each); how many faults and pages does reading the trace back cost?
        let touchedWindows = Set(trace.map { $0 / 16 })
        let strides = zip(trace.dropFirst(), trace).map { $0 - $1 }
        // The trace has no stride twice in a row, and no touch on the page right after
        // another's, so neither detector sees a pattern: both move one page per fault, as `.page`.
        try #require(zip(strides.dropFirst(), strides).allSatisfy { $0 != $1 })
        try #require(!trace.contains { trace.contains($0 + 1) })
        let expectations: [(MigrationPolicy.CPUFaultGranularity, Counts)] = [
            (.page, Counts(cpuFaults: touches, pagesToRAM: touches)),
            (.faultAround(pages: 16), Counts(cpuFaults: touchedWindows.count, pagesToRAM: touchedWindows.count * 16)),
            (.custom(try SequentialPrefetchPolicy()), Counts(cpuFaults: touches, pagesToRAM: touches)),
            (.custom(StridePrefetchPolicy()), Counts(cpuFaults: touches, pagesToRAM: touches)),
        ]
        for (granularity, expected) in expectations {
            let run = try Run(policy: policy(gpu: .migrateToVRAM(pages: 16), cpu: granularity), pages: pages)
            defer { try? run.gpu.shutdown() }
            for p in trace { #expect(try run.pattern.gpuMismatches(run.space, base, first: p, pages: 1) == []) }
            let gpuPhase = Counts(gpuFaults: touchedWindows.count, pagesToDevice: touchedWindows.count * 16)
            #expect(run.counts == gpuPhase, "\(granularity)")
            for p in trace { #expect(try run.pattern.cpuMismatches(run.mm, base, first: p, pages: 1) == [], "\(granularity)") }
            var total = expected
            total.gpuFaults = gpuPhase.gpuFaults
            total.pagesToDevice = gpuPhase.pagesToDevice
            #expect(run.counts == total, "\(granularity): \(run.counts)")
        }
    }

    /// 256 pages migrated to VRAM, read back by the CPU backward, then with a stride of 3.
    @Test func cpuScans() throws {
        let pages = 256, depth = 8
        let backward = Array((0..<pages).reversed())
        let stride3 = Array(stride(from: 0, to: pages, by: 3))
        // The stride detector: two single pages confirm the stride, then each fault brings
        // back the next `depth` accesses (clamped to the VMA).
        func strideCounts(_ trace: [Int]) -> Counts {
            let step = abs(trace[1] - trace[0])
            var c = Counts(cpuFaults: 2, pagesToRAM: 2)
            var i = 2
            while i < trace.count {
                let first = trace[i]
                let span = step * (depth - 1) + 1
                c.cpuFaults += 1
                c.pagesToRAM += trace[1] > trace[0] ? min(span, pages - first) : min(span, first + 1)
                i += depth
            }
            return c
        }
        let cases: [(String, [Int], MigrationPolicy.CPUFaultGranularity, Counts)] = [
            ("backward/page", backward, .page, Counts(cpuFaults: pages, pagesToRAM: pages)),
            ("backward/faultAround", backward, .faultAround(pages: 16), Counts(cpuFaults: pages / 16, pagesToRAM: pages)),
            // Readahead only runs forward: each backward fault starts a new one-page stream.
            ("backward/sequential", backward, .custom(try SequentialPrefetchPolicy()), Counts(cpuFaults: pages, pagesToRAM: pages)),
            ("backward/stride", backward, .custom(StridePrefetchPolicy()), strideCounts(backward)),
            ("stride3/page", stride3, .page, Counts(cpuFaults: stride3.count, pagesToRAM: stride3.count)),
            // Every 16-page window holds a touched page: each faults once and comes back whole.
            ("stride3/faultAround", stride3, .faultAround(pages: 16), Counts(cpuFaults: pages / 16, pagesToRAM: pages)),
            ("stride3/sequential", stride3, .custom(try SequentialPrefetchPolicy()),
             Counts(cpuFaults: stride3.count, pagesToRAM: stride3.count)),
            ("stride3/stride", stride3, .custom(StridePrefetchPolicy()), strideCounts(stride3)),
        ]
        for (name, trace, granularity, expected) in cases {
            let run = try Run(policy: policy(gpu: .mapSystemMemory(pages: 16), cpu: granularity), pages: pages)
            defer { try? run.gpu.shutdown() }
            #expect(try run.gpu.migrateToDevice(run.mm, range: base ..< run.address(pages)).migrated == pages, "\(name)")
            for p in trace { #expect(try run.pattern.cpuMismatches(run.mm, base, first: p, pages: 1) == [], "\(name)") }
            var total = expected
            total.pagesToDevice = pages
            #expect(run.counts == total, "\(name): \(run.counts)")
            #expect(try run.pattern.cpuMismatches(run.mm, base, pages: pages) == [], "\(name)")
        }
    }
}
