/// Snapshot, and optionally fault in, the CPU page table of a range for a device mirror
/// (`hmm_range_fault`).
///
/// Each entry's requests are `(hmmPFNs[i] & pfnFlagsMask) | defaultFlags`. Without
/// requests a page is reported as it is (valid/write/0/error); with `.requestFault` a
/// missing or insufficient page is faulted (`handle_mm_fault`) and the walk restarts.
/// Device-private pages of `devicePrivateOwner` are reported as their device PFN; other
/// device-private pages are faulted back to RAM when requested. The caller holds the
/// mmap lock (read); after success it must re-check `notifier.readRetry(notifierSeq)`
/// under its own lock before using the result.
/// - Throws: `.busy` when the notifier saw an invalidation since `notifierSeq` (take a
///   new sequence and retry); `.fault` for a requested page with no VMA, a special or
///   unreadable VMA, or a fault that failed; `.permissionDenied` for a write request in a
///   read-only VMA; `.invalidArgument` for an unaligned/empty range or a short buffer;
///   `.mmapLockNotHeld`; `.fault` when the notifier's address space no longer exists.
public func hmmRangeFault(_ range: inout HMMRange) throws(HostMMError) {
    guard range.start.isPageAligned else { throw .invalidArgument(reason: "start \(range.start.hex) is not page-aligned") }
    guard range.end.isPageAligned else { throw .invalidArgument(reason: "end \(range.end.hex) is not page-aligned") }
    guard range.start < range.end else {
        throw .invalidArgument(reason: "empty range: end \(range.end.hex) is not above start \(range.start.hex)")
    }
    guard range.hmmPFNs.count >= Int((range.end - range.start) >> pageShift) else {
        throw .invalidArgument(reason: "hmmPFNs has \(range.hmmPFNs.count) entries for \(Int((range.end - range.start) >> pageShift)) pages")
    }
    guard let mm = range.notifier.mm else { throw .fault }
    guard mm.mmapLock.isLocked else { throw .mmapLockNotHeld }
    var walker = HMMWalker(mm: mm, last: range.start)
    while true {
        if range.notifier.checkRetry(range.notifierSeq) { throw .busy }
        if try walker.walk(&range) { return }
    }
}

/// The state of one `hmm_range_fault` call (`struct hmm_vma_walk`).
struct HMMWalker {
    let mm: AddressSpace
    /// Where the walk restarts after a fault (`hmm_vma_walk->last`).
    var last: UInt64

    private enum Need { case none, fault, writeFault }

    /// `hmm_pte_need_fault`.
    private func needFault(_ range: HMMRange, _ i: Int, cpu: HMMPFN) -> Need {
        let req = HMMPFN(rawValue: range.hmmPFNs[i].rawValue & range.pfnFlagsMask.rawValue).union(range.defaultFlags)
        guard req.contains(.requestFault) else { return .none }
        if req.contains(.requestWrite) && !cpu.contains(.write) { return .writeFault }
        return cpu.contains(.valid) ? .none : .fault
    }

    private func needFault(_ range: HMMRange, _ from: UInt64, _ to: UInt64) -> Need {
        var worst = Need.none
        for a in stride(from: from, to: to, by: pageSize) {
            switch needFault(range, index(range, a), cpu: []) {
            case .writeFault: return .writeFault
            case .fault: worst = .fault
            case .none: break
            }
        }
        return worst
    }

    private func index(_ range: HMMRange, _ a: UInt64) -> Int { Int((a - range.start) >> pageShift) }

    private func fill(_ range: inout HMMRange, _ from: UInt64, _ to: UInt64, _ value: HMMPFN) {
        for a in stride(from: from, to: to, by: pageSize) { range.hmmPFNs[index(range, a)] = value }
    }

    /// One pass from `last`; true when the whole range was reported, false to restart.
    mutating func walk(_ range: inout HMMRange) throws(HostMMError) -> Bool {
        var addr = last
        while addr < range.end {
            guard let vma = mm.findVMA(addr) else {
                let next = mm.vmas.first { $0.start > addr }?.start ?? range.end
                let holeEnd = min(range.end, next)
                if needFault(range, addr, holeEnd) != .none { throw .fault }
                fill(&range, addr, holeEnd, .error)
                addr = holeEnd
                continue
            }
            let vmaEnd = min(range.end, vma.end)
            // hmm_vma_walk_test: VM_IO / VM_PFNMAP or unreadable VMAs are errors;
            // VM_MIXEDMAP is walked (its entries may be normal pages).
            if !vma.flags.isDisjoint(with: [.io, .pfnMap]) || !vma.flags.contains(.read) {
                if needFault(range, addr, vmaEnd) != .none { throw .fault }
                fill(&range, addr, vmaEnd, .error)
                addr = vmaEnd
                continue
            }
            while addr < vmaEnd {
                let chunkEnd = min(vmaEnd, (addr | 0x1F_FFFF) + 1)
                if try !walkChunk(&range, vma, addr, chunkEnd) { return false }
                addr = chunkEnd
            }
        }
        return true
    }

    private mutating func walkChunk(_ range: inout HMMRange, _ vma: VMA, _ start: UInt64, _ end: UInt64) throws(HostMMError) -> Bool {
        guard let leaf = mm.pageTable.leaf(start, create: false) else {
            let need = needFault(range, start, end)
            if need != .none { return try fault(vma, start, end, need) }
            fill(&range, start, end, [])
            return true
        }
        var a = start
        while a < end {
            let i = index(range, a)
            let pte = leaf[PTETable.index(a)]
            switch pte.kind {
            case .none:
                let need = needFault(range, i, cpu: [])
                if need != .none { return try fault(vma, a, end, need) }
                range.hmmPFNs[i] = []
            case .present where pte.isSpecial && pte.pfn != mm.memory.zeroPFN:
                // A special entry without a struct page (vm_insert_pfn) is not mirrorable.
                if needFault(range, i, cpu: []) != .none { throw .fault }
                range.hmmPFNs[i] = .error
            case .present:
                let cpu: HMMPFN = pte.isWritable ? [.valid, .write] : .valid
                let need = needFault(range, i, cpu: cpu)
                if need != .none { return try fault(vma, a, end, need) }
                range.hmmPFNs[i] = HMMPFN(pfn: pte.pfn, flags: cpu)
            case .devicePrivate where mm.memory.pagemap(of: pte.pfn)?.owner == range.devicePrivateOwner:
                range.hmmPFNs[i] = HMMPFN(pfn: pte.pfn, flags: pte.isWritable ? [.valid, .write] : .valid)
            case .migration:
                guard needFault(range, i, cpu: []) != .none else { range.hmmPFNs[i] = []; break }
                last = a
                mm.waitOnMigrationEntry(leaf, PTETable.index(a), pte)
                return false
            case .devicePrivate, .deviceExclusive:
                let need = needFault(range, i, cpu: [])
                if need != .none { return try fault(vma, a, end, need) }
                range.hmmPFNs[i] = []
            }
            a += UInt64(pageSize)
        }
        return true
    }

    /// `hmm_vma_fault`: fault `[addr, end)` and ask for a restart.
    private mutating func fault(_ vma: VMA, _ addr: UInt64, _ end: UInt64, _ need: Need) throws(HostMMError) -> Bool {
        last = addr
        let write = need == .writeFault
        if write && !vma.flags.contains(.write) { throw .permissionDenied }
        for a in stride(from: addr, to: end, by: pageSize) {
            do throws(HostMMError) { try mm.handleMMFault(vma, a, write: write) } catch { throw .fault }
        }
        return false
    }
}
