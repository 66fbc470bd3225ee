import DeviceEmu
import HostMM

/// The actions of `--driver mirror`: the process's own (CPU accesses, munmap, madvise,
/// mprotect, fork) as they are, the GPU's as the dmirror commands of the world's open.
///
/// Threads: the probe's action thread.
extension RaceAction {
    /// Runs an action that is not `actsOnTheProcess` on the world's open.
    func performOnMirror(_ w: RaceWorld) -> RaceActionResult {
        let t = w.address(w.target)
        do {
            let m = try w.openMirror()
            switch self {
            case .none, .cpuRead, .cpuWrite, .munmap, .dontNeed, .free, .mprotect, .fork, .cowWrite, .cowWriteChild, .pin,
                 .mremap, .mremapDontUnmap, .otherDevice:
                return perform(w)
            case .gpuRead: return .read(try w.mirrorRead(m, page: w.target))
            case .gpuWrite:
                try w.mirrorWrite(m, page: w.target, RacePage.marker.bytes(page: w.target)!)
            case .exclusive: return .read(try w.mirrorExclusive(m, at: t))
            case .migrateToDevice: _ = try m.migrateToDevice(w.base, npages: w.pages)
            case .migrateToRAM: _ = try m.migrateToSystem(t, npages: 1)
            case .unbind: m.close()
            case .evictAll: try m.release(w.base, npages: w.pages)
            case .shutdown: w.dmirror?.shutdown()
            case .gpuAtomic, .suspendResume: throw RaceFailure("\(rawValue) is not an action of --driver mirror")
            }
            return .done
        } catch {
            return .failed(error)
        }
    }
}
