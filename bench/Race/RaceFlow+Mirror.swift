import DeviceEmu
import HostMM

/// The flows of `--driver mirror`: lib/test_hmm.c's commands on the world's one open of
/// the dmirror device (`RaceWorld.mirror`), each held at the `MigrationEvent`s
/// `MirrorDevice` reports.
///
/// Threads: the matrix's thread (the one the probe holds).
extension RaceFlow {
    /// The flows that start from the range on the device migrate it there with the
    /// mirror's own MIGRATE_TO_DEV (so its table maps every page, as hmm-tests leaves it).
    func prepareMirror(_ w: RaceWorld) throws {
        let m = try w.openMirror()
        switch self {
        case .mirrorCPUFault, .mirrorToSystem, .mirrorRelease:
            _ = try m.migrateToDevice(w.base, npages: w.pages)
        default: break
        }
    }

    /// Runs a mirror flow; errors are the ioctl's (`MirrorError`) or a CPU fault's.
    func runMirror(_ w: RaceWorld) throws -> RaceFlowResult {
        let m = try w.openMirror()
        let t = w.address(w.target)
        switch self {
        case .mirrorToDevice:
            return .migrated(try m.migrateToDevice(w.base, npages: w.pages).cpages)
        case .mirrorCPUFault:
            return .read(try w.mm.read(at: t, count: pageSize))
        case .mirrorToSystem:
            return .migrated(try m.migrateToSystem(w.base, npages: w.pages).cpages)
        case .mirrorRelease:
            try m.release(w.base, npages: w.pages)
            return .migrated(w.residentAtStart - w.vramInUse)
        case .mirrorRead:
            return .read(try w.mirrorRead(m, page: w.target))
        case .mirrorWrite:
            try w.mirrorWrite(m, page: w.target, RacePage.marker.bytes(page: w.target)!)
            return .wrote
        case .mirrorExclusive:
            return .read(try w.mirrorExclusive(m, at: t))
        default:
            throw RaceFailure("\(rawValue) is not a flow of --driver mirror")
        }
    }
}

extension RaceWorld {
    /// The world's open of the dmirror device (`--driver mirror` only).
    func openMirror() throws(MirrorError) -> Mirror {
        guard let mirror else { throw .invalidArgument }
        return mirror
    }

    /// `HMM_DMIRROR_READ` of one page: its bytes.
    func mirrorRead(_ m: Mirror, page: Int) throws(MirrorError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: pageSize)
        var failure: MirrorError?
        out.withUnsafeMutableBytes { b in
            do throws(MirrorError) { _ = try m.read(address(page), npages: 1, into: b) } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    /// `HMM_DMIRROR_EXCLUSIVE` of the page at `address`: what the mirror then reads there.
    func mirrorExclusive(_ m: Mirror, at address: UInt64) throws(MirrorError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: pageSize)
        var failure: MirrorError?
        out.withUnsafeMutableBytes { b in
            do throws(MirrorError) { _ = try m.makeExclusive(address, npages: 1, into: b) } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    /// `HMM_DMIRROR_WRITE` of `bytes` (one page) to page `page`.
    func mirrorWrite(_ m: Mirror, page: Int, _ bytes: [UInt8]) throws(MirrorError) {
        var failure: MirrorError?
        bytes.withUnsafeBytes { b in
            do throws(MirrorError) { _ = try m.write(address(page), npages: 1, from: b) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Device pages in use on the world's driver.
    var vramInUse: Int { dmirror?.inUsePageCount ?? gpu.vram.inUsePageCount }
}
