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
}
