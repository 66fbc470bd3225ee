import HostMM

/// Checked mode's view of a device's free list: a bitmap of the pages on it, so that a
/// page handed back twice (a driver freeing a page itself and through `pageFree`, say)
/// is reported instead of landing twice on the list — where two later allocations would
/// get the same page — and so that teardown can name the pages that never came back.
///
/// Only built when the memory's `PhysicalMemory` runs in checked mode.
/// Threads: a value guarded by `DeviceMemory`'s lock.
struct FreeBitmap: Sendable {
    private var words: [UInt64]

    init(pages: Int) { words = [UInt64](repeating: 0, count: (pages + 63) / 64) }

    func contains(_ index: Int) -> Bool { words[index >> 6] & (1 << UInt64(index & 63)) != 0 }
    mutating func insert(_ index: Int) { words[index >> 6] |= 1 << UInt64(index & 63) }
    mutating func remove(_ index: Int) { words[index >> 6] &= ~(1 << UInt64(index & 63)) }
    mutating func setRange(_ range: Range<Int>) { for i in range { insert(i) } }
}

extension DeviceMemory {
    /// A page leaves the free list (the lock is held).
    func checkedTake(_ pfn: PFN) {
        guard let index = pageIndex(of: pfn) else { return }
        freeBits?.remove(index)
    }

    /// A page comes back (the lock is held); false when it is already on the list.
    func checkedGiveBack(_ pfn: PFN) -> Bool {
        guard let index = pageIndex(of: pfn), freeBits != nil else { return true }
        if freeBits!.contains(index) { return false }
        freeBits!.insert(index)
        return true
    }

    func reportFreedTwice(_ pfn: PFN) {
        memory.checker?.report(.devicePageFreedTwice, pfn: pfn, site: nil,
                               "handed back to the device's free list while already on it (ignored)")
    }

    /// Teardown found pages in use: those HostMM still counts references on, and those
    /// that are free in HostMM but never came back to the free list (lost by the driver).
    func reportLeaks(_ chunks: [Chunk], _ free: FreeBitmap, fileID: StaticString, line: UInt) {
        guard let checker = memory.checker else { return }
        for (c, chunk) in chunks.enumerated() {
            memory.reportLeakedPages(of: chunk.pagemap, fileID: fileID, line: line)
            for k in 0..<chunkPageCount where !free.contains(c * chunkPageCount + k) {
                let pfn = chunk.pagemap.firstPFN + k
                guard memory.refcount(pfn) == 0 else { continue }
                checker.reportLeak(pfn, site: CallSite(fileID: fileID, line: line),
                                   "free in HostMM (refcount 0) but never handed back to the device's free list")
            }
        }
    }
}
