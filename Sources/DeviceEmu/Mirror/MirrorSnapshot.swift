import DMAEngine
import HostMM
import NIOConcurrencyHelpers

/// `HMM_DMIRROR_SNAPSHOT` (`dmirror_snapshot`, `dmirror_range_snapshot`, `dmirror_mkentry`):
/// what the CPU page table holds for each page, as the device sees it, without faulting
/// anything and without touching the mirror's table.
extension Mirror {
    /// `HMM_DMIRROR_SNAPSHOT` (`dmirror_snapshot`): writes one `MirrorProtection` byte per
    /// page of `npages` pages at `address` into `buffer`, walking in batches of 32 pages,
    /// each under a temporary notifier.
    /// - Returns: `cpages` = pages reported (`npages`), `faults` 0.
    /// - Throws: `.invalidArgument` when the address space is gone; `.busy` when a batch
    ///   keeps being invalidated past the timeout; `.fault` for a short buffer (batches
    ///   already reported stay written, as with `copy_to_user`).
    public func snapshot(_ address: UInt64, npages: Int, into buffer: UnsafeMutableRawBufferPointer) throws(MirrorError) -> MirrorResult {
        try beginCommand()
        defer { endCommand() }
        let end = try checkRange(address, npages)
        let mm = try liveMM(orElse: .invalidArgument(reason: Self.addressSpaceGone))
        let pfns = UnsafeMutableBufferPointer<HMMPFN>.allocate(capacity: Self.faultBatch)
        defer { pfns.deallocate() }
        var cpages = 0
        var addr = address
        while addr < end {
            let next = min(end, addr + UInt64(Self.faultBatch * pageSize))
            let n = Int((next - addr) >> 12)
            var bytes = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))   // 32 bytes of codes
            try withUnsafeMutableBytes(of: &bytes) { (codes: UnsafeMutableRawBufferPointer) throws(MirrorError) in
                try rangeSnapshot(mm, addr, next, UnsafeMutableBufferPointer(rebasing: pfns[0..<n]), codes)
                guard buffer.count >= cpages + n, let to = buffer.baseAddress else { throw .fault }
                (to + cpages).copyMemory(from: codes.baseAddress!, byteCount: n)
            }
            cpages += n
            addr = next
        }
        return MirrorResult(cpages: cpages, faults: 0)
    }

    /// `snapshot` returning the bytes.
    public func snapshot(_ address: UInt64, npages: Int) throws(MirrorError) -> [MirrorProtection] {
        let count = pageCount(address, try checkRange(address, npages))
        guard count <= device.memory.ramPageCount else { throw .outOfMemory }
        var out = [UInt8](repeating: 0, count: count)
        var failure: MirrorError?
        out.withUnsafeMutableBytes { b in
            do throws(MirrorError) { _ = try snapshot(address, npages: npages, into: b) } catch { failure = error }
        }
        if let failure { throw failure }
        return out.map(MirrorProtection.init(rawValue:))
    }

    /// `dmirror_range_snapshot`: one batch under its own interval notifier, whose
    /// invalidations only bump the sequence, retried until consistent or timed out.
    private func rangeSnapshot(_ mm: AddressSpace, _ start: UInt64, _ end: UInt64,
                               _ pfns: UnsafeMutableBufferPointer<HMMPFN>, _ codes: UnsafeMutableRawBufferPointer) throws(MirrorError) {
        let watcher: MMUIntervalNotifier
        do {
            watcher = try mm.notifiers.insert(start: start, length: end - start, ops: SnapshotInvalidator(lock: lock))
        } catch { throw MirrorError(error) }
        defer { watcher.remove() }
        let deadline = MonotonicTime.now() &+ device.rangeTimeoutNanoseconds
        while true {
            guard MonotonicTime.now() < deadline else { throw .busy }
            let seq = watcher.readBegin()
            pfns.update(repeating: [])
            var range = HMMRange(notifier: watcher, notifierSeq: seq, start: start, end: end, hmmPFNs: pfns,
                                 devicePrivateOwner: device.owner)
            guard try faultPass(mm, &range) else { continue }
            let consistent: Bool = lock.withLock {
                guard !watcher.readRetry(seq) else { return false }
                for (i, entry) in pfns.enumerated() { codes[i] = protection(of: entry).rawValue }
                return true
            }
            if consistent { return }
        }
    }

    /// `dmirror_mkentry`.
    private func protection(of entry: HMMPFN) -> MirrorProtection {
        if entry.contains(.error) { return .error }
        guard entry.contains(.valid) else { return .none }
        let page = entry.pfn
        let memory = device.memory
        var code: MirrorProtection
        switch memory.zone(page) {
        case .devicePrivate:
            code = device.vram.contains(page) ? .devicePrivateLocal : .devicePrivateRemote
        case .deviceCoherent:
            code = device.vram.contains(page) ? .deviceCoherentLocal : .deviceCoherentRemote
        case .normal:
            code = page == memory.zeroPFN ? .zero : .none
        }
        return code | (entry.contains(.write) ? .write : .read)
    }
}

/// The temporary notifier of a snapshot batch (`dmirror_snapshot_invalidate`): it only
/// moves the sequence, under the mirror's lock.
private final class SnapshotInvalidator: MMUIntervalNotifierOps, @unchecked Sendable {
    let lock: NIOLock
    init(lock: NIOLock) { self.lock = lock }

    func invalidate(_ notifier: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool {
        lock.withLock { notifier.setSequence(currentSequence) }
        return true
    }
}
