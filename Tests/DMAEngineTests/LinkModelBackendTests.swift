import Dispatch
@testable import DMAEngine
import Glibc
import NIOConcurrencyHelpers
import SystemPackage
import Testing

/// The link model: host↔device batches complete no earlier than bandwidth and
/// latency allow; fences keep their order; device-local work is not held.
@Suite struct LinkModelBackendTests {
    /// 100 MB/s and 300 ms: slow enough that the model, not the machine, decides (even
    /// under Thread Sanitizer on a loaded machine, between a submit and the next check).
    static let slow = LinkModel(bytesPerSecond: 100e6, latency: .milliseconds(300))

    static func rig(_ model: LinkModel = LinkModelBackendTests.slow, inner: CopyBackendKind = .ioUring) throws -> EngineRig {
        try EngineRig(.init(backend: .linkModel(model, wrapping: inner)), size: 4 << 20, patternSeed: 23)
    }

    static func seconds(since start: UInt64) -> Double { Double(LinkModelBackend.now() - start) / 1e9 }

    @Test(arguments: [CopyBackendKind.ioUring, .memcpy])
    func batchesWaitForBandwidthAndLatency(_ inner: CopyBackendKind) throws {
        let rig = try Self.rig(inner: inner)
        defer { rig.engine.shutdown() }
        #expect(rig.ch.backendName == "link(\(inner))")
        let start = LinkModelBackend.now()
        try rig.h2d(0, 1 << 20)  // 10.5 ms on the wire + 300 ms
        let first = try rig.ch.submit()
        try rig.h2d(1 << 20, 1 << 20)  // queued behind the first on the same direction
        let second = try rig.ch.submit()
        #expect(!first.isSignaled, "the copy itself is done long before the modelled link")
        try first.wait(timeout: .seconds(10))
        #expect(Self.seconds(since: start) >= 0.3104)
        try second.wait(timeout: .seconds(10))
        #expect(Self.seconds(since: start) >= 0.3209, "two MiB serialised on one direction, then the latency")
        #expect(same(rig.host.bytes.baseAddress!, rig.vram.mapping.baseAddress!, 2 << 20))
        #expect(rig.link.heldBatches.load(ordering: .relaxed) == 2)
    }

    @Test func fencesSignalInSubmitOrderWhateverTheirDeadlines() throws {
        let rig = try Self.rig()
        defer { rig.engine.shutdown() }
        let order = NIOLockedValueBox<[UInt64]>([])
        var fences: [Fence] = []
        for i in 0..<6 {
            switch i % 3 {
            case 0: try rig.h2d(i * 65536, 65536 * (3 - i / 3))  // long, then shorter
            case 1: try rig.ch.enqueueFill(rig.vram.address(3 << 20), length: 4096, value: UInt8(i))  // not on the link
            default:
                try rig.ch.enqueueCopy(from: rig.vram.address(i * 65536), to: DMAAddress(region: rig.h, offset: (2 << 20) + i * 4096),
                                       length: 4096)  // the other direction: an earlier deadline
            }
            let f = try rig.ch.submit()
            f.onSignal { f in order.withLockedValue { $0.append(f.seqno) } }
            fences.append(f)
        }
        try fences.last!.wait(timeout: .seconds(10))
        for _ in 0..<20_000 where order.withLockedValue({ $0.count }) < 6 { usleep(1000) }   // callbacks: ≥ 20 s
        #expect(order.withLockedValue { $0 } == [1, 2, 3, 4, 5, 6])
        #expect(rig.link.heldBatches.load(ordering: .relaxed) == 4, "the fills are device-local: not held")
    }

    @Test func deviceLocalWorkIsNotHeldAndShutdownCancelsHolds() throws {
        let rig = try Self.rig(LinkModel(bytesPerSecond: 1e3, latency: .seconds(3600)))
        let other = try rig.engine.createVRAMPool(size: 1 << 20)
        try rig.ch.enqueueCopy(from: rig.vram.address(0), to: other.address(0), length: 1 << 20)
        try rig.ch.enqueueFill(rig.vram.address(0), length: 4096)
        try rig.ch.submit().wait(timeout: .seconds(10))
        #expect(rig.link.heldBatches.load(ordering: .relaxed) == 0)
        try rig.h2d(0, 4096)  // an hour on this link
        let held = try rig.ch.submit()
        #expect(!held.waitForSignal(timeout: .milliseconds(50)))
        rig.engine.shutdown(cancelInFlight: true)  // releases the hold instead of waiting an hour
        #expect(held.isSignaled)
    }

    @Test func invalidModelsAreTypedErrors() throws {
        for model in [LinkModel(bytesPerSecond: 0, latency: .zero), LinkModel(bytesPerSecond: .nan, latency: .zero)] {
            let engine = try DMAEngine(configuration: .init(backend: .linkModel(model, wrapping: .memcpy)))
            #expect(throws: DMAError.self) { try engine.makeChannel() }
            engine.shutdown()
        }
        let engine = try DMAEngine(configuration: .init(backend: .linkModel(.init(bytesPerSecond: 1, latency: .seconds(-1)), wrapping: .memcpy)))
        #expect(throws: DMAError.invalidArgument("link latency must not be negative (got -1.0 seconds)")) { try engine.makeChannel() }
        engine.shutdown()
        #expect(LinkModel.pcie4.description == "26 GB/s + 2 µs")
    }
}

private extension EngineRig {
    var link: LinkModelBackend { ch.backend as! LinkModelBackend }

    func h2d(_ offset: Int, _ length: Int) throws {
        try ch.enqueueCopy(from: DMAAddress(region: h, offset: offset), to: vram.address(offset), length: length)
    }
}
