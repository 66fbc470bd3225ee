import DeviceEmu
import HostMM

/// The errors a race-matrix cell accepts, each the documented outcome of the race, not a
/// failure of the model. Anything else a flow or an action throws fails the cell.
///
/// Threads: pure functions; any thread.
enum RaceExpectations {
    /// Whether `flow` may fail with `error` while `action` races it.
    ///
    /// - The fault flows' read of a page the action unmapped: SIGSEGV (SEGV_MAPERR) for
    ///   the CPU, a GPU fault (`.fault`) for the GPU, as `hmm_range_fault` returns -EFAULT
    ///   for an address with no VMA.
    /// - The GPU fault flow when its view is unbound under it: `.shutDown` (the view's
    ///   accesses in flight fail at their next page).
    static func flowMayFail(_ flow: RaceFlow, _ action: RaceAction, _ error: any Error, at target: UInt64) -> Bool {
        switch (flow, action) {
        case (.cpuFault, .munmap):
            return (error as? HostMMError) == .segmentationFault(address: target, reason: .notMapped)
        case (.gpuFault, .munmap):
            return (error as? DeviceError) == .fault(address: target)
        case (.gpuFault, .unbind):
            return (error as? DeviceError) == .shutDown
        default:
            return false
        }
    }

    /// Whether `action` may fail with `error` while `flow` runs. None may: a suspend or a
    /// teardown racing a CPU fault or an eviction that holds VRAM pages locked used to
    /// report `.busy` (and checked mode a leak) after a few passes; they now wait for the
    /// migrations in flight (`LifecycleRaceTests`).
    static func actionMayFail(_ flow: RaceFlow, _ action: RaceAction, _ error: any Error) -> Bool {
        false
    }
}
