@testable import DMAEngine
import Glibc
import Testing

/// The engine's in-flight record (`tracksInFlightCopies`), which checked mode asks before
/// a migration's finalize: bytes a submitted copy reads or writes count until its fence
/// signals, and not after; off, nothing is recorded.
@Suite struct CheckedInFlightTests {
    static func rig(_ plan: FaultPlan, tracking: Bool = true) throws -> EngineRig {
        var c = DMAEngine.Configuration(backend: .faultInjecting(plan, wrapping: .memcpy))
        c.tracksInFlightCopies = tracking
        return try EngineRig(c)
    }

    @Test func copiesCountUntilTheirFenceSignals() throws {
        let rig = try Self.rig(FaultPlan(rules: [.init(.nth(1), .delay(.milliseconds(500)))]))
        defer { rig.engine.shutdown() }
        try rig.ch.enqueueCopy(from: rig.host(0), to: rig.vram.address(0), length: 4096)      // done at once
        try rig.ch.enqueueCopy(from: rig.host(5), to: rig.vram.address(8192), length: 8192)   // delayed
        try rig.ch.enqueueFill(rig.vram.address(40960), length: 4096)                         // done at once
        let fence = try rig.ch.submit()
        #expect(!fence.isSignaled)
        // The whole batch is in flight until its fence signals, the finished descriptors too.
        #expect(rig.engine.copiesInFlight(at: rig.vram.address(0), length: 4096) == .writes)
        #expect(rig.engine.copiesInFlight(at: rig.vram.address(12288), length: 4096) == .writes)
        #expect(rig.engine.copiesInFlight(at: rig.host(6), length: 4096) == .reads)
        #expect(rig.engine.copiesInFlight(at: rig.host(0), length: 1) == .reads)
        #expect(rig.engine.copiesInFlight(at: rig.vram.address(40960), length: 4096) == .writes)
        // Neighbours are not.
        #expect(rig.engine.copiesInFlight(at: rig.host(7), length: 4096) == [])
        #expect(rig.engine.copiesInFlight(at: rig.vram.address(16384), length: 4096) == [])
        #expect(rig.engine.copiesInFlight(at: rig.vram.address(36864), length: 4096) == [])
        #expect(rig.engine.copiesInFlight(at: DMAAddress(region: RegionID(rawValue: 99), offset: 0), length: 4096) == [])
        try fence.wait(timeout: .seconds(10))
        #expect(rig.engine.copiesInFlight(at: rig.vram.address(8192), length: 8192) == [])
        #expect(rig.engine.copiesInFlight(at: rig.host(5), length: 4096) == [])
    }

    @Test func aDeviceToDeviceCopyReadsOneSideAndWritesTheOther() throws {
        let rig = try Self.rig(FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(500)))]))
        defer { rig.engine.shutdown() }
        try rig.ch.enqueueCopy(from: rig.vram.address(0), to: rig.vram.address(65536), length: 4096)
        let fence = try rig.ch.submit()
        #expect(rig.engine.copiesInFlight(at: rig.vram.address(0), length: 4096) == .reads)
        #expect(rig.engine.copiesInFlight(at: rig.vram.address(65536), length: 4096) == .writes)
        #expect(rig.engine.copiesInFlight(at: rig.vram.address(0), length: 1 << 17) == [.reads, .writes])
        try fence.wait(timeout: .seconds(10))
    }

    @Test func offRecordsNothing() throws {
        let rig = try Self.rig(FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(500)))]), tracking: false)
        defer { rig.engine.shutdown() }
        try rig.ch.enqueueCopy(from: rig.host(0), to: rig.vram.address(0), length: 4096)
        let fence = try rig.ch.submit()
        #expect(!fence.isSignaled)
        #expect(rig.engine.copiesInFlight(at: rig.vram.address(0), length: 4096) == [])
        try fence.wait(timeout: .seconds(10))
    }

    @Test func manyFencesOnManyChannelsEachCountOnlyTheirOwnBytes() throws {
        let rig = try Self.rig(FaultPlan(rules: [.init(.every(2), .delay(.milliseconds(50)))]))
        defer { rig.engine.shutdown() }
        let other = try rig.engine.makeChannel()
        var fences: [Fence] = []
        for i in 0..<16 {
            let ch = i % 2 == 0 ? rig.ch : other
            try ch.enqueueCopy(from: rig.host(i), to: rig.vram.address(i * 4096), length: 4096)
            fences.append(try ch.submit())
        }
        for (i, f) in fences.enumerated() {
            try f.wait(timeout: .seconds(10))
            #expect(rig.engine.copiesInFlight(at: rig.vram.address(i * 4096), length: 4096) == [])
        }
        #expect(rig.engine.copiesInFlight(at: rig.vram.address(0), length: 1 << 20) == [])
    }
}
