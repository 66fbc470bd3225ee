import NIOConcurrencyHelpers
import Synchronization

/// Counts driver operations in flight (migrations, GPU accesses) and lets `suspend` and
/// teardown close the device and wait for them to drain — the role of nouveau's
/// `dmem->mutex` plus the DRM device's suspend/unplug barriers.
///
/// Operations nest (a GPU fault migrates inside a GPU access): `enter` only counts.
/// Threads: any.
final class OperationGate: @unchecked Sendable {
    enum State: UInt8, Equatable { case running, suspended, shutDown }

    // Two atomic operations per enter or exit, a lock only on the way out of a closed
    // gate. `enter` increments, then reads the state; `close` stores the state, then
    // reads the count (all sequentially consistent): either the operation sees the gate
    // closed and backs out, or `close` sees it counted and waits for it.
    private let active = Atomic<Int>(0)
    private let current = Atomic<UInt8>(State.running.rawValue)
    /// Set by an exit that empties a closed gate; `close` takes it and counts again, so a
    /// stale one from an earlier closing costs one more look, never an early return.
    private let drained = ConditionLock<Bool>(value: false)

    var state: State { State(rawValue: current.load(ordering: .sequentiallyConsistent)) ?? .shutDown }

    /// Starts an operation. - Throws: `.suspended` / `.shutDown` unless running.
    @inline(__always)
    func enter() throws(DeviceError) {
        active.wrappingAdd(1, ordering: .sequentiallyConsistent)
        let s = current.load(ordering: .sequentiallyConsistent)
        if s != State.running.rawValue {
            exit()
            throw s == State.shutDown.rawValue ? .shutDown : .suspended
        }
    }

    @inline(__always)
    func exit() {
        let left = active.wrappingSubtract(1, ordering: .sequentiallyConsistent).newValue
        if left == 0 && current.load(ordering: .sequentiallyConsistent) != State.running.rawValue {
            drained.lock()
            drained.unlock(withValue: true)
        }
    }

    /// Runs `body` as one operation.
    func run<T, E: Error>(_ body: () throws(E) -> T) throws(DeviceError) -> Result<T, E> {
        try enter()
        defer { exit() }
        do { return .success(try body()) } catch { return .failure(error) }
    }

    /// Moves to `state` (refusing new operations unless `.running`) — unless shut down,
    /// which is final — and waits until none is in flight. Returns the state it left.
    /// Callers serialize `close` and `reopen` (the device's lifecycle lock).
    @discardableResult
    func close(to state: State) -> State {
        let old = self.state
        if old != .shutDown { current.store(state.rawValue, ordering: .sequentiallyConsistent) }
        while active.load(ordering: .sequentiallyConsistent) != 0 {
            drained.lock(whenValue: true)
            drained.unlock(withValue: false)
        }
        return old
    }

    /// Back to `.running` unless shut down; returns whether it is running.
    func reopen() -> Bool {
        if state == .suspended { current.store(State.running.rawValue, ordering: .sequentiallyConsistent) }
        return state == .running
    }
}
