@testable import DMAEngine
import Dispatch
import Foundation
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
        #expect(f.tickets == DMATicket(rawValue: 3)..<DMATicket(rawValue: 4))
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

/// `DMAEngine.shutdown()` inside a fence callback, which runs on the thread that completes
/// the copies: it must return (and drain elsewhere), not wait for that very thread.
@Suite(.timeLimit(.minutes(1))) struct ShutdownInCallbackTests {
    enum Variant: String, CaseIterable, CustomTestStringConvertible, Sendable {
        case iouring, mapped, delayed, link
        var kind: CopyBackendKind {
            switch self {
            case .iouring: return .ioUring
            case .mapped: return .mappedWorkers(threads: 2)
            case .delayed: return .faultInjecting(FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(50)))]), wrapping: .ioUring)
            case .link: return .linkModel(LinkModel(gigabytesPerSecond: 1, latency: .milliseconds(50)), wrapping: .ioUring)
            }
        }
        var testDescription: String { rawValue }
    }

    /// What a run left behind: whether the callback returned, the channel, and the pool
    /// (held only by the engine, so it goes away once shutdown drained).
    struct Outcome {
        var ran = false
        var channel: DMAChannel?
        weak var pool: VRAMPool?

        /// Whether the engine finished draining and let go of its pool within 20 s (a hang guard).
        func drained() -> Bool {
            for _ in 0..<2000 where pool != nil { usleep(10_000) }
            return pool == nil
        }
    }

    /// Submits one H2D page whose fence signals on a completion thread, and runs `body` in its callback,
    /// which holds the only reference to the engine. Retries (at most 200 engines) while the fence
    /// signalled before the callback was added, which runs it on the test's own thread and proves nothing
    /// (a `mapped` worker can finish the 4 KiB copy first many times in a row: 20 tries ran out once).
    func onCompletionThread(_ variant: Variant, _ body: @escaping @Sendable (DMAEngine) -> Void) throws -> Outcome {
        for _ in 0..<200 {
            let returned = DispatchSemaphore(value: 0)
            let onOtherThread = IDSlots(1)
            let caller = Int(bitPattern: UInt(pthread_self()))
            let host = HostBuffer(1 << 16)  // outlives the copy (the engine may not)
            var out = Outcome()
            let fence: Fence = try {
                let engine = try DMAEngine(configuration: .init(backend: variant.kind, queueDepth: 8))
                let h = try engine.registerHostMemory(host.bytes)
                let vram = try engine.createVRAMPool(size: 1 << 16)
                let ch = try engine.makeChannel()
                (out.channel, out.pool) = (ch, vram)
                try ch.enqueueCopy(from: DMAAddress(region: h, offset: 0), to: vram.address(0), length: 4096)
                let f = try ch.submit()
                f.onSignal { [engine] _ in
                    onOtherThread.set(0, Int(bitPattern: UInt(pthread_self())) == caller ? 0 : 1)
                    body(engine)
                    returned.signal()
                }
                return f
            }()
            guard returned.wait(timeout: .now() + 20) == .success else { return out }
            out.ran = true
            if onOtherThread.values[0] == 1 { return out }
            withExtendedLifetime((host, fence)) {}
        }
        Issue.record("the fence always signalled before its callback was added")
        return Outcome()
    }

    @Test(arguments: Variant.allCases)
    func shutdownInACallbackReturnsAndDrainsElsewhere(_ variant: Variant) throws {
        let out = try onCompletionThread(variant) { engine in engine.shutdown() }
        #expect(out.ran, "shutdown() inside the callback returned")
        #expect(throws: DMAError.shutDown) { try out.channel?.submit() }
        #expect(out.drained())
    }

    /// The callback holds the last reference to the engine: its deinit shuts down on the completion thread.
    @Test(arguments: Variant.allCases)
    func lastEngineReferenceDroppedInACallback(_ variant: Variant) throws {
        let out = try onCompletionThread(variant) { _ in }
        #expect(out.ran)
        #expect(out.drained(), "the engine was deinitialised and drained")
    }
}

/// Shutdown from two threads at once: neither returns before the copies are done.
@Suite(.timeLimit(.minutes(1))) struct ConcurrentShutdownTests {
    @Test func aSecondShutdownWaitsForTheFirstOnesDrain() throws {
        let plan = FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(300)))])
        let engine = try DMAEngine(configuration: .init(backend: .faultInjecting(plan, wrapping: .ioUring)))
        let host = HostBuffer(1 << 16)
        let h = try engine.registerHostMemory(host.bytes)
        let vram = try engine.createVRAMPool(size: 1 << 16)
        let ch = try engine.makeChannel()
        try ch.enqueueCopy(from: vram.address(0), to: DMAAddress(region: h, offset: 0), length: 4096)  // delayed
        let f = try ch.submit()
        let first = DispatchSemaphore(value: 0)
        Thread {  // a thread of its own: Dispatch's global queue may be busy with other tests for a while
            engine.shutdown()
            first.signal()
        }.start()
        usleep(50_000)  // the first shutdown is draining
        engine.shutdown()
        #expect(f.isSignaled, "after shutdown() returns, nothing writes into host memory any more")
        #expect(first.wait(timeout: .now() + 20) == .success)
    }
}
