/// Driver mappings of individual kernel pages into a VMA (`vm_insert_page`), as a
/// driver's `mmap` handler does to share a buffer with userspace (lib/test_hmm.c's
/// `dmirror_fops_mmap`).
extension AddressSpace {
    /// Maps `page` at `address` in its VMA, which becomes `VM_MIXEDMAP`. The entry is a
    /// normal (refcounted) mapping: it takes its own reference and map count, so the
    /// caller may drop its reference afterwards. It is writable only in a shared
    /// writable mapping; a private one gets copy-on-write. Takes the mmap lock for write.
    /// - Throws: `.fault` when no VMA contains `address` (`EFAULT`); `.invalidArgument`
    ///   for an unaligned address, a `VM_PFNMAP` VMA, or a page that is free, anonymous,
    ///   device-private or not a known frame; `.busy` if the entry is already populated.
    public func insertPage(_ address: UInt64, page: PFN) throws(HostMMError) {
        guard address.isPageAligned else { throw .invalidArgument(reason: "address \(address.hex) is not page-aligned") }
        try mmapLock.withWriteLock { () throws(HostMMError) in
            guard let vma = findVMA(address) else { throw .fault }
            guard !vma.flags.contains(.pfnMap) else { throw .invalidArgument(reason: "\(vma) is VM_PFNMAP") }
            guard page != memory.zeroPFN, memory.isKnownPFN(page), memory.bytes(page) != nil,
                  memory.refcount(page) > 0, !memory.isAnon(page) else { throw memory.uninsertable(page) }
            if !vma.flags.contains(.mixedMap) { withRootsLocked(vma) { vma.flags.insert(.mixedMap) } }
            guard let leaf = pageTable.leaf(address, create: true) else { throw .outOfMemory }
            let i = PTETable.index(address)
            let write = vma.flags.isSuperset(of: [.shared, .write])
            let inserted: Bool = leaf.lock.withLock {
                guard leaf[i].isNone else { return false }
                memory.getPage(page)
                memory.addMapcount(page, 1)
                leaf.set(i, PageTableEntry(kind: .present, pfn: page, write: write, young: true,
                                           devmap: memory.isDeviceCoherent(page)))
                return true
            }
            guard inserted else { throw .busy }
        }
    }
}

extension PhysicalMemory {
    /// The EINVAL of a page `vm_insert_page` refuses, saying which rule it breaks.
    fileprivate func uninsertable(_ page: PFN) -> HostMMError {
        let why = page == zeroPFN ? "is the shared zero page"
            : !isKnownPFN(page) ? "is not a known frame"
            : bytes(page) == nil ? "is device-private (not CPU-reachable)"
            : refcount(page) <= 0 ? "is free (refcount 0)"
            : "is anonymous"
        return .invalidArgument(reason: "page \(page) \(why)")
    }
}
