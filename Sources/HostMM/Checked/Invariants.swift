import Synchronization

/// Consistency checks of the whole model at a quiescent moment (no migration, fault or
/// unmap in progress): what must hold between the `struct page` table, the frame
/// allocator and the page tables, whatever calls came before. The bad-input suite runs
/// it after every call, the torture run at its end.
///
/// Threads: any, but the answer is only meaningful while nothing else runs.
extension PhysicalMemory {
    /// The broken invariants, in words (empty when consistent). `addressSpaces` must be
    /// every live address space that may map pages of this memory (forked children too):
    /// mapcounts are compared with the entries found in them.
    ///
    /// Checked: every present / device entry inside a VMA names a page of the right kind
    /// with a reference; no migration entry is left behind; each page's mapcount equals
    /// the entries mapping it and its refcount is at least that; no refcount is negative;
    /// no page is locked; free pages (refcount 0) have no mapping, no mapcount and no
    /// lock; the RAM frames with refcount 0 are exactly the allocator's free count.
    public func checkInvariants(addressSpaces: [AddressSpace]) -> [String] {
        var problems: [String] = []
        var tally: [PFN: Int32] = [:]
        for mm in addressSpaces where !mm.hasExited {
            mm.mmapLock.readLock()
            for vma in mm.vmas { checkEntries(mm, vma, &tally, &problems) }
            mm.mmapLock.readUnlock()
        }
        for (pfn, n) in tally {
            let m = Int32(mapcount(pfn)), r = Int32(refcount(pfn))
            if m != n { problems.append("\(pfn): mapcount \(m) but \(n) page-table entries map it") }
            if r < n { problems.append("\(pfn): refcount \(r) below its \(n) mappings") }
        }
        checkFrames(tally, &problems)
        for pgmap in pagemaps.all { checkDevicePages(pgmap, tally, &problems) }
        return problems
    }

    private func checkEntries(_ mm: AddressSpace, _ vma: VMA, _ tally: inout [PFN: Int32], _ problems: inout [String]) {
        mm.pageTable.forEachExistingLeaf(vma.start, vma.end) { base, leaf in
            for i in 0..<512 {
                let address = base + UInt64(i) << pageShift
                guard address >= vma.start, address < vma.end else { continue }
                checkEntry(leaf[i], address, &tally, &problems)
            }
        }
    }

    private func checkEntry(_ pte: PageTableEntry, _ address: UInt64, _ tally: inout [PFN: Int32], _ problems: inout [String]) {
        guard !pte.isNone, !(pte.isPresent && pte.isSpecial) else { return }
        let at = "va:0x\(String(address, radix: 16))"
        guard isKnownPFN(pte.pfn) else {
            problems.append("\(at): entry names \(pte.pfn), which is not memory")
            return
        }
        switch pte.kind {
        case .none: return
        case .migration:
            problems.append("\(at): migration entry for \(pte.pfn) left behind")
            return
        case .present:
            if isDevicePrivate(pte.pfn) { problems.append("\(at): present entry for device-private \(pte.pfn)") }
        case .devicePrivate:
            if !isDevicePrivate(pte.pfn) { problems.append("\(at): device-private entry for \(pte.pfn) of zone \(zone(pte.pfn))") }
        case .deviceExclusive:
            break
        }
        if refcount(pte.pfn) < 1 { problems.append("\(at): maps \(pte.pfn), which is free") }
        tally[pte.pfn, default: 0] += 1
    }

    /// RAM frames: free ones are clean and number exactly the allocator's free count.
    private func checkFrames(_ tally: [PFN: Int32], _ problems: inout [String]) {
        var free = 0
        for raw in 1..<ramPageCount {
            let pfn = PFN(raw)
            checkPage(pfn, tally, &problems)
            if refcount(pfn) == 0 { free += 1 }
        }
        if free != freeRAMPageCount {
            problems.append("\(free) RAM frames have refcount 0 but the allocator counts \(freeRAMPageCount) free")
        }
    }

    private func checkDevicePages(_ pgmap: DevicePagemap, _ tally: [PFN: Int32], _ problems: inout [String]) {
        for pfn in pgmap.pfns { checkPage(pfn, tally, &problems) }
    }

    private func checkPage(_ pfn: PFN, _ tally: [PFN: Int32], _ problems: inout [String]) {
        let r = refcount(pfn), m = mapcount(pfn)
        if r < 0 { problems.append("\(pfn): negative refcount \(r)") }
        if m < 0 { problems.append("\(pfn): negative mapcount \(m)") }
        if isPageLocked(pfn) { problems.append("\(pfn): locked at a quiescent moment") }
        if r == 0 && (m != 0 || mapping(pfn) != 0) { problems.append("\(pfn): free but mapcount \(m), mapping \(mapping(pfn))") }
        if m > 0 && tally[pfn] == nil { problems.append("\(pfn): mapcount \(m) but no entry maps it") }
    }
}

extension PageTable {
    /// Calls `body(leafBase, leaf)` for every existing leaf overlapping `[start, end)`,
    /// skipping empty subtrees (a huge, sparse VMA costs what is populated).
    func forEachExistingLeaf(_ start: UInt64, _ end: UInt64, _ body: (UInt64, PTETable) -> Void) {
        walk(root, shift: 39, base: 0, start, end, body)
    }

    private func walk(_ node: UnsafeMutablePointer<Synchronization.Atomic<UInt>>, shift: UInt64, base: UInt64,
                      _ start: UInt64, _ end: UInt64, _ body: (UInt64, PTETable) -> Void) {
        for i in 0..<512 {
            let lo = base + UInt64(i) << shift
            guard lo < end, lo + (1 << shift) > start else { continue }
            let bits = node[i].load(ordering: .acquiring)
            guard bits != 0 else { continue }
            if shift == 21 {
                body(lo, Unmanaged<PTETable>.fromOpaque(UnsafeRawPointer(bitPattern: bits)!).takeUnretainedValue())
            } else {
                walk(UnsafeMutablePointer(bitPattern: bits)!, shift: shift - 9, base: lo, start, end, body)
            }
        }
    }
}

extension PagemapRegistry {
    /// Every registered pgmap (takes the registration lock).
    var all: [DevicePagemap] {
        (0..<Self.capacity).compactMap { pagemap(slot: $0) }
    }
}
