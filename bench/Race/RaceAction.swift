import DeviceEmu
import HostMM

/// An operation the race matrix runs on another thread while the driver is held at a
/// step; all aim at the world's target page (a page of the first batch, or the faulting page).
///
/// Threads: a value; `perform` runs on the probe's action thread.
enum RaceAction: String, CaseIterable, Sendable {
    case none
    case cpuRead = "cpu-read"
    case cpuWrite = "cpu-write"
    case gpuRead = "gpu-read"
    case gpuWrite = "gpu-write"
    case gpuAtomic = "gpu-atomic"
    case munmap
    case dontNeed = "madvise-dontneed"
    case free = "madvise-free"
    case mprotect = "mprotect-readonly"
    case fork
    case cowWrite = "cow-write"
    case cowWriteChild = "cow-write-child"
    case pin
    case mremap
    case mremapDontUnmap = "mremap-dontunmap"
    case migrateToDevice = "migrate-to-device"
    case otherDevice = "other-device"
    case migrateToRAM = "migrate-to-ram"
    case unbind
    case suspendResume = "suspend-resume"
    case evictAll = "evict-all"
    case shutdown
    /// `HMM_DMIRROR_EXCLUSIVE` of the target page (`--driver mirror` only).
    case exclusive

    /// Whether the action exists on `driver`: dmirror has no GPU atomics and no suspend;
    /// only dmirror has the EXCLUSIVE command.
    func applies(to driver: RaceConfiguration.Driver) -> Bool {
        switch self {
        case .gpuAtomic, .suspendResume: return driver == .nouveau
        case .exclusive: return driver == .mirror
        default: return true
        }
    }

    /// The column header of the matrix table.
    var short: String {
        switch self {
        case .none: return "none"
        case .cpuRead: return "cpu-rd"
        case .cpuWrite: return "cpu-wr"
        case .gpuRead: return "gpu-rd"
        case .gpuWrite: return "gpu-wr"
        case .gpuAtomic: return "atomic"
        case .munmap: return "munmap"
        case .dontNeed: return "dontneed"
        case .free: return "free"
        case .mprotect: return "mprotect"
        case .fork: return "fork"
        case .cowWrite: return "cow-wr"
        case .cowWriteChild: return "cow-chld"
        case .pin: return "pin"
        case .mremap: return "mremap"
        case .mremapDontUnmap: return "dontunmap"
        case .migrateToDevice: return "migrate"
        case .otherDevice: return "2nd-dev"
        case .migrateToRAM: return "to-ram"
        case .unbind: return "unbind"
        case .suspendResume: return "suspend"
        case .evictAll: return "evict"
        case .shutdown: return "teardown"
        case .exclusive: return "excl"
        }
    }

    /// One line for the help text.
    var help: String {
        switch self {
        case .none: return "nothing (the flow alone, held at the step)"
        case .cpuRead: return "CPU read of the target page"
        case .cpuWrite: return "CPU store of a marker page to the target page"
        case .gpuRead: return "GPU read of the target page (binding the process's GPU view if needed; mirror: READ)"
        case .gpuWrite: return "GPU store of the marker page to the target page (mirror: WRITE)"
        case .gpuAtomic: return "GPU fetch-add of 1 to the target page's first word"
        case .munmap: return "munmap of the target page"
        case .dontNeed: return "MADV_DONTNEED of the target page (it reads zeros after)"
        case .free: return "MADV_FREE of the target page (no reclaim: it keeps its data)"
        case .mprotect: return "mprotect(PROT_READ) of the whole range (a CPU store must then fault)"
        case .fork: return "fork: the child keeps a copy-on-write copy of every page"
        case .cowWrite: return "fork, then a CPU store of the marker to the target in the parent (COW fault)"
        case .cowWriteChild: return "fork, then a CPU store of the marker to the target in the child"
        case .pin: return "long-term pin of the target (FOLL_LONGTERM; unpinned after the checks)"
        case .mremap: return "mremap of the range to a new address (MREMAP_MAYMOVE|MREMAP_FIXED)"
        case .mremapDontUnmap: return "mremap with MREMAP_DONTUNMAP: the old range stays mapped, empty (zeros)"
        case .migrateToDevice: return "migrateToDevice of the same range, concurrently (mirror: MIGRATE_TO_DEV)"
        case .otherDevice: return "a second device (another pgmap owner) migrates the range: only system pages, never the first device's"
        case .migrateToRAM: return "migrateRangeToRAM of the target page (mirror: MIGRATE_TO_SYS)"
        case .unbind: return "unbind of the GPU view (bound first if the flow had none; mirror: close of the open)"
        case .suspendResume: return "device suspend (evicts all VRAM), then resume"
        case .evictAll: return "eviction of every VRAM page (evictAll; mirror: RELEASE)"
        case .shutdown: return "device teardown (evicts every page, unbinds every view; nouveau_dmem_fini; mirror: shutdown())"
        case .exclusive: return "mirror only: EXCLUSIVE of the target page (make_device_exclusive), read back"
        }
    }

    /// The target page's content once the action took effect on a target that held
    /// `base` (the others keep the pattern).
    func targetAfter(_ base: RacePage) -> RacePage {
        switch self {
        case .cpuWrite, .gpuWrite, .cowWrite: return .marker
        case .gpuAtomic: return base.incremented
        case .munmap: return .unmapped
        case .dontNeed: return .zeros
        default: return base
        }
    }

    /// The actions that are the same whatever the driver: the process's own system calls,
    /// and the second (nouveau-style) device's migration.
    var actsOnTheProcess: Bool {
        switch self {
        case .none, .cpuRead, .cpuWrite, .munmap, .dontNeed, .free, .mprotect, .fork, .cowWrite, .cowWriteChild, .pin,
             .mremap, .mremapDontUnmap, .otherDevice: return true
        default: return false
        }
    }

    /// Runs the action against `w`.
    func perform(_ w: RaceWorld) -> RaceActionResult {
        if w.mirror != nil && !actsOnTheProcess { return performOnMirror(w) }
        let t = w.address(w.target)
        do {
            switch self {
            case .none: return .done
            case .cpuRead: return .read(try w.mm.read(at: t, count: pageSize))
            case .cpuWrite: try w.mm.write(at: t, bytes: RacePage.marker.bytes(page: w.target)!)
            case .gpuRead: return .read(try w.space().read(at: t, count: pageSize))
            case .gpuWrite: try w.space().write(at: t, bytes: RacePage.marker.bytes(page: w.target)!)
            case .gpuAtomic: return .value(try w.space().atomicAdd(at: t, 1))
            case .munmap: try w.mm.munmap(t, length: pageSize)
            case .dontNeed: try w.mm.madvise(t, length: pageSize, advice: .dontNeed)
            case .free: try w.mm.madvise(t, length: pageSize, advice: .free)
            case .mprotect: try w.mm.mprotect(w.base, length: w.pages * pageSize, protection: .read)
            case .fork: w.child = try w.mm.fork()
            case .cowWrite, .cowWriteChild:
                let child = try w.mm.fork()
                w.child = child
                try (self == .cowWrite ? w.mm : child).write(at: t, bytes: RacePage.marker.bytes(page: w.target)!)
            case .pin: w.pinned = try w.mm.pinUserPages(t, count: 1, write: true, longterm: true)
            case .mremap: try w.moveRange()
            case .mremapDontUnmap: try w.moveRange(dontUnmap: true)
            case .migrateToDevice: _ = try w.gpu.migrateToDevice(w.mm, range: w.range)
            case .otherDevice: _ = try w.otherDevice().migrateToDevice(w.mm, range: w.range)
            case .migrateToRAM: _ = try w.gpu.migrateRangeToRAM(w.mm, range: t ..< t + UInt64(pageSize))
            case .unbind:
                _ = try w.space()
                w.gpu.unbind(w.mm)
            case .suspendResume:
                // A suspend that throws `.busy` leaves the device suspended: resume it all the
                // same, so the cell's checks meet a running device (the error still fails the cell).
                defer { try? w.gpu.resume() }
                try w.gpu.suspend()
            case .evictAll: w.gpu.evictAll()
            case .shutdown: try w.gpu.shutdown()
            case .exclusive: throw RaceFailure("exclusive is an action of --driver mirror")
            }
            return .done
        } catch {
            return .failed(error)
        }
    }
}

/// What a racing action returned.
enum RaceActionResult: Sendable {
    case done
    /// The bytes a read returned.
    case read([UInt8])
    /// The old value an atomic returned.
    case value(UInt64)
    case failed(any Error)
}
