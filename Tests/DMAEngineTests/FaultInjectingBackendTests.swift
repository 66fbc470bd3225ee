@testable import DMAEngine
import Glibc
import SystemPackage
import Testing

/// The seeded fault injector: which descriptors it disturbs, reproducibly.
@Suite struct FaultInjectingBackendTests {
    func failedIndices(_ plan: FaultPlan, batches: Int = 4, perBatch: Int = 64) throws -> [Int] {
        let engine = try DMAEngine(configuration: .init(backend: .faultInjecting(plan, wrapping: .memcpy)))
        defer { engine.shutdown() }
        let vram = try engine.createVRAMPool(size: 1 << 16)
        let ch = try engine.makeChannel()
        var failed: [Int] = []
        for b in 0..<batches {
            for i in 0..<perBatch { try ch.enqueueFill(vram.address(i * 8), length: 8, value: UInt8(b)) }
            let f = try ch.submit()
            #expect(f.waitForSignal(timeout: .seconds(10)))
            failed += f.failures.map { b * perBatch + $0.index }
        }
        return failed.sorted()
    }

    @Test func nthAndEveryPickExactDescriptorsAcrossBatches() throws {
        #expect(try failedIndices(FaultPlan(rules: [.init(.nth(70), .fail(.ioError))])) == [70])
        #expect(try failedIndices(FaultPlan(rules: [.init(.every(50), .fail(.ioError))])) == [49, 99, 149, 199, 249])
    }

    @Test func ratesAreSeededAndReproducible() throws {
        let plan = FaultPlan(seed: 42, rules: [.init(.rate(0.1), .fail(.ioError))])
        let a = try failedIndices(plan), b = try failedIndices(plan)
        let c = try failedIndices(FaultPlan(seed: 43, rules: plan.rules))
        #expect(a == b)
        #expect(a != c)
        #expect((5...60).contains(a.count), "about 10% of 256: \(a.count)")
        #expect(try failedIndices(FaultPlan(rules: [.init(.rate(0), .fail(.ioError))])).isEmpty)
        #expect(try failedIndices(FaultPlan(rules: [.init(.rate(1), .fail(.ioError))])).count == 256)
    }

    @Test func firstMatchingRuleWinsAndNameShowsTheWrapping() throws {
        let plan = FaultPlan(rules: [.init(.nth(3), .shortCopy(bytes: 2)), .init(.every(2), .fail(.canceled))])
        let engine = try DMAEngine(configuration: .init(backend: .faultInjecting(plan, wrapping: .ioUring)))
        defer { engine.shutdown() }
        let vram = try engine.createVRAMPool(size: 4096)
        let ch = try engine.makeChannel()
        #expect(ch.backendName == "faulty(iouring)")
        for i in 0..<4 { try ch.enqueueFill(vram.address(i * 16), length: 16, value: 0xEE) }
        let f = try ch.submit()
        #expect(f.waitForSignal(timeout: .seconds(10)))
        #expect(f.failures.sorted { $0.index < $1.index } == [
            DescriptorFailure(ticket: DMATicket(rawValue: 1), index: 1, errno: .canceled, bytesCompleted: 0),
            DescriptorFailure(ticket: DMATicket(rawValue: 3), index: 3, errno: .ioError, bytesCompleted: 2),
        ])
        let m = vram.mapping
        #expect(m[0] == 0xEE && m[16] == 0 && m[32] == 0xEE && m[48] == 0xEE && m[49] == 0xEE && m[50] == 0)
    }

    /// A short copy asked for the whole length or more still stops one byte short: the
    /// descriptor fails with EIO and length − 1 bytes done, never as a complete copy.
    @Test func aShortCopyAtLeastAsLongAsItsDescriptorStopsOneByteShort() throws {
        let plan = FaultPlan(rules: [.init(.nth(0), .shortCopy(bytes: 1 << 20))])
        let engine = try DMAEngine(configuration: .init(backend: .faultInjecting(plan, wrapping: .memcpy)))
        defer { engine.shutdown() }
        let vram = try engine.createVRAMPool(size: 4096)
        let ch = try engine.makeChannel()
        try ch.enqueueFill(vram.address(0), length: 16, value: 0xEE)
        let f = try ch.submit()
        #expect(f.waitForSignal(timeout: .seconds(10)))
        #expect(f.failures == [DescriptorFailure(ticket: DMATicket(rawValue: 0), index: 0, errno: .ioError, bytesCompleted: 15)])
        let m = vram.mapping
        #expect(m[14] == 0xEE && m[15] == 0)
    }

    /// A delayed descriptor completes after its delay even while every thread of Dispatch's
    /// global pool is blocked (here: the test runner's, several of these cases at once, each
    /// sleeping on its thread). On the global queue a 50 ms delay waited ~1 s on 2 cores.
    @Test(arguments: 0..<6)
    func delayedCopiesDoNotWaitForABlockedThreadPool(_ k: Int) throws {
        let rig = try EngineRig(.init(backend: .faultInjecting(FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(20)))]),
                                                               wrapping: .memcpy)), patternSeed: UInt64(30 + k))
        defer { rig.engine.shutdown() }
        try rig.ch.enqueueCopy(from: rig.host(0), to: rig.vram.address(0), length: 4096)
        let f = try rig.ch.submit()
        usleep(400_000)  // holds this thread, as a synchronous test or task does
        #expect(f.isSignaled, "a 20 ms delay had not run after 400 ms")
        #expect(f.waitForSignal(timeout: .seconds(10)) && f.failures.isEmpty)
        #expect(same(rig.host.bytes.baseAddress!, rig.vram.mapping.baseAddress!, 4096))
    }

    /// The offsets of the bytes where `a` and `b` differ over `n` bytes.
    static func differences(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> [Int] {
        (0..<n).filter { a.load(fromByteOffset: $0, as: UInt8.self) != b.load(fromByteOffset: $0, as: UInt8.self) }
    }

    /// Copies host pages 0…3 to VRAM pages 0…3 and fills VRAM page 4 with 0x5A, under `plan`
    /// on `inner`; returns the fence's failures and, per descriptor, the offsets where its
    /// destination differs from what it should hold.
    func corruptionRun(_ plan: FaultPlan, inner: CopyBackendKind = .memcpy) throws -> (failures: [DescriptorFailure], wrong: [[Int]]) {
        let rig = try EngineRig(.init(backend: .faultInjecting(plan, wrapping: inner)), patternSeed: 77)
        defer { rig.engine.shutdown() }
        for p in 0..<4 { try rig.ch.enqueueCopy(from: rig.host(p), to: rig.vram.address(p * 4096), length: 4096) }
        try rig.ch.enqueueFill(rig.vram.address(4 * 4096), length: 4096, value: 0x5A)
        let f = try rig.ch.submit()
        #expect(f.waitForSignal(timeout: .seconds(10)))
        #expect(f.error == nil)
        let expected = HostBuffer(4096)
        memset(expected.bytes.baseAddress!, 0x5A, 4096)
        let vram = rig.vram.mapping.baseAddress!, host = rig.host.bytes.baseAddress!
        var wrong = (0..<4).map { Self.differences(vram + $0 * 4096, host + $0 * 4096, 4096) }
        wrong.append(Self.differences(vram + 4 * 4096, expected.bytes.baseAddress!, 4096))
        return (f.failures, wrong)
    }

    /// Silent corruption: the corrupted descriptor completes without error (the fence and its
    /// failures cannot tell), its destination differs from the source in exactly one byte,
    /// flipped; the other descriptors are intact. A fill is corrupted the same way.
    @Test(arguments: [CopyBackendKind.memcpy, .ioUring])
    func aCorruptedDescriptorSucceedsWithOneByteWrong(inner: CopyBackendKind) throws {
        let rig = try EngineRig(.init(backend: .faultInjecting(FaultPlan(rules: [.init(.nth(1), .corrupt)]), wrapping: inner)),
                                patternSeed: 78)
        defer { rig.engine.shutdown() }
        for p in 0..<3 { try rig.ch.enqueueCopy(from: rig.host(p), to: rig.vram.address(p * 4096), length: 4096) }
        let f = try rig.ch.submit()
        #expect(f.waitForSignal(timeout: .seconds(10)))
        #expect(f.failures.isEmpty && f.error == nil)
        let vram = rig.vram.mapping.baseAddress!, host = rig.host.bytes.baseAddress!
        #expect(Self.differences(vram, host, 4096).isEmpty)
        #expect(Self.differences(vram + 2 * 4096, host + 2 * 4096, 4096).isEmpty)
        let wrong = Self.differences(vram + 4096, host + 4096, 4096)
        try #require(wrong.count == 1, "\(wrong)")
        let at = 4096 + wrong[0]
        #expect(vram.load(fromByteOffset: at, as: UInt8.self) == ~host.load(fromByteOffset: at, as: UInt8.self))

        let run = try corruptionRun(FaultPlan(rules: [.init(.nth(4), .corrupt)]), inner: inner)   // the fill
        #expect(run.failures.isEmpty)
        #expect(run.wrong[0..<4].allSatisfy(\.isEmpty) && run.wrong[4].count == 1, "\(run.wrong)")
    }

    /// The corrupted byte is a function of the plan's seed: the same seed flips the same
    /// byte, and seeds differ in where they flip it.
    @Test func corruptionOffsetsAreSeeded() throws {
        let plan = FaultPlan(seed: 7, rules: [.init(.every(2), .corrupt)])
        let a = try corruptionRun(plan), b = try corruptionRun(plan)
        #expect(a.failures.isEmpty)
        #expect(a.wrong.map(\.count) == [0, 1, 0, 1, 0], "\(a.wrong)")
        #expect(a.wrong == b.wrong)
        #expect(a.wrong[1] != a.wrong[3], "two descriptors of one channel, two offsets")
        var offsets: Set<[Int]> = []
        for seed in 1...4 as ClosedRange<UInt64> { offsets.insert(try corruptionRun(FaultPlan(seed: seed, rules: plan.rules)).wrong[1]) }
        #expect(offsets.count > 1, "\(offsets)")
    }
}
