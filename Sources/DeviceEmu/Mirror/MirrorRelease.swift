#if canImport(Glibc)
import Glibc
#endif
import HostMM

/// `HMM_DMIRROR_RELEASE` and the eviction `close()` also runs
/// (`dmirror_device_remove_chunks`, `dmirror_device_evict_chunk`): every in-use page of
/// the device goes back to system memory through `migrateDeviceRange` / `Pages` /
/// `Finalize`, wherever it is mapped.
extension Mirror {
    /// `HMM_DMIRROR_RELEASE` (`dmirror_device_remove_chunks`, but the chunks stay
    /// registered): evicts all of the device's memory — pages of every mirror and process —
    /// and returns; `address` and `npages` only pass the entry checks. The device keeps
    /// working: later migrations allocate again.
    /// - Returns: cpages 0, faults 0.
    @discardableResult
    public func release(_ address: UInt64, npages: Int) throws(MirrorError) -> MirrorResult {
        try beginCommand()
        defer { endCommand() }
        _ = try checkRange(address, npages)
        device.evictAll()
        return MirrorResult(cpages: 0, faults: 0)
    }
}

extension MirrorDevice {
    /// PFNs per eviction batch (the kernel does a whole chunk at once; batching is not
    /// observable and bounds the scratch arrays).
    static let evictBatch = 512

    /// Evicts every in-use page of every chunk (`dmirror_device_evict_chunk` for each);
    /// returns pages moved. Free pages and pages whose lock is held elsewhere are skipped,
    /// as `migrate_device_range` does. The unmapping invalidates with no owner, so every
    /// mirror drops its entries; copies never carry the write bit (`migrate_device_range`
    /// sets none).
    @discardableResult
    public func evictAll() -> Int {
        let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: Self.evictBatch)
        let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: Self.evictBatch)
        defer { src.deallocate(); dst.deallocate() }
        var moved = 0
        for chunk in vram.chunks {
            var first = chunk.pfns.lowerBound
            while first < chunk.pfns.upperBound {
                let count = min(Self.evictBatch, chunk.pfns.upperBound - first)
                moved += evict(first, count, src, dst)
                first = first + count
            }
        }
        return moved
    }

    /// `dmirror_device_evict_chunk` for `count` PFNs from `first`, each step reported
    /// (direction `.evict`): `migrate_device_range`, the CPU copies, `migrate_device_pages`
    /// and `migrate_device_finalize`. A batch that collects nothing reports its setup only.
    private func evict(_ first: PFN, _ count: Int, _ src: UnsafeMutableBufferPointer<MigratePFN>,
                       _ dst: UnsafeMutableBufferPointer<MigratePFN>) -> Int {
        src.update(repeating: [])
        dst.update(repeating: [])
        enterMigration()
        defer { leaveMigration() }
        let batch = nextBatch()
        emit(.setupBegin, .evict, batch: batch)
        let t0 = stamp()
        do { try memory.migrateDeviceRange(src, start: first, npages: count) } catch { src.update(repeating: []) }
        let collected = (0..<count).reduce(0) { $0 + (src[$1].contains(.migrate) ? 1 : 0) }
        emit(.setupEnd, .evict, begin: t0, batch: batch, pages: collected)
        guard collected > 0 else { return 0 }
        var copied = 0
        for i in 0..<count where src[i].contains(.migrate) {
            // __GFP_NOFAIL in the kernel: a page that cannot get RAM stays on the device.
            guard let page = src[i].page, let from = dataPointer(page), let ram = memory.allocPage() else { continue }
            memory.lockPage(ram)
            memcpy(memory.bytes(ram)!, from, pageSize)
            dst[i] = MigratePFN(pfn: ram)
            copied += 1
        }
        emit(.copiesSubmitted, .evict, batch: batch, pages: copied)
        let tp = stamp()
        emit(.migratePagesBegin, .evict, batch: batch)
        do { try memory.migrateDevicePages(src: src, dst: dst, npages: count) } catch {
            for i in 0..<count { src[i].remove(.migrate) }
        }
        let moved = committedEntries(src, dst, count)
        emit(.migratePagesEnd, .evict, begin: tp, batch: batch, pages: moved)
        let tf = stamp()
        emit(.finalizeBegin, .evict, batch: batch)
        memory.migrateDeviceFinalize(src: src, dst: dst, npages: count)
        emit(.finalizeEnd, .evict, begin: tf, batch: batch, pages: moved)
        return moved
    }
}
