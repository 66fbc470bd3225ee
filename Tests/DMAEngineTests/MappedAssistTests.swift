@testable import DMAEngine
import Foundation
import NIOConcurrencyHelpers
import SystemPackage
import Testing

/// A thread waiting on a fence of the mapped backend runs queued copies itself
/// (`CopyBackend.assist`, io_uring's DEFER_TASKRUN): with no worker started, only
/// waiters copy, so who did the work is deterministic.
@Suite struct MappedAssistTests {
    /// The mapped backend with its workers never started: copies run only in waiters.
    static let waitersOnly = CopyBackendKind.custom(name: "mapped(waiters only)") { settings in
        MappedWorkersBackend(threads: 2, queueDepth: settings.queueDepth, startWorkers: false)
    }

    static func rig(_ kind: CopyBackendKind = waitersOnly) throws -> EngineRig {
        try EngineRig(.init(backend: kind, queueDepth: 64), patternSeed: 23)
    }

    /// Copies pages `pages` host → VRAM (same offsets) and submits them.
    static func submit(_ rig: EngineRig, _ pages: Range<Int>) throws -> Fence {
        for i in pages { try rig.ch.enqueueCopy(from: rig.host(i), to: rig.vram.address(i * 4096), length: 4096) }
        return try rig.ch.submit()
    }

    static func copied(_ rig: EngineRig, _ pages: Range<Int>) -> Bool {
        same(rig.host.bytes.baseAddress! + pages.lowerBound * 4096,
             rig.vram.mapping.baseAddress! + pages.lowerBound * 4096, pages.count * 4096)
    }

    /// Runs `work` on a thread of its own; false if it has not returned within 20 s (a
    /// waiter that only sleeps would never return here: the test fails instead of hanging).
    static func finishes(_ work: @escaping @Sendable () -> Void) -> Bool {
        let done = DispatchSemaphore(value: 0)
        Thread { work(); done.signal() }.start()
        return done.wait(timeout: .now() + .seconds(20)) == .success
    }

    static func waited(_ fence: Fence) -> Bool { finishes { _ = fence.waitForSignal() } }

    @Test func anUntimedWaitCopiesWhatNoWorkerTook() throws {
        let rig = try Self.rig()
        defer { #expect(Self.finishes { rig.engine.shutdown() }) }
        let fence = try Self.submit(rig, 0..<200)
        #expect(!fence.isSignaled)
        #expect(!Self.copied(rig, 0..<1))
        // A timed wait only sleeps: nothing runs the queued slices.
        #expect(throws: DMAError.timedOut) { try fence.wait(timeout: .milliseconds(30)) }
        #expect(Self.waited(fence))
        #expect(fence.failures.isEmpty)
        #expect(Self.copied(rig, 0..<200))
        #expect(try rig.ch.status(of: DMATicket(rawValue: 199)) == .succeeded)
    }

    /// The waiter stops once its own fence signalled: a later batch stays queued.
    @Test func assistStopsAtTheAwaitedFence() throws {
        let rig = try Self.rig()
        defer { #expect(Self.finishes { rig.engine.shutdown() }) }
        let first = try Self.submit(rig, 0..<100)
        let second = try Self.submit(rig, 100..<200)
        #expect(Self.waited(first))
        #expect(first.isSignaled && !second.isSignaled)
        #expect(Self.copied(rig, 0..<100))
        #expect(try rig.ch.status(of: DMATicket(rawValue: 100)) == .pending)
        // Waiting on the later fence runs the queue in order: the earlier one signals first.
        let third = try Self.submit(rig, 200..<256)
        #expect(Self.waited(third))
        #expect(second.isSignaled && third.isSignaled)
        #expect(Self.copied(rig, 0..<256))
    }

    /// Shutdown runs what is still queued (no silent loss) before it releases the backend.
    @Test func shutdownRunsQueuedCopies() throws {
        let rig = try Self.rig()
        let fence = try Self.submit(rig, 0..<64)
        #expect(!fence.isSignaled)
        #expect(Self.finishes { rig.engine.shutdown() })
        #expect(fence.isSignaled)
        #expect(fence.failures.isEmpty)
        #expect(Self.copied(rig, 0..<64))
    }

    /// Through the fault injector the waiter copies too, and injected failures still
    /// reach the fence with their descriptor.
    @Test func injectedFailuresSurviveAnAssistingWaiter() throws {
        let plan = FaultPlan(rules: [.init(.nth(5), .fail(.ioError))])
        let rig = try Self.rig(.faultInjecting(plan, wrapping: Self.waitersOnly))
        defer { #expect(Self.finishes { rig.engine.shutdown() }) }
        memset(rig.vram.mapping.baseAddress! + 5 * 4096, 0xAB, 4096)
        let fence = try Self.submit(rig, 0..<32)
        #expect(Self.waited(fence))
        #expect(fence.error == .copyFailed(
            [DescriptorFailure(ticket: DMATicket(rawValue: 5), index: 5, errno: .ioError, bytesCompleted: 0)]))
        #expect(Self.copied(rig, 0..<5) && Self.copied(rig, 6..<32))
        #expect(rig.vram.mapping.load(fromByteOffset: 5 * 4096 + 17, as: UInt8.self) == 0xAB)
    }

    /// Workers and several waiters take slices of the same channel at once (bounded:
    /// 2 threads × 40 batches); every page lands and every fence signals in order.
    @Test func waitersAndWorkersShareTheQueue() throws {
        let rig = try EngineRig(.init(backend: .mappedWorkers(threads: 2), queueDepth: 8), size: 4 << 20, patternSeed: 29)
        defer { rig.engine.shutdown() }
        let order = NIOLockedValueBox<[UInt64]>([])
        DispatchQueue.concurrentPerform(iterations: 2) { t in
            for round in 0..<40 {
                let first = (t * 40 + round) * 12
                let fence = try! Self.submit(rig, first..<first + 12)
                fence.onSignal { f in order.withLockedValue { $0.append(f.seqno) } }
                try! fence.wait()
            }
        }
        #expect(Self.copied(rig, 0..<960))
        for _ in 0..<20_000 where order.withLockedValue({ $0.count }) < 80 { usleep(1000) }   // callbacks: ≥ 20 s
        #expect(order.withLockedValue { $0 }.sorted() == Array(1...80))
    }
}
