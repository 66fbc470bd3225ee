@testable import DMAEngine
import Dispatch
import Glibc
import SystemPackage
import Testing

/// Error and edge paths a driver relying on fences meets: discarded tickets, a delayed
/// descriptor before a `.fence` one, transient completion errors, channel ids.
@Suite(.timeLimit(.minutes(1))) struct EdgePathTests {
    /// Discarded descriptors never ran: their tickets must not read as succeeded once later work completes.
    @Test(arguments: [BackendUnderTest.memcpy, .iouring])
    func discardedTicketsAreCanceledNotSucceeded(_ backend: BackendUnderTest) throws {
        let engine = try backend.engine()
        defer { engine.shutdown() }
        let vram = try engine.createVRAMPool(size: 1 << 16)
        let ch = try engine.makeChannel()
        try ch.enqueueFill(vram.address(0), length: 64, value: 1)  // ticket 0
        try ch.submit().wait(timeout: .seconds(10))
        try ch.enqueueFill(vram.address(64), length: 64, value: 2)  // tickets 1, 2: dropped
        try ch.enqueueFill(vram.address(128), length: 64, value: 3)
        #expect(ch.discardPending() == 2)
        #expect(try ch.status(of: DMATicket(rawValue: 1)) == .failed(.canceled, bytesCompleted: 0))
        try ch.enqueueFill(vram.address(192), length: 64, value: 4)  // ticket 3
        let f = try ch.submit()
        #expect(f.tickets == 3..<4)
        try f.wait(timeout: .seconds(10))
        #expect(ch.lastCompletedTicket == DMATicket(rawValue: 3))
        #expect(try ch.status(of: DMATicket(rawValue: 0)..<DMATicket(rawValue: 4))
                == [.succeeded, .failed(.canceled, bytesCompleted: 0), .failed(.canceled, bytesCompleted: 0), .succeeded])
        #expect(vram.mapping[64] == 0 && vram.mapping[128] == 0 && vram.mapping[192] == 4)
    }

    /// Descriptors dropped by shutdown are reported as canceled too, never as pending forever.
    @Test func ticketsDroppedByShutdownAreCanceled() throws {
        let engine = try BackendUnderTest.iouring.engine()
        let vram = try engine.createVRAMPool(size: 1 << 16)
        let ch = try engine.makeChannel()
        try ch.enqueueFill(vram.address(0), length: 64, value: 1)
        engine.shutdown()
        #expect(try ch.status(of: DMATicket(rawValue: 0)) == .failed(.canceled, bytesCompleted: 0))
    }

    /// Discards leave the status window like any other ticket.
    @Test func discardedTicketsExpireWithTheWindow() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy, statusHistory: 4))
        defer { engine.shutdown() }
        let vram = try engine.createVRAMPool(size: 4096)
        let ch = try engine.makeChannel()
        try ch.enqueueFill(vram.address(0), length: 1)  // ticket 0: dropped
        ch.discardPending()
        for _ in 0..<4 { try ch.enqueueFill(vram.address(0), length: 1) }  // tickets 1…4
        try ch.submit().wait(timeout: .seconds(5))
        #expect(try ch.status(of: DMATicket(rawValue: 0)..<DMATicket(rawValue: 2)) == [.expired, .succeeded])
    }

    /// A `.fence` descriptor starts after every earlier one, including one the fault injector delays.
    @Test(arguments: [BackendUnderTest.memcpy, .iouring])
    func fenceFlagWaitsForADelayedDescriptor(_ backend: BackendUnderTest) throws {
        let plan = FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(300)))])
        let engine = try DMAEngine(configuration: .init(backend: .faultInjecting(plan, wrapping: backend.kind)))
        defer { engine.shutdown() }
        let host = HostBuffer(1 << 16)
        let h = try engine.registerHostMemory(host.bytes)
        let vram = try engine.createVRAMPool(size: 1 << 16)
        let ch = try engine.makeChannel()
        try ch.enqueueFill(vram.address(0), length: 4096, value: 0xAA)  // delayed
        try ch.enqueueCopy(from: vram.address(0), to: DMAAddress(region: h, offset: 0), length: 4096, flags: .fence)
        try ch.submit().wait(timeout: .seconds(10))
        #expect(host.bytes[0] == 0xAA && host.bytes[4095] == 0xAA, "the fenced copy read the fill's result")
    }

    /// The same across batches: a fenced descriptor in a later batch waits for a delayed one in an earlier batch.
    @Test func fenceFlagWaitsForADelayedDescriptorOfAnEarlierBatch() throws {
        let plan = FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(300)))])
        let engine = try DMAEngine(configuration: .init(backend: .faultInjecting(plan, wrapping: .ioUring)))
        defer { engine.shutdown() }
        let host = HostBuffer(1 << 16)
        let h = try engine.registerHostMemory(host.bytes)
        let vram = try engine.createVRAMPool(size: 1 << 16)
        let ch = try engine.makeChannel()
        try ch.enqueueFill(vram.address(0), length: 4096, value: 0xAB)  // delayed
        let first = try ch.submit()
        try ch.enqueueCopy(from: vram.address(0), to: DMAAddress(region: h, offset: 0), length: 4096, flags: .fence)
        try ch.submit().wait(timeout: .seconds(10))
        #expect(first.isSignaled)
        #expect(host.bytes[0] == 0xAB && host.bytes[4095] == 0xAB)
    }

    /// Channels made concurrently get distinct ids (they name the channel in errors and seed its faults).
    @Test func concurrentlyMadeChannelsHaveDistinctIDs() throws {
        let engine = try BackendUnderTest.iouring.engine(queueDepth: 4)
        defer { engine.shutdown() }
        let ids = IDSlots(8)
        DispatchQueue.concurrentPerform(iterations: 8) { k in
            ids.set(k, (try? engine.makeChannel())?.id ?? -1)
        }
        #expect(ids.values.sorted() == Array(0..<8))
    }
}

/// One slot per concurrent iteration (each writes only its own; read after they joined).
final class IDSlots: @unchecked Sendable {
    private let slots: UnsafeMutableBufferPointer<Int>
    init(_ n: Int) { slots = .allocate(capacity: n); slots.initialize(repeating: -1) }
    deinit { slots.deallocate() }
    func set(_ k: Int, _ id: Int) { slots[k] = id }
    var values: [Int] { Array(slots) }
}
