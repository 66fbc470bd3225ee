import HostMM

/// Consistency checks of a device at a quiescent moment (no migration, fault or GPU
/// access in progress), for the bad-input suite and the torture run.
///
/// Threads: any, but meaningful only while nothing else uses the device.
extension Device {
    /// The broken invariants, in words (empty when consistent):
    /// - every page on the free list is a page of this device's chunks, listed once, with
    ///   refcount 0 in HostMM; free-list pages plus pages with references fill the registered
///   chunks (none lost);
    /// - every valid device page-table entry names a page with a reference, of the kind
    ///   the entry says (VRAM of this device, System RAM, exclusive RAM), and the CPU
    ///   page table maps the same page at that address (the notifier kept them coherent);
    /// - in checked mode, the reverse map counts exactly the entries of the tables.
    public func checkInvariants() -> [String] {
        var problems = vram.freeListProblems()
        var counts: [UInt64: Int32] = [:]
        for space in boundSpaces {
            space.lock.withLock {
                guard !space.isDetached else { return }
                space.table.forEachValid { address, e in
                    counts[e.pfn.rawValue, default: 0] += 1
                    if let p = checkEntry(space.mm, address, e) { problems.append(p) }
                }
            }
        }
        if let reverseMappings, reverseMappings.counts != counts {
            problems.append("the checked-mode reverse map disagrees with the device page tables")
        }
        return problems
    }

    private func checkEntry(_ mm: AddressSpace, _ address: UInt64, _ e: DevicePageTableEntry) -> String? {
        let at = "device entry va:0x\(String(address, radix: 16)) → \(e)"
        if memory.refcount(e.pfn) < 1 { return "\(at): the page is free" }
        let cpu = mm.pageTableEntry(address)
        switch e.kind {
        case .vram:
            guard vram.contains(e.pfn) else { return "\(at): not a page of this device" }
            let ok = (cpu.kind == .devicePrivate || cpu.kind == .present) && cpu.pfn == e.pfn
            return ok ? nil : "\(at): the CPU entry is \(cpu.kind) of \(cpu.pfn)"
        case .system:
            return cpu.kind == .present && cpu.pfn == e.pfn ? nil : "\(at): the CPU entry is \(cpu.kind) of \(cpu.pfn)"
        case .exclusive:
            return cpu.kind == .deviceExclusive && cpu.pfn == e.pfn ? nil : "\(at): the CPU entry is \(cpu.kind) of \(cpu.pfn)"
        case .none:
            return nil
        }
    }
}

extension MirrorDevice {
    /// The dmirror device's free list, checked as `Device.checkInvariants` checks its own.
    /// (Mirror tables are not compared with the CPU: two opens of one device legitimately
    /// disagree, as test_hmm's do.)
    public func checkInvariants() -> [String] { vram.freeListProblems() }
}

extension DeviceMemory {
    /// Free-list consistency (see `Device.checkInvariants`).
    func freeListProblems() -> [String] {
        var problems: [String] = []
        let free = freeListSnapshot
        var seen = Set<PFN>()
        for pfn in free {
            if !seen.insert(pfn).inserted { problems.append("\(pfn) is on the free list twice") }
            if !contains(pfn) { problems.append("\(pfn) on the free list is not a page of this memory") }
            if memory.refcount(pfn) != 0 { problems.append("\(pfn) on the free list has refcount \(memory.refcount(pfn))") }
        }
        let registered = chunks.count * chunkPageCount
        var inUse = 0
        for chunk in chunks { for pfn in chunk.pfns where memory.refcount(pfn) > 0 { inUse += 1 } }
        if inUse + free.count != registered {
            problems.append("\(inUse) pages have references and \(free.count) are free, of \(registered)")
        }
        return problems
    }
}
