import NIOConcurrencyHelpers

/// Counts driver operations in flight (migrations, GPU accesses) and lets `suspend` and
/// teardown close the device and wait for them to drain — the role of nouveau's
/// `dmem->mutex` plus the DRM device's suspend/unplug barriers.
///
/// Operations nest (a GPU fault migrates inside a GPU access): `enter` only counts.
/// Threads: any.
final class OperationGate: @unchecked Sendable {
    enum State: Equatable { case running, suspended, shutDown }

    /// Its value is true while no operation is in flight.
    private let idle = ConditionLock<Bool>(value: true)
    // Guarded by `idle`'s lock:
    private var active = 0
    private var current = State.running

    var state: State {
        idle.lock()
        defer { idle.unlock() }
        return current
    }

    /// Starts an operation. - Throws: `.suspended` / `.shutDown` unless running.
    func enter() throws(DeviceError) {
        idle.lock()
        guard current == .running else {
            let s = current
            idle.unlock()
            throw s == .shutDown ? .shutDown : .suspended
        }
        active += 1
        idle.unlock(withValue: false)
    }

    func exit() {
        idle.lock()
        active -= 1
        idle.unlock(withValue: active == 0)
    }

    /// Runs `body` as one operation.
    func run<T, E: Error>(_ body: () throws(E) -> T) throws(DeviceError) -> Result<T, E> {
        try enter()
        defer { exit() }
        do { return .success(try body()) } catch { return .failure(error) }
    }

    /// Moves to `state` (refusing new operations unless `.running`) — unless shut down,
    /// which is final — and waits until none is in flight. Returns the state it left.
    @discardableResult
    func close(to state: State) -> State {
        idle.lock()
        let old = current
        if current != .shutDown { current = state }
        idle.unlock(withValue: active == 0)
        idle.lock(whenValue: true)
        idle.unlock()
        return old
    }

    /// Back to `.running` unless shut down; returns whether it is running.
    func reopen() -> Bool {
        idle.lock()
        if current == .suspended { current = .running }
        let running = current == .running
        idle.unlock(withValue: active == 0)
        return running
    }
}
