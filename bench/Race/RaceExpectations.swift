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
    ///   `hmm_range_fault` with `HMM_PFN_REQ_WRITE` returns -EPERM); dmirror's WRITE the
    ///   same, its READ, WRITE and EXCLUSIVE `EFAULT` after munmap or mremap (no VMA), EXCLUSIVE
    ///   `EFAULT` after mprotect (GUP for write fails).
    /// - MIGRATE_TO_DEV and EXCLUSIVE: `ENOENT` from their read-back when an action took a
    ///   page out of the mirror (`readBackMayMiss`).
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
        case (.mirrorRead, .munmap), (.mirrorWrite, .munmap), (.mirrorRead, .mremap), (.mirrorWrite, .mremap):
            return (error as? MirrorError) == .fault
        case (.mirrorExclusive, .munmap), (.mirrorExclusive, .mremap), (.mirrorExclusive, .mprotect):
            // Before the page is taken, GUP for write fails; after, the read-back misses it.
            return (error as? MirrorError) == .fault || readBackMayMiss(action, error)
        case (.mirrorWrite, .mprotect):
            return (error as? MirrorError) == .permissionDenied
        case (.mirrorToDevice, _), (.mirrorExclusive, _):
            return readBackMayMiss(action, error)
        default:
            return false
        }
    }

    /// MIGRATE_TO_DEV and EXCLUSIVE end with a read-back through the mirror, after the
    /// mmap lock is dropped, that faults nothing and returns `ENOENT` when any page of the
    /// range is not in the mirror (`dmirror_migrate_to_device`, `dmirror_exclusive` →
    /// `dmirror_do_read`). Every action that moves, unmaps, zaps, write-protects, restores
    /// or takes a page of the range meanwhile — or holds its lock, so a migration's setup
    /// skips it, or shuts the device so nothing is allocated — leaves it out. Only the GPU
    /// accesses of the same open (they fault into its table) and `close()` (the command
    /// holds the file: the release waits for it) cannot.
    private static func readBackMayMiss(_ action: RaceAction, _ error: any Error) -> Bool {
        switch action {
        case .none, .gpuRead, .gpuWrite, .unbind: return false
        default: return (error as? MirrorError) == .noEntry
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
    /// - `--driver mirror`: a concurrent MIGRATE_TO_DEV may miss pages (`ENOENT`, above).
    /// - A long-term `pin` of a device-coherent page moves it to RAM first
    ///   (`migrate_device_coherent_folio`), which fails with `.busy` while another holder
    ///   keeps a reference — a migration that just mapped the page and has not yet dropped
    ///   its own — and `__gup_longterm_locked` retries only `-EAGAIN`: the pin returns EBUSY
    ///   (device-private pages come back through `migrate_to_ram` and never fail so).
    /// - `--driver mirror`: EXCLUSIVE against `mirror-cpu-fault` may return `ENOENT`. The
    ///   command's GUP faults the page back through the same `migrate_to_ram` as the flow's
    ///   read (retrying while the flow's fault holds the page lock), so the flow's replay
    ///   may come after the device-exclusive entry is in: it restores the entry
    ///   (`remove_device_exclusive_entry`), whose invalidation drops dmirror's atomic entry
    ///   before `dmirror_exclusive`'s read-back, which runs after the mmap lock is dropped
    ///   and faults nothing (`dmirror_do_read`: `-ENOENT`). About 1 run in 3 here.
    ///
    /// Nothing else may: a suspend or a teardown racing a CPU fault or an eviction that
    /// holds VRAM pages locked used to report `.busy` (and checked mode a leak) after a few
    /// passes; they now wait for the migrations in flight (`LifecycleRaceTests`).
    static func actionMayFail(_ flow: RaceFlow, _ action: RaceAction, _ error: any Error,
                              memory: RaceConfiguration.Memory) -> Bool {
        switch (flow, action) {
        case (_, .migrateToDevice) where flow.driver == .mirror:
            // The concurrent MIGRATE_TO_DEV skips the pages the flow holds locked (or
            // has just moved): its read-back misses them.
            return readBackMayMiss(action, error)
        case (.suspend, .gpuRead), (.suspend, .gpuWrite), (.suspend, .gpuAtomic), (.suspend, .migrateToDevice):
            return (error as? DeviceError) == .suspended
        case (_, .pin):
            return memory == .coherent && (error as? HostMMError) == .busy
        case (.mirrorCPUFault, .exclusive):
            return (error as? MirrorError) == .noEntry
        default:
            return false
        }
    }
}

/// A race whose outcome breaks the shadow model because lib/test_hmm.c itself breaks it:
/// the model reproduces the kernel's test driver, window and all, so the cell's matching
/// problems become notes (with `why`), and any other problem still fails it.
///
/// Threads: immutable value; any thread.
struct RaceQuirk: Sendable {
    /// The kernel behaviour, and where it is.
    var why: String
    /// The beginnings of the problems the quirk explains.
    var signatures: [String]

    func covers(_ problem: String) -> Bool { signatures.contains { problem.hasPrefix($0) } }

    /// The known quirk of `flow` raced by `action` on `target`, if any.
    ///
    /// The first two are `MADV_DONTNEED` windows in which dmirror stores a page into its table with
    /// no notifier sequence check, after the zap's invalidation has come and gone: the
    /// entry then names a page the zap freed, and a READ returns its stale bytes.
    /// - `dmirror_migrate_finalize_and_map` (MIGRATE_TO_DEV, between `migrate_vma_setup`
    ///   and `migrate_vma_finalize`: the zap removes the migration entries, finalize frees
    ///   the new device pages the table now maps; docs/dmirror-spec.md §6).
    /// - `dmirror_exclusive` → `dmirror_atomic_map` (EXCLUSIVE, between
    ///   `make_device_exclusive`'s return and the atomic entry: the zap drops the
    ///   device-exclusive entry, and the folio's last reference goes with the command's
    ///   `folio_put`). `make_device_exclusive`'s contract asks the caller to re-validate with
    ///   an MMU notifier sequence; test_hmm does not.
    ///
    /// The third is dmirror's own table during its own MIGRATE_TO_SYS: the unmap's
    /// `MMU_NOTIFY_MIGRATE` names the device as owner, so `dmirror_interval_invalidate`
    /// keeps the entries, and `dmirror_devmem_fault_alloc_and_copy` erases each only just
    /// before copying its page. A WRITE of the same open in between stores into the
    /// source page after `migrate_vma_setup`: the copy that follows carries it (nothing is
    /// lost), but checked mode sees a source that changed after setup — where it can
    /// (coherent memory: the source bytes are CPU-reachable).
    static func known(_ flow: RaceFlow, _ action: RaceAction, target: Int) -> RaceQuirk? {
        let signatures = ["mirror: page \(target) is not ", "protocol: protocol violation [device-pte-maps-freed-page]"]
        switch (flow, action) {
        case (.mirrorToDevice, .dontNeed):
            return RaceQuirk(why: "faithful to test_hmm: dmirror_migrate_finalize_and_map maps pages a racing "
                             + "MADV_DONTNEED freed (no notifier sequence check)", signatures: signatures)
        case (.mirrorExclusive, .dontNeed):
            return RaceQuirk(why: "faithful to test_hmm: dmirror_atomic_map maps a page a racing MADV_DONTNEED "
                             + "freed after make_device_exclusive (no notifier sequence check)", signatures: signatures)
        case (.mirrorToSystem, .gpuWrite):
            return RaceQuirk(why: "faithful to test_hmm: its own migration leaves its pt entries (dmirror_interval_invalidate "
                             + "skips MMU_NOTIFY_MIGRATE of its owner) until alloc_and_copy erases each before its copy",
                             signatures: ["protocol: protocol violation [source-modified-after-setup]"])
        default:
            return nil
        }
    }
}
