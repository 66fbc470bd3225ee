import DMAEngine
import Dispatch
import Foundation
import NIOConcurrencyHelpers

/// Pins one interleaving of a race: when the driver reaches a chosen step, runs an
/// action on a thread of its own and holds the driver at that step until the action
/// returns or `hold`, counted from the action's start, runs out. Modelled on a kprobe
/// whose pre-handler blocks: the kernel developer's way of widening a race window to a
/// known place.
///
/// Install it as `Device.Configuration.observer` (it forwards every event to `next`),
/// then `arm` it once the objects the action needs exist. It fires once per arming,
/// at the `occurrence`-th event that matches. An action that needs a lock the held
/// thread owns (an `munmap` against a migration's mmap read lock) waits for it: the
/// step goes on after `hold`, and the action completes after the step, which
/// `outcome` reports as `.finishedAfterHold`.
///
/// Threads: the action runs on a new thread; the held thread waits on a semaphore
/// (no spinning). The action may call into the device and its address spaces.
public final class StepProbe: MigrationObserver, @unchecked Sendable {
    /// What became of the armed action.
    public enum Outcome: Sendable, Equatable {
        /// Not armed (or disarmed).
        case idle
        /// Armed; the step not reached yet.
        case armed
        /// The step was reached; the driver is held there while the action runs.
        case runningWhileHeld
        /// The action is still running, and the driver went on after `hold`.
        case runningAfterHold
        /// The action returned while the driver was held at the step.
        case finishedWhileHeld
        /// The step went on after `hold`; the action returned later (it was blocked by
        /// the held thread, or slow).
        case finishedAfterHold
    }

    /// Which event fires the probe.
    public struct Trigger: Sendable, Equatable {
        public var kind: MigrationEvent.Kind
        /// nil: any direction.
        public var direction: MigrationEvent.Direction?
        /// Fire at the n-th matching event after arming (1 = the first).
        public var occurrence: Int

        public init(_ kind: MigrationEvent.Kind, direction: MigrationEvent.Direction? = nil, occurrence: Int = 1) {
            self.kind = kind
            self.direction = direction
            self.occurrence = occurrence
        }

        public func matches(_ event: MigrationEvent) -> Bool {
            event.kind == kind && (direction == nil || event.direction == direction)
        }
    }

    /// Receives every event, fired or not (a tracer, a checker).
    public let next: (any MigrationObserver)?

    private let lock = NIOLock()
    // Guarded by `lock`:
    private var trigger: Trigger?
    private var action: (@Sendable () throws -> Void)?
    private var thrown: (any Error)?
    private var hold: Duration = .zero
    private var seen = 0
    private var state = Outcome.idle
    private var heldEvent: MigrationEvent?
    private var finished: DispatchSemaphore?
    /// Starts the action's thread (tests substitute a slow start).
    private let startThread: @Sendable (@escaping @Sendable () -> Void) -> Void

    public convenience init(forwardingTo next: (any MigrationObserver)? = nil) {
        self.init(forwardingTo: next) { Thread.detachNewThread($0) }
    }

    init(forwardingTo next: (any MigrationObserver)?,
         startThread: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void) {
        self.next = next
        self.startThread = startThread
    }

    /// Arms the probe: `action` runs at the `trigger`'s event, and the driver waits at that
    /// step for it up to `hold`. Replaces an earlier arming whose step was not reached.
    /// An error the action throws is kept in `actionError` (the action's thread has no
    /// caller to throw to).
    /// - Throws: `.invalidArgument` while an earlier action is still running, or for an
    ///   `occurrence` below 1 or a negative `hold`.
    public func arm(at trigger: Trigger, hold: Duration = .milliseconds(100),
                    action: @escaping @Sendable () throws -> Void) throws(DeviceError) {
        guard trigger.occurrence >= 1 else { throw .invalidArgument(reason: "occurrence \(trigger.occurrence) is below 1") }
        guard hold >= .zero else { throw .invalidArgument(reason: "hold \(hold) is negative") }
        lock.lock()
        defer { lock.unlock() }
        guard state != .runningWhileHeld && state != .runningAfterHold else {
            throw .invalidArgument(reason: "an earlier action is still running")
        }
        self.trigger = trigger
        self.action = action
        self.hold = hold
        seen = 0
        thrown = nil
        heldEvent = nil
        finished = nil
        state = .armed
    }

    /// Disarms a probe whose step was not reached; returns whether it was armed.
    @discardableResult
    public func disarm() -> Bool {
        lock.withLock {
            guard state == .armed else { return false }
            trigger = nil
            action = nil
            state = .idle
            return true
        }
    }

    /// The armed action's state.
    public var outcome: Outcome { lock.withLock { state } }

    /// The error the fired action threw, nil while it runs or when it returned normally:
    /// the racing operation's own result (a kprobe handler's return value, read back).
    public var actionError: (any Error)? { lock.withLock { thrown } }

    /// The event the driver was held at, once the probe fired.
    public var firedAt: MigrationEvent? { lock.withLock { heldEvent } }

    /// Waits up to `timeout` for a fired action to return. True when it has returned, or
    /// when the probe never fired (nothing to wait for).
    public func waitForAction(timeout: Duration = .seconds(30)) -> Bool {
        guard let done = lock.withLock({ finished }) else { return true }
        guard done.wait(timeout: .now() + Self.interval(timeout)) == .success else { return false }
        done.signal()  // leave it signalled for later waiters
        return true
    }

    public func observe(_ event: MigrationEvent) {
        next?.observe(event)
        let fire = lock.withLock { () -> (@Sendable () throws -> Void, Duration, DispatchSemaphore)? in
            guard state == .armed, let trigger, trigger.matches(event) else { return nil }
            seen += 1
            guard seen == trigger.occurrence, let action else { return nil }
            let done = DispatchSemaphore(value: 0)
            finished = done
            heldEvent = event
            state = .runningWhileHeld
            self.action = nil
            self.trigger = nil
            return (action, hold, done)
        }
        guard let (action, hold, done) = fire else { return }
        let started = DispatchSemaphore(value: 0)
        let returned = DispatchSemaphore(value: 0)
        startThread { [self] in
            started.signal()
            var error: (any Error)?
            do { try action() } catch let e { error = e }
            lock.withLock {
                thrown = error
                state = state == .runningWhileHeld ? .finishedWhileHeld : .finishedAfterHold
            }
            returned.signal()
            done.signal()
        }
        // The hold counts from the action's start, not from its thread's creation: on a
        // loaded machine a new thread may wait for a CPU longer than the hold, and the
        // driver would go on before the action ran at all (a "while held" cell silently
        // testing the order after the step). Bounded, against a thread that never starts.
        _ = started.wait(timeout: .now() + Self.interval(Self.startTimeout))
        let inTime = returned.wait(timeout: .now() + Self.interval(hold)) == .success
        if !inTime {
            lock.withLock { if state == .runningWhileHeld { state = .runningAfterHold } }
        }
    }

    /// How long the held driver waits for the action's thread to start before its hold
    /// begins anyway.
    static let startTimeout: Duration = .seconds(10)

    private static func interval(_ d: Duration) -> DispatchTimeInterval {
        let ns = MonotonicTime.nanoseconds(d)
        return .nanoseconds(Int(min(ns, UInt64(Int.max))))
    }
}
