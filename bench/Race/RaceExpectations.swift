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

    /// Whether `action` may fail with `error` while `flow` runs.
    ///
    /// - A suspend while an eviction or a CPU fault's `migrateToRAM` (neither passes the
    ///   device gate the suspend closes and drains) holds VRAM pages locked: the suspend's
    ///   eviction retries a few passes (about 20 ms) and then, as documented on `evictAll`,
    ///   leaves pages that stay locked and reports `.busy`. The held flow evicts them itself
    ///   once it goes on, so the pages are checked as usual. A hold longer than the retry
    ///   budget gets here (at the default 20 ms it depends on timing). Waiting for locked
    ///   pages instead is no fix by itself: a page a buggy driver leaked locked would hang
    ///   teardown (`CheckedDeviceTests.devicePagesNeverFreedAreLeaksAtTeardown`); it needs
    ///   device-wide tracking of the migrations in flight.
    static func actionMayFail(_ flow: RaceFlow, _ action: RaceAction, _ error: any Error) -> Bool {
        switch (flow, action) {
        case (.evict, .suspendResume), (.cpuFault, .suspendResume):
            return (error as? DeviceError) == .busy
        default:
            return false
        }
    }
}
