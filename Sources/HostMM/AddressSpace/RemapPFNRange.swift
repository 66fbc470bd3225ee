/// Driver mappings of raw frames into `VM_PFNMAP` VMAs (`remap_pfn_range`).
extension AddressSpace {
    /// Maps `count` frames from `pfn` at `address` as special entries (`pte_special`:
    /// no refcount, no rmap, `vm_normal_page` = NULL), as a driver's `mmap` handler does
    /// for MMIO or carve-outs. Entries are writable only in a shared writable VMA (the
    /// `vm_page_prot` of a private one is read-only: stores copy-on-write). Takes the
    /// mmap lock for write.
    /// - Throws: `.invalidArgument` unless `[address, address + count pages)` lies in one
    ///   `.pfnMap` VMA, `address` is aligned, and every frame is RAM or device-coherent
    ///   (CPU-reachable); `.busy` if an entry is already populated.
    public func remapPFNRange(_ address: UInt64, pfn: PFN, count: Int) throws(HostMMError) {
        guard address.isPageAligned else { throw .invalidArgument(reason: "address \(address.hex) is not page-aligned") }
        guard count > 0 else { throw .invalidArgument(reason: "page count \(count) is not positive") }
        guard address < PageTable.addressLimit, UInt64(count) <= (PageTable.addressLimit - address) >> pageShift else {
            throw .invalidArgument(reason: "\(count) pages at \(address.hex) are past the address space (\(PageTable.addressLimit.hex))")
        }
        let end = address + UInt64(count) << pageShift
        try mmapLock.withWriteLock { () throws(HostMMError) in
            guard let vma = findVMA(address) else { throw .invalidArgument(reason: "no VMA contains \(address.hex)") }
            guard vma.flags.contains(.pfnMap) else { throw .invalidArgument(reason: "\(vma) is not VM_PFNMAP") }
            guard end <= vma.end else { throw .invalidArgument(reason: "end \(end.hex) is past the VMA's end \(vma.end.hex)") }
            for k in 0..<count where memory.bytes(pfn + k) == nil {
                throw .invalidArgument(reason: "\(pfn + k) is not CPU-reachable (neither RAM nor device-coherent)")
            }
            var busy = false
            forEachLeaf(address, end, create: true) { leaf, i, _ in if !leaf[i].isNone { busy = true } }
            guard !busy else { throw .busy }
            var k = 0
            forEachLeaf(address, end, create: true) { leaf, i, _ in
                leaf.set(i, PageTableEntry(kind: .present, pfn: pfn + k, write: vma.flags.isSuperset(of: [.shared, .write]),
                                           young: true, special: true))
                k += 1
            }
        }
    }
}
