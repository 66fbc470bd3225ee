import DeviceEmu
import HostMM

/// The errors a race-matrix cell accepts, each the documented outcome of the race, not a
/// failure of the model. Anything else a flow or an action throws fails the cell.
///
/// Threads: pure functions; any thread.
enum RaceExpectations {
    /// Whether `flow` may fail with `error` while `action` races it.
    ///
    /// - The fault flows' access to a page the action unmapped: SIGSEGV (SEGV_MAPERR) for
    ///   the CPU, a GPU fault (`.fault`) for the GPU, as `hmm_range_fault` returns -EFAULT
    ///   for an address with no VMA.
    /// - The GPU flows when their view is unbound under them: `.shutDown` (the view's
    ///   accesses in flight fail at their next page).
    /// - The GPU stores (`gpu-write`, `gpu-atomic`) after `mprotect(PROT_READ)`:
    ///   `.permissionDenied`, the GPU fault on a VMA without `VM_WRITE` (nouveau's
    ///   `hmm_range_fault` with `HMM_PFN_REQ_WRITE` returns -EPERM).
    /// - `suspend` when a teardown took the device between its suspend and its resume:
    ///   the resume throws `.shutDown` (teardown is final).
    static func flowMayFail(_ flow: RaceFlow, _ action: RaceAction, _ error: any Error, at target: UInt64) -> Bool {
        switch (flow, action) {
        case (.cpuFault, .munmap), (.cpuFault, .mremap):
            return (error as? HostMMError) == .segmentationFault(address: target, reason: .notMapped)
        case (.gpuFault, .munmap), (.gpuAtomic, .munmap), (.gpuWrite, .munmap),
             (.gpuFault, .mremap), (.gpuAtomic, .mremap), (.gpuWrite, .mremap):
            return (error as? DeviceError) == .fault(address: target)
        case (.gpuFault, .unbind), (.gpuAtomic, .unbind), (.gpuWrite, .unbind), (.suspend, .shutdown):
            return (error as? DeviceError) == .shutDown
        case (.gpuAtomic, .mprotect), (.gpuWrite, .mprotect):
            return (error as? DeviceError) == .permissionDenied(address: target)
        default:
            return false
        }
    }

    /// Whether `error` is System RAM running out under `--ram` (`c.ramPressure`), which any
    /// flow or action that needs a frame may meet, having changed nothing: ENOMEM from a CPU
    /// fault (the dmem driver's `migrate_to_ram` or a COW with no frame: VM_FAULT_OOM), a
    /// GPU fault's `hmm_range_fault`, a pin, a fork, and from suspend or teardown, whose
    /// eviction stops short (nouveau's `__GFP_NOFAIL` cannot fail; the model reports it and
    /// leaves the pages in VRAM, retryable).
    /// A GPU access whose fault needs a frame (`hmm_range_fault` faulting a page in for a
    /// store) fails with `.fault` at the target: `hmm_vma_fault` returns -EFAULT for every
    /// VM_FAULT_ERROR, VM_FAULT_OOM included.
    static func outOfRAM(_ error: any Error, _ c: RaceConfiguration, at target: UInt64) -> Bool {
        guard c.ramPressure else { return false }
        if (error as? HostMMError) == .outOfMemory { return true }
        guard let e = error as? DeviceError else { return false }
        return e == .hostMM(.outOfMemory) || e == .fault(address: target)
    }

    /// Whether `action` may fail with `error` while `flow` runs.
    ///
    /// - While the `suspend` flow holds the device suspended, the operations its gate admits
    ///   — GPU accesses and migrations to VRAM — fail with `.suspended` (`OperationGate`: a
    ///   suspended GPU takes no work, as nouveau's runtime-suspended device runs no channel).
    ///
    /// - A long-term `pin` of a device-coherent page moves it to RAM first
    ///   (`migrate_device_coherent_folio`), which fails with `.busy` while another holder
    ///   keeps a reference — a migration that just mapped the page and has not yet dropped
    ///   its own — and `__gup_longterm_locked` retries only `-EAGAIN`: the pin returns EBUSY
    ///   (device-private pages come back through `migrate_to_ram` and never fail so).
    ///
    /// Nothing else may: a suspend or a teardown racing a CPU fault or an eviction that
    /// holds VRAM pages locked used to report `.busy` (and checked mode a leak) after a few
    /// passes; they now wait for the migrations in flight (`LifecycleRaceTests`).
    static func actionMayFail(_ flow: RaceFlow, _ action: RaceAction, _ error: any Error,
                              memory: RaceConfiguration.Memory) -> Bool {
        switch (flow, action) {
        case (.suspend, .gpuRead), (.suspend, .gpuWrite), (.suspend, .gpuAtomic), (.suspend, .migrateToDevice):
            return (error as? DeviceError) == .suspended
        case (_, .pin):
            return memory == .coherent && (error as? HostMMError) == .busy
        default:
            return false
        }
    }
}
