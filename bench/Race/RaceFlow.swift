import DeviceEmu
import HostMM

/// A driver flow the race matrix holds step by step: each runs on a fresh `RaceWorld`.
///
/// Threads: a value; `prepare` and `run` are called on the matrix's thread.
enum RaceFlow: String, CaseIterable, Sendable {
    /// `migrateToDevice` of the whole range (`nouveau_dmem_migrate_vma`, in batches).
    case toDevice = "to-device"
    /// A CPU read of the target page after the range went to VRAM: the device-private
    /// fault (`handle_mm_fault` → `migrate_to_ram`).
    case cpuFault = "cpu-fault"
    /// Eviction of all VRAM after the range went there (`nouveau_dmem_evict_chunk`).
    case evict
    /// A GPU read of the target page, which no device entry maps: the GPU fault, resolved
    /// by the default policy (migrate a window to VRAM; `nouveau_svm_fault`).
    case gpuFault = "gpu-fault"
    /// A GPU fetch-add of 1 to the target page's first word, which no device entry maps:
    /// an atomic GPU fault. Migrating policies resolve it like `gpu-fault`; a policy that
    /// maps system memory takes the page device-exclusive instead
    /// (`nouveau_atomic_range_fault` → `make_device_exclusive`, the `.deviceExclusive` step).
    case gpuAtomic = "gpu-atomic"
    /// A GPU store of the marker page to the target page: a write fault (`nouveau_svm_fault`
    /// with write access; mapped system pages are faulted for write by `hmm_range_fault`).
    case gpuWrite = "gpu-write"
    /// `migrateRangeToRAM` of the whole range after it went to VRAM: dmirror's
    /// `HMM_DMIRROR_MIGRATE_TO_SYS`, a migration by virtual address that is not a fault.
    case migrateToRAM = "migrate-to-ram"
    /// `suspend()` then `resume()` with the range in VRAM: the device gate closes (waiting
    /// for the operations it admitted), then all VRAM is evicted — nouveau's
    /// `nouveau_dmem_suspend` before `nouveau_dmem_evict_chunk`'s work.
    case suspend
    /// dmirror's `HMM_DMIRROR_MIGRATE_TO_DEV` of the whole range (`--driver mirror`).
    case mirrorToDevice = "mirror-to-device"
    /// The range migrated by the mirror, then a CPU read of the target page:
    /// `dmirror_devmem_fault`.
    case mirrorCPUFault = "mirror-cpu-fault"
    /// The range migrated by the mirror, then `HMM_DMIRROR_MIGRATE_TO_SYS` of it.
    case mirrorToSystem = "mirror-to-sys"
    /// The range migrated by the mirror, then `HMM_DMIRROR_RELEASE` (evicts the device).
    case mirrorRelease = "mirror-release"
    /// `HMM_DMIRROR_READ` of the target page, which the mirror does not map:
    /// `dmirror_fault` (an `hmm_range_fault` snapshot).
    case mirrorRead = "mirror-read"
    /// `HMM_DMIRROR_WRITE` of the marker page to the target page: a write fault.
    case mirrorWrite = "mirror-write"
    /// `HMM_DMIRROR_EXCLUSIVE` of the target page (`make_device_exclusive`), then its
    /// read-back through the mirror.
    case mirrorExclusive = "mirror-exclusive"

    /// The driver the flow runs on.
    var driver: RaceConfiguration.Driver {
        switch self {
        case .toDevice, .cpuFault, .evict, .gpuFault, .gpuAtomic, .gpuWrite, .migrateToRAM, .suspend: return .nouveau
        case .mirrorToDevice, .mirrorCPUFault, .mirrorToSystem, .mirrorRelease, .mirrorRead, .mirrorWrite,
             .mirrorExclusive: return .mirror
        }
    }

    /// The world before the probe is armed: what the flow starts from.
    ///
    /// Under VRAM pressure (`--vram` below the range) the fault flows start from a VRAM the
    /// flow itself must contend for: the flows that start from the range in VRAM migrate the
    /// target's batch again after the range, so the target page is resident (the range's
    /// later batches evicted it) and the flow moves it;
    /// the GPU flows fill VRAM with the pages outside the fault's window, so resolving the
    /// fault by migration evicts them inside the flow.
    func prepare(_ w: RaceWorld) throws {
        let pressure = w.configuration.underPressure(pages: w.pages)
        switch self {
        case .toDevice: break
        case .cpuFault, .evict, .migrateToRAM, .suspend:
            _ = try w.gpu.migrateToDevice(w.mm, range: w.range)
            if pressure { _ = try w.gpu.migrateToDevice(w.mm, range: w.window) }
        case .mirrorToDevice, .mirrorCPUFault, .mirrorToSystem, .mirrorRelease, .mirrorRead, .mirrorWrite, .mirrorExclusive:
            try prepareMirror(w)
        case .gpuFault, .gpuAtomic, .gpuWrite:
            _ = try w.gpu.bind(w.mm)
            if pressure {
                let window = w.window
                if window.lowerBound > w.base { _ = try w.gpu.migrateToDevice(w.mm, range: w.base ..< window.lowerBound) }
                if window.upperBound < w.range.upperBound {
                    _ = try w.gpu.migrateToDevice(w.mm, range: window.upperBound ..< w.range.upperBound)
                }
            }
        }
        w.residentAtStart = w.vramInUse
    }

    /// Whether the flow reports any step in `c`: a CPU access to device-coherent VRAM reads
    /// it in place (`MEMORY_DEVICE_COHERENT` pages are mapped by ordinary CPU entries), so
    /// the `cpu-fault` flow does not fault — its dry run must report nothing, and it has no
    /// cells.
    func reportsSteps(in c: RaceConfiguration) -> Bool {
        !((self == .cpuFault || self == .mirrorCPUFault) && c.memory == .coherent)
    }

    /// Runs the flow (on the thread the probe holds).
    func run(_ w: RaceWorld) -> RaceFlowResult {
        do {
            let t = w.address(w.target)
            switch self {
            case .toDevice:
                return .migrated(try w.gpu.migrateToDevice(w.mm, range: w.range).migrated)
            case .cpuFault:
                return .read(try w.mm.read(at: t, count: pageSize))
            case .evict:
                return .migrated(w.gpu.evictAll())
            case .gpuFault:
                return .read(try view(w).read(at: t, count: pageSize))
            case .gpuAtomic:
                return .value(try view(w).atomicAdd(at: t, 1))
            case .gpuWrite:
                try view(w).write(at: t, bytes: RacePage.marker.bytes(page: w.target)!)
                return .wrote
            case .migrateToRAM:
                return .migrated(try w.gpu.migrateRangeToRAM(w.mm, range: w.range).migrated)
            case .suspend:
                // A suspend that throws `.busy` leaves the device suspended: resume it all the
                // same, so the cell's checks meet a running device (the error fails the cell).
                do { try w.gpu.suspend() } catch { try? w.gpu.resume(); throw error }
                let moved = w.residentAtStart - w.gpu.vram.inUsePageCount
                try w.gpu.resume()
                return .migrated(moved)
            case .mirrorToDevice, .mirrorCPUFault, .mirrorToSystem, .mirrorRelease, .mirrorRead, .mirrorWrite,
                 .mirrorExclusive:
                return try runMirror(w)
            }
        } catch {
            return .failed(error)
        }
    }

    /// The GPU view the flow's access goes through (bound by `prepare`).
    private func view(_ w: RaceWorld) throws(DeviceError) -> GPUAddressSpace {
        guard let space = w.gpu.addressSpace(for: w.mm) else { throw .shutDown }
        return space
    }

    /// The pages a migrating flow moves when nothing races it: the whole range to VRAM, or
    /// back what was resident when it started (under VRAM pressure only what fit; with
    /// `--ram N`, at most N: the pages no frame was left for stay in VRAM).
    func pagesMoved(_ w: RaceWorld) -> Int {
        if self == .toDevice || self == .mirrorToDevice { return w.pages }
        return min(w.residentAtStart, w.configuration.ramPages ?? .max)
    }

    /// The target page's content once the flow took effect on a target that held `base`:
    /// the GPU stores write it, every other flow only moves it.
    func targetAfter(_ base: RacePage) -> RacePage {
        switch self {
        case .gpuAtomic: return base.incremented
        case .gpuWrite, .mirrorWrite: return base.overwrittenByMarker
        default: return base
        }
    }
}

/// What a flow returned.
enum RaceFlowResult {
    case migrated(Int)
    case read([UInt8])
    /// The old value the flow's atomic returned.
    case value(UInt64)
    /// The flow's store completed.
    case wrote
    case failed(any Error)
}
