@testable import DMAEngine
import Glibc
import SystemPackage
import Testing

/// Seeded random bad input against every public DMAEngine entry point: each call returns
/// a typed `DMAError` or succeeds, nothing traps, and after every call the engine still
/// works — a probe channel copies host → VRAM → host and the bytes come back, a fuzzed
/// channel's capacity stays within its batch, its fences signal.
@Suite(.timeLimit(.minutes(2))) struct BadInputFuzzTests {
    @Test(arguments: [1, 2, 3] as [UInt64])
    func randomBadCallsThrowTypedErrorsAndTheEngineKeepsWorking(seed: UInt64) throws {
        let fuzz = try DMAFuzz(seed: seed)
        defer { fuzz.engine.shutdown() }
        for step in 0..<300 {
            let call = fuzz.step()
            if let problem = fuzz.probe() {
                Issue.record("seed \(seed) step \(step) after \(call): \(problem)")
                return
            }
        }
        #expect(fuzz.errors > 100 && fuzz.successes > 20, "errors \(fuzz.errors), successes \(fuzz.successes)")
    }

    @Test func badConfigurationsAndBackendsAreRefusedWithoutTrapping() {
        let plans = [FaultPlan(rules: [.init(.nth(-1), .fail(.ioError)), .init(.every(0), .shortCopy(bytes: -5)),
                                       .init(.rate(.nan), .delay(.seconds(-3))), .init(.rate(-1), .delay(.seconds(Int64.max)))])]
        let kinds: [CopyBackendKind] = [.mappedWorkers(threads: 0), .mappedWorkers(threads: -1), .mappedWorkers(threads: 10_000),
                                        .linkModel(LinkModel(bytesPerSecond: -1, latency: .zero), wrapping: .memcpy),
                                        .linkModel(LinkModel(bytesPerSecond: .nan, latency: .seconds(-1)), wrapping: .memcpy),
                                        .linkModel(LinkModel(bytesPerSecond: .infinity, latency: .zero), wrapping: .memcpy),
                                        .faultInjecting(plans[0], wrapping: .memcpy)]
        for (depth, batch, history) in [(0, 1, 1), (-1, 4096, 1), (4097, 1, 1), (64, 0, 1), (64, Int.max, 1), (64, 64, 0), (64, 64, Int.min)] {
            #expect(throws: DMAError.self) {
                try DMAEngine(configuration: .init(backend: .memcpy, queueDepth: depth, maxBatch: batch, statusHistory: history))
            }
        }
        for kind in kinds {
            do {
                let engine = try DMAEngine(configuration: .init(backend: kind))
                defer { engine.shutdown() }
                let host = HostBuffer(1 << 16)
                let h = try engine.registerHostMemory(host.bytes)
                let pool = try engine.createVRAMPool(size: 1 << 16, layout: .singleFile)
                let ch = try engine.makeChannel()
                for i in 0..<8 { try ch.enqueueCopy(from: DMAAddress(region: h, offset: i * 4096), to: pool.address(i * 4096), length: 4096) }
                _ = try ch.submit().waitForSignal(timeout: .seconds(5))
            } catch {
                // A typed refusal is the expected outcome for most of them.
            }
        }
    }
}

/// The fuzzer's engine, regions, channels and random choices.
final class DMAFuzz {
    let engine: DMAEngine
    let host = HostBuffer(1 << 20)
    let h: RegionID
    var pools: [VRAMPool] = []
    var channels: [DMAChannel] = []
    var fences: [Fence] = []
    let probeChannel: DMAChannel
    let probePool: VRAMPool
    /// The probe's own host memory: fuzzed copies never touch it.
    let probeHost = HostBuffer(1 << 17)
    let ph: RegionID
    var rng: SplitMix64
    var errors = 0, successes = 0

    init(seed: UInt64) throws {
        rng = SplitMix64(seed: seed)
        var c = DMAEngine.Configuration(backend: .faultInjecting(FaultPlan(seed: seed, rules: [.init(.rate(0.1), .delay(.microseconds(200)))]),
                                                                 wrapping: .ioUring), maxBatch: 64)
        c.tracksInFlightCopies = true
        engine = try DMAEngine(configuration: c)
        h = try engine.registerHostMemory(host.bytes)
        probePool = try engine.createVRAMPool(size: 1 << 16, name: "probe")
        ph = try engine.registerHostMemory(probeHost.bytes, name: "probe")
        fillPattern(probeHost.bytes, seed: seed ^ 0xFF)
        probeChannel = try engine.makeChannel(name: "probe", backend: .memcpy)
        pools = [try engine.createVRAMPool(size: 1 << 20, layout: .init(files: 4, granule: 1 << 16))]
        channels = [try engine.makeChannel()]
        fillPattern(host.bytes, seed: seed)
    }

    func pick<T>(_ xs: [T]) -> T { xs[Int(rng.next() % UInt64(xs.count))] }
    func chance(_ n: Int) -> Bool { rng.next() % UInt64(n) == 0 }

    func region() -> RegionID {
        pick([h, pools.randomElement(using: &rng)?.region ?? h, RegionID(rawValue: 99), RegionID(rawValue: UInt32.max)])
    }

    func offset() -> Int { pick([0, 4096, 1, -1, -4096, (1 << 20) - 4096, 1 << 20, (1 << 20) + 4096, Int.max, Int.min, 65536]) }
    func length() -> Int { pick([0, -1, 1, 4096, 8192, 1 << 20, (1 << 20) + 1, Int.max, Int.min, 1 << 30, (1 << 30) + 1]) }

    /// Makes one random call; returns its description.
    func step() -> String {
        let calls: [(String, () throws(DMAError) -> Void)] = [
            ("enqueueCopy", { [self] () throws(DMAError) in
                guard let ch = channels.randomElement(using: &rng) else { return }
                try ch.enqueueCopy(from: DMAAddress(region: region(), offset: offset()),
                                   to: DMAAddress(region: region(), offset: offset()), length: length(),
                                   flags: DescriptorFlags(rawValue: pick([0, 1, 0xFF])))
            }),
            ("enqueueFill", { [self] () throws(DMAError) in
                guard let ch = channels.randomElement(using: &rng) else { return }
                try ch.enqueueFill(DMAAddress(region: region(), offset: offset()), length: length(), value: pick([0, 0xFF]))
            }),
            ("submit", { [self] () throws(DMAError) in
                guard let ch = channels.randomElement(using: &rng) else { return }
                fences.append(try ch.submit())
            }),
            ("discardPending", { [self] () throws(DMAError) in _ = channels.randomElement(using: &rng)?.discardPending() }),
            ("status", { [self] () throws(DMAError) in
                guard let ch = channels.randomElement(using: &rng) else { return }
                let lo = pick([0, 1, 1000, UInt64.max - 1, UInt64.max])
                let hi = max(lo, pick([0, 2, 70_000, UInt64.max]))
                _ = try ch.status(of: DMATicket(rawValue: lo)..<DMATicket(rawValue: hi))
                _ = try ch.status(of: DMATicket(rawValue: pick([0, 5, UInt64.max])))
            }),
            ("wait", { [self] () throws(DMAError) in
                guard let f = fences.randomElement(using: &rng) else { return }
                try f.wait(timeout: pick([.zero, .seconds(-1), .milliseconds(1), .seconds(10), nil]))
            }),
            ("makeChannel", { [self] () throws(DMAError) in
                guard channels.count < 4 else { return }
                channels.append(try engine.makeChannel(backend: pick([nil, .memcpy, .mappedWorkers(threads: pick([0, 1, 65]))]),
                                                       coalescing: pick([nil, true, false]),
                                                       queueDepth: pick([nil, 0, -1, 1, 8, 4097, Int.max])))
            }),
            ("createVRAMPool", { [self] () throws(DMAError) in
                guard pools.count < 4 else { return }
                pools.append(try engine.createVRAMPool(size: pick([0, -1, 4096, 1 << 20, Int.max, 12_345]),
                                                       layout: .init(files: pick([0, 1, 4, 257, -1]), granule: pick([0, 4096, 3000, 1 << 16, -1]),
                                                                     populate: chance(2))))
            }),
            ("registerVRAMPool", { [self] () throws(DMAError) in
                guard pools.count < 4 else { return }
                pools.append(try engine.registerVRAMPool(fd: FileDescriptor(rawValue: pick([-1, 0, 9999])), size: pick([0, -1, 4096, Int.max])))
            }),
            ("registerHostMemory", { [self] () throws(DMAError) in
                _ = try engine.registerHostMemory(UnsafeMutableRawBufferPointer(start: nil, count: 0))
            }),
            ("unregister", { [self] () throws(DMAError) in
                let id = pick([RegionID(rawValue: 99), RegionID(rawValue: UInt32.max), pools.last?.region ?? RegionID(rawValue: 98)])
                try engine.unregister(id, timeout: pick([.zero, .seconds(-1), .seconds(5)]))
                pools.removeAll { $0.region == id }
            }),
            ("region info", { [self] () throws(DMAError) in _ = engine.region(region()) }),
            ("copiesInFlight", { [self] () throws(DMAError) in
                _ = engine.copiesInFlight(at: DMAAddress(region: region(), offset: offset()), length: length())
            }),
        ]
        let (name, call) = pick(calls)
        do { try call(); successes += 1 } catch { errors += 1 }
        if fences.count > 64 { fences.removeFirst(32) }
        return name
    }

    /// The engine still copies correctly; a description of what broke, or nil.
    func probe() -> String? {
        for ch in channels where ch.capacity < 0 || ch.capacity > ch.maxBatch { return "channel \(ch.id) capacity \(ch.capacity)" }
        let page = Int(rng.next() % 16)
        do {
            try probeChannel.enqueueCopy(from: DMAAddress(region: ph, offset: page * 4096), to: probePool.address(0), length: 4096)
            try probeChannel.enqueueCopy(from: probePool.address(0), to: DMAAddress(region: ph, offset: (1 << 17) - 4096), length: 4096)
            try probeChannel.submit().wait(timeout: .seconds(10))
        } catch {
            return "probe copy failed: \(error)"
        }
        let a = probeHost.bytes.baseAddress!
        return same(a + page * 4096, a + (1 << 17) - 4096, 4096) ? nil : "probe bytes differ"
    }
}
