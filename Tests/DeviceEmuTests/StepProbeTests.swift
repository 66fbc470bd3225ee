import DMAEngine
@testable import DeviceEmu
import Foundation
import HostMM
import NIOConcurrencyHelpers
import Synchronization
import Testing

/// `StepProbe`: fires once per arming at the chosen step, holds the driver there while
/// its action runs, tells whether the action finished while held, forwards every event.
@Suite(.timeLimit(.minutes(1))) struct StepProbeTests {
    /// A device with a probe (forwarding to an event log), and a 32-page process.
    struct World {
        let memory: PhysicalMemory
        let probe: StepProbe
        let log: EventLog
        let gpu: Device
        let mm: AddressSpace
        let base: UInt64
        let pattern: PagePattern
        var all: Range<UInt64> { range(base, pages: 32) }

        init() throws {
            memory = try makeMemory(mib: 32)
            log = EventLog()
            probe = StepProbe(forwardingTo: log)
            var policy = MigrationPolicy()
            policy.batchPages = 16
            gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: probe)
            (mm, base, pattern) = try makeProcess(memory, pages: 32, seed: 11)
        }
    }

    @Test func firesOnceAtTheChosenOccurrenceAndForwardsEveryEvent() throws {
        let w = try World()
        defer { try? w.gpu.shutdown() }
        let runs = Atomic<Int>(0)
        try w.probe.arm(at: .init(.finalizeBegin, direction: .toDevice, occurrence: 2)) {
            runs.add(1, ordering: .relaxed)
        }
        #expect(w.probe.outcome == .armed)
        #expect(try w.gpu.migrateToDevice(w.mm, range: w.all).migrated == 32)
        #expect(w.probe.waitForAction())
        #expect(runs.load(ordering: .relaxed) == 1)
        #expect(w.probe.outcome == .finishedWhileHeld)
        let at = try #require(w.probe.firedAt)
        #expect(at.kind == .finalizeBegin && at.direction == .toDevice)
        #expect(at.address == w.base + UInt64(16 * pageSize), "the second batch starts at page 16")
        // The log behind the probe saw both batches' steps, the fired one included.
        #expect(w.log.count(.finalizeBegin, .toDevice) == 2)
        #expect(w.log.count(.setupBegin, .toDevice) == 2)
        // Fired once per arming: another migration does not run the action again.
        #expect(try w.pattern.cpuMismatches(w.mm, w.base, pages: 32).isEmpty)  // faults them back
        _ = try w.gpu.migrateToDevice(w.mm, range: w.all)
        #expect(runs.load(ordering: .relaxed) == 1)
    }

    /// At the fence wait, the batch's pages are locked behind migration entries: a CPU read
    /// of one waits for finalize, so it finishes only after the probe lets the driver go.
    @Test func anActionBlockedByTheHeldStepFinishesAfterTheHold() throws {
        let w = try World()
        defer { try? w.gpu.shutdown() }
        let read = NIOLockedValueBox<[UInt8]?>(nil)
        let (mm, target) = (w.mm, w.base + UInt64(3 * pageSize))
        try w.probe.arm(at: .init(.fenceWaitBegin, direction: .toDevice), hold: .milliseconds(50)) {
            let bytes = try? mm.read(at: target, count: pageSize)
            read.withLockedValue { $0 = bytes }
        }
        #expect(try w.gpu.migrateToDevice(w.mm, range: w.all).migrated == 32)
        #expect(w.probe.waitForAction())
        #expect(w.probe.outcome == .finishedAfterHold)
        #expect(read.withLockedValue { $0 } == w.pattern.page(3))
        #expect(w.gpu.checkInvariants().isEmpty)
    }

    /// Before setup nothing is locked: a CPU write finishes while the driver is held, and
    /// the migration then moves the written page.
    @Test func anActionThatNeedsNothingHeldFinishesWhileHeld() throws {
        let w = try World()
        defer { try? w.gpu.shutdown() }
        let (mm, target) = (w.mm, w.base + UInt64(5 * pageSize))
        let marker: [UInt8] = [0xA5, 0x5A, 1, 2, 3, 4, 5, 6]
        try w.probe.arm(at: .init(.setupBegin, direction: .toDevice), hold: .seconds(20)) {
            try? mm.write(at: target, bytes: marker)
        }
        #expect(try w.gpu.migrateToDevice(w.mm, range: w.all).migrated == 32)
        #expect(w.probe.waitForAction())
        #expect(w.probe.outcome == .finishedWhileHeld)
        #expect(w.gpu.residentPages(w.mm, w.base, pages: 32) == 32)
        var expected = w.pattern.page(5)
        expected.replaceSubrange(0..<marker.count, with: marker)
        #expect(try w.mm.read(at: target, count: pageSize) == expected)
    }

    /// The hold counts from the action's start: an action thread slow to get a CPU (here
    /// started 100 ms late, a loaded machine) still runs while the driver is held, and
    /// finishes while held. Before, the hold ran from the thread's creation: the driver
    /// went on after 10 ms and the action met the step already passed (the race matrix's
    /// suspend × gpu-read cells then saw a resumed device, not `.suspended`).
    @Test func theHoldCountsFromTheActionsStartNotItsThreadsCreation() throws {
        let memory = try makeMemory(mib: 32)
        let probe = StepProbe(forwardingTo: nil) { body in
            Thread.detachNewThread {
                usleep(100_000)
                body()
            }
        }
        var policy = MigrationPolicy()
        policy.batchPages = 16
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: probe)
        defer { try? gpu.shutdown() }
        let (mm, base, _) = try makeProcess(memory, pages: 32, seed: 13)
        let seen = NIOLockedValueBox<StepProbe.Outcome?>(nil)
        try probe.arm(at: .init(.setupBegin, direction: .toDevice), hold: .milliseconds(10)) {
            seen.withLockedValue { $0 = probe.outcome }
        }
        #expect(try gpu.migrateToDevice(mm, range: range(base, pages: 32)).migrated == 32)
        #expect(probe.waitForAction())
        #expect(seen.withLockedValue { $0 } == .runningWhileHeld, "the action ran after the driver went on")
        #expect(probe.outcome == .finishedWhileHeld)
    }

    @Test func aDirectionFilterSkipsOtherFlowsAndANeverReachedStepWaitsForNothing() throws {
        let w = try World()
        defer { try? w.gpu.shutdown() }
        let runs = Atomic<Int>(0)
        try w.probe.arm(at: .init(.setupBegin, direction: .evict)) { runs.add(1, ordering: .relaxed) }
        _ = try w.gpu.migrateToDevice(w.mm, range: w.all)
        #expect(w.probe.waitForAction(timeout: .milliseconds(1)))
        #expect(w.probe.outcome == .armed)
        #expect(w.probe.firedAt == nil)
        try w.gpu.suspend()
        #expect(w.probe.waitForAction())
        #expect(runs.load(ordering: .relaxed) == 1)
        #expect(w.probe.firedAt?.direction == .evict)
        try w.gpu.resume()
        #expect(try w.pattern.cpuMismatches(w.mm, w.base, pages: 32).isEmpty)
    }

    @Test func disarmStopsAnArmedProbe() throws {
        let w = try World()
        defer { try? w.gpu.shutdown() }
        #expect(!w.probe.disarm(), "nothing armed")
        let runs = Atomic<Int>(0)
        try w.probe.arm(at: .init(.setupBegin)) { runs.add(1, ordering: .relaxed) }
        #expect(w.probe.disarm())
        #expect(w.probe.outcome == .idle)
        _ = try w.gpu.migrateToDevice(w.mm, range: w.all)
        #expect(runs.load(ordering: .relaxed) == 0)
    }

    @Test func badArmingsThrowInvalidArgument() throws {
        let w = try World()
        defer { try? w.gpu.shutdown() }
        #expect(throws: DeviceError.invalidArgument) { try w.probe.arm(at: .init(.setupBegin, occurrence: 0)) {} }
        #expect(throws: DeviceError.invalidArgument) { try w.probe.arm(at: .init(.setupBegin), hold: .seconds(-1)) {} }
        #expect(w.probe.outcome == .idle, "a refused arming changes nothing")
        // Re-arming from inside the running action is refused: one action at a time.
        let inner = NIOLockedValueBox<DeviceError?>(nil)
        let probe = w.probe
        try probe.arm(at: .init(.setupEnd)) {
            do { try probe.arm(at: .init(.finalizeEnd)) {} } catch let e as DeviceError { inner.withLockedValue { $0 = e } } catch {}
        }
        _ = try w.gpu.migrateToDevice(w.mm, range: w.all)
        #expect(probe.waitForAction())
        #expect(inner.withLockedValue { $0 } == .invalidArgument)
        #expect(probe.outcome == .finishedWhileHeld)
        // Once the action returned, the probe can be armed again.
        try probe.arm(at: .init(.setupBegin)) {}
        #expect(probe.outcome == .armed)
    }
}
