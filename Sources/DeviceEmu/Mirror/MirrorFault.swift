import DMAEngine
import HostMM

/// Filling the mirror from the CPU page table (`dmirror_fault`, `dmirror_range_fault`,
/// `dmirror_do_fault`): `hmmRangeFault` in batches, retried while invalidations race it.
extension Mirror {
    /// Pages per `hmm_range` (the kernel's fault batch).
    static let faultBatch = 32

    /// `dmirror_fault`: faults `[start, end)` in for read (or write) and stores each page in
    /// the table, writable where the CPU mapping is. Stops at the first error. Reported as
    /// `gpuFault` (`address` = `start`) and, when every batch is stored, `gpuFaultResolved`
    /// (`pages` = entries written); a fault that fails reports no resolution.
    /// - Throws: `.fault` (no readable mapping, a failed fault, the address space gone),
    ///   `.permissionDenied` (write fault in a read-only VMA), `.busy` (timeout), `.outOfMemory`.
    func fault(_ start: UInt64, _ end: UInt64, write: Bool) throws(MirrorError) {
        let t0 = device.stamp()
        device.emit(.gpuFault, .none, address: start)
        let mm = try liveMM(orElse: .fault)
        let pfns = UnsafeMutableBufferPointer<HMMPFN>.allocate(capacity: Self.faultBatch)
        defer { pfns.deallocate() }
        var addr = start
        while addr < end {
            let next = min(end, addr + UInt64(Self.faultBatch * pageSize))
            try rangeFault(mm, addr, next, write: write, pfns)
            addr = next
        }
        device.emit(.gpuFaultResolved, .none, begin: t0, address: start, pages: pageCount(start, end))
    }

    /// `dmirror_range_fault`: one batch, retried on `.busy` and on a stale sequence until
    /// the device's range timeout.
    private func rangeFault(_ mm: AddressSpace, _ start: UInt64, _ end: UInt64, write: Bool,
                            _ pfns: UnsafeMutableBufferPointer<HMMPFN>) throws(MirrorError) {
        let deadline = MonotonicTime.now() &+ device.rangeTimeoutNanoseconds
        let count = Int((end - start) >> 12)
        let request: HMMPFN = write ? [.requestFault, .requestWrite] : .requestFault
        while true {
            guard MonotonicTime.now() < deadline else { throw .busy }
            let seq = notifier.readBegin()
            var range = HMMRange(notifier: notifier, notifierSeq: seq, start: start, end: end,
                                 hmmPFNs: UnsafeMutableBufferPointer(rebasing: pfns[0..<count]),
                                 defaultFlags: request, devicePrivateOwner: device.owner)
            guard try faultPass(mm, &range) else { continue }
            lock.lock()
            if notifier.readRetry(seq) {
                lock.unlock()
                continue
            }
            defer { lock.unlock() }
            return try storeFaulted(start, UnsafeBufferPointer(rebasing: pfns[0..<count]), write: write)
        }
    }

    /// One `hmm_range_fault` pass under the mmap read lock, as both `dmirror_range_fault` and
    /// `dmirror_range_snapshot` make it: false when it raced an invalidation (`EBUSY`: the
    /// caller retries), any other error as a `MirrorError`.
    func faultPass(_ mm: AddressSpace, _ range: inout HMMRange) throws(MirrorError) -> Bool {
        do {
            try mm.mmapLock.withReadLock { () throws(HostMMError) in try hmmRangeFault(&range) }
        } catch .busy {
            return false
        } catch {
            throw MirrorError(error)
        }
        return true
    }

    /// `dmirror_do_fault`, with `lock` held: every page goes into the table, tagged writable
    /// when HMM says so. This device's private pages are stored as themselves: their VRAM
    /// bytes are the data (the kernel would store the device page and read garbage).
    private func storeFaulted(_ start: UInt64, _ pfns: UnsafeBufferPointer<HMMPFN>, write: Bool) throws(MirrorError) {
        // Closed meanwhile: the notifier is gone, nothing may enter the table any more.
        guard !isClosed else { throw .invalidArgument(reason: "the mirror was closed during the fault") }
        for (i, entry) in pfns.enumerated() {
            let writable = entry.contains(.write)
            // "Cannot happen": HMM faulted for write but did not report the page writable.
            if write && !writable { throw .fault }
            let local = device.vram.contains(entry.pfn)
            table.set(start + UInt64(i) << 12,
                      DevicePageTableEntry(pfn: entry.pfn, kind: local ? .vram : .system, write: writable))
        }
    }
}
