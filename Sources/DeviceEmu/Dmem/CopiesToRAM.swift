import HostMM
import DMAEngine

/// The per-page work of bringing device pages back to System RAM, shared by both API
/// generations: the three-step batch (`migrateBatchToRAM`, nouveau since 2019) and the
/// 2017 fault ops' `allocAndCopy` (`nouveau_dmem_fault_alloc_and_copy`).
extension Device {
    /// A locked RAM page and a D2H copy per entry `movable` selects (`0..<npages`), then
    /// `submit()`; returns the fence, the descriptor count, and whether the faulting page
    /// (`faultIndex`) was left without a RAM page — as opposed to having one whose copy
    /// could not be queued. `dst[i]` names the RAM page of each queued copy; an entry whose
    /// copy could not be queued keeps an empty `dst`, its RAM page given back. When RAM
    /// holds fewer pages than `movable` selects, the faulting page gets one first: a
    /// fault-around window degrades to the page the access needs instead of failing it
    /// while neighbours move.
    ///
    /// - Throws: the channel checkout's or `submit()`'s error; every RAM page is given
    ///   back and `dst` emptied first (the caller restores the collected pages: finalize).
    @inline(__always)
    func queueCopiesToRAM(_ b: MigrationBuffers, _ src: UnsafeBufferPointer<MigratePFN>,
                          _ dst: UnsafeMutableBufferPointer<MigratePFN>, _ npages: Int, _ pool: ChannelPool,
                          faultIndex: Int?, movable: (Int) -> Bool) throws(DeviceError)
        -> (Fence, Int, faultPageWithoutRAM: Bool) {
        let want = (0..<npages).reduce(0) { $0 + (movable($1) ? 1 : 0) }
        let got = memory.allocPages(into: UnsafeMutableBufferPointer(rebasing: b.pages[0..<want]))
        DeviceMemory.ascend(UnsafeMutableBufferPointer(rebasing: b.pages[0..<got]))  // RAM pages in order: iovecs merge
        let channel: DMAChannel
        do { channel = try pool.checkout() } catch {
            for k in 0..<got { memory.putPage(b.pages[k]) }
            throw error
        }
        for k in 0..<got { memory.lockPage(b.pages[k]) }
        var next = 0, descriptors = 0
        var faultPageWithoutRAM = false
        func enqueue(_ i: Int) {
            guard movable(i), let source = src[i].page else { return }
            guard next < got else {
                if i == faultIndex { faultPageWithoutRAM = true }
                return
            }
            let ram = b.pages[next]
            next += 1
            do {
                // Setup selected this device's pages, so each has a VRAM address; one without
                // is not this device's page (EINVAL) and stays where it is, like a failed enqueue.
                guard let from = vram.dmaAddress(of: source) else {
                    throw DeviceError.invalidArgument(reason: "\(source) is not in this device's VRAM")
                }
                try channel.enqueueCopy(from: from, to: ramAddress(ram), length: pageSize)
            } catch {
                memory.unlockPage(ram)
                memory.putPage(ram)
                return
            }
            b.slot[descriptors] = Int32(i)
            descriptors += 1
            dst[i] = MigratePFN(pfn: ram)
        }
        // Short of RAM, the faulting page first; otherwise address order (iovecs merge).
        let first = got < want ? faultIndex : nil
        if let first { enqueue(first) }
        for i in 0..<npages where i != first { enqueue(i) }
        for k in next..<got { memory.unlockPage(b.pages[k]); memory.putPage(b.pages[k]) }
        let fence: Fence
        do { fence = try channel.submit() } catch {
            pool.checkin(channel)
            for i in 0..<npages { if let page = dst[i].page { releaseUnused(page); dst[i] = [] } }
            throw .dma(error)
        }
        pool.checkin(channel)
        return (fence, descriptors, faultPageWithoutRAM)
    }
}
