/// Access rights of a mapping (`PROT_READ` / `PROT_WRITE`).
public struct Protection: OptionSet, Sendable, Hashable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let read = Protection(rawValue: 1)
    public static let write = Protection(rawValue: 2)
    /// `PROT_NONE`.
    public static let none: Protection = []
    public static let readWrite: Protection = [.read, .write]

    var vmaFlags: VMAFlags {
        var f: VMAFlags = []
        if contains(.read) { f.insert(.read) }
        if contains(.write) { f.insert(.write) }
        return f
    }
}

/// What backs a new mapping (the `MAP_*` flags and the file argument of `mmap`).
public enum MappingKind: Sendable {
    /// `MAP_PRIVATE | MAP_ANONYMOUS`: the only kind migration may populate holes in.
    case anonymousPrivate
    /// `MAP_SHARED | MAP_ANONYMOUS`: shmem-backed; not `vma_is_anonymous`.
    case anonymousShared
    /// A file mapping, shared (`MAP_SHARED`) or private copy-on-write (`MAP_PRIVATE`).
    case file(PageCacheFile, pageOffset: Int = 0, shared: Bool)
    /// A driver mapping with `VM_SPECIAL` flags (`.io`, `.pfnMap`, `.mixedMap`, `.dontExpand`),
    /// populated with `remapPFNRange` or `insertPage`; refused by migration. Private
    /// (copy-on-write) unless the flags include `.shared` (`MAP_SHARED`).
    case special(VMAFlags)
    /// `MAP_HUGETLB`: accepted so the migration API can refuse it; faults are `.notSupported`.
    case hugetlb
    /// A DAX file mapping (`vma_is_dax`): accepted so migration can refuse it; faults are `.notSupported`.
    case dax(PageCacheFile)
}

extension AddressSpace {
    /// Creates a mapping (`mmap`). Returns its start address.
    ///
    /// - Parameters:
    ///   - length: bytes, rounded up to whole pages.
    ///   - address: with a value, a fixed placement (`MAP_FIXED`) that replaces whatever
    ///     was there; it must be page-aligned.
    /// - Throws: `.invalidArgument` for a zero length, unaligned or out-of-range fixed
    ///   address, or bad special flags; `.outOfMemory` when no address room is left.
    public func mmap(_ kind: MappingKind = .anonymousPrivate, length: Int,
                     protection: Protection = .readWrite, at address: UInt64? = nil) throws(HostMMError) -> UInt64 {
        guard length > 0 else { throw .invalidArgument(reason: "length \(length) is not positive") }
        guard length <= Int(PageTable.addressLimit) else {
            throw .invalidArgument(reason: "length \(length) exceeds the address space (\(PageTable.addressLimit.hex))")
        }
        let size = (UInt64(length) + pageOffsetMask) & ~pageOffsetMask
        if case .special(let f) = kind, f.isDisjoint(with: .special) || !VMAFlags.special.union(.shared).isSuperset(of: f) {
            throw .invalidArgument(reason: "special flags \(UInt64(f.rawValue).hex) must include a VM_SPECIAL bit and nothing "
                                   + "but VM_SPECIAL bits and VM_SHARED")
        }
        if case .file(_, let off, _) = kind, off < 0 { throw .invalidArgument(reason: "negative file offset \(off)") }
        return try mmapLock.withWriteLock { () throws(HostMMError) -> UInt64 in
            guard !hasExited else { throw .invalidArgument(reason: "the address space has exited") }
            let start: UInt64
            if let fixed = address {
                guard fixed.isPageAligned else { throw .invalidArgument(reason: "fixed address \(fixed.hex) is not page-aligned") }
                guard fixed < PageTable.addressLimit, size <= PageTable.addressLimit - fixed else {
                    throw .invalidArgument(reason: "\(size) bytes at \(fixed.hex) are past the address space (\(PageTable.addressLimit.hex))")
                }
                try unmapLocked(fixed, fixed + size)
                start = fixed
            } else {
                start = try findFreeRange(size)
            }
            insertVMA(makeVMA(kind, start: start, end: start + size, protection: protection))
            return start
        }
    }

    func findFreeRange(_ size: UInt64) throws(HostMMError) -> UInt64 {
        var candidate = mmapBase
        for v in vmas where v.end > candidate && v.start < candidate + size { candidate = v.end }
        guard candidate + size <= PageTable.addressLimit else { throw .outOfMemory }
        return candidate
    }

    private func makeVMA(_ kind: MappingKind, start: UInt64, end: UInt64, protection: Protection) -> VMA {
        var flags = protection.vmaFlags
        var anonRoot: MappingRoot?
        var file: PageCacheFile?
        var pgoff = start >> pageShift
        switch kind {
        case .anonymousPrivate:
            anonRoot = memory.roots.create(anon: true)
        case .anonymousShared:
            file = PageCacheFile(memory: memory, pageCount: Int((end - start) >> pageShift), shmem: true)
            flags.insert(.shared)
            pgoff = 0
        case .file(let f, let off, let shared):
            file = f
            pgoff = UInt64(off)
            if shared { flags.insert(.shared) } else { anonRoot = memory.roots.create(anon: true) }
        case .special(let f):
            flags.formUnion(f)
            // A private one gets its anonymous family for the copies its write faults make.
            if !f.contains(.shared) { anonRoot = memory.roots.create(anon: true) }
        case .hugetlb:
            flags.insert(.hugetlb)
        case .dax(let f):
            file = f
            pgoff = 0
            flags.formUnion([.dax, .shared])
        }
        let vma = VMA(mm: self, start: start, end: end, pgoff: pgoff, flags: flags, anonRoot: anonRoot, file: file)
        for root in vma.roots { root.link(vma) }
        return vma
    }

    /// Removes mappings in `[address, address + length)` (`munmap`): notifiers see
    /// `.unmap`, pages lose their mappings (device-private pages whose last reference
    /// goes are handed to the driver's `pageFree`). Unmapped holes are fine.
    /// - Throws: `.invalidArgument` for an unaligned address or a zero length.
    public func munmap(_ address: UInt64, length: Int) throws(HostMMError) {
        try Self.checkRange(address, length)
        let end = min(PageTable.addressLimit, address + ((UInt64(length) + pageOffsetMask) & ~pageOffsetMask))
        try mmapLock.withWriteLock { () throws(HostMMError) in try unmapLocked(address, end) }
    }

    /// The EINVAL checks `munmap` and `mprotect` share: aligned, non-empty, below the address limit.
    static func checkRange(_ address: UInt64, _ length: Int) throws(HostMMError) {
        guard address.isPageAligned else { throw .invalidArgument(reason: "address \(address.hex) is not page-aligned") }
        guard length > 0 else { throw .invalidArgument(reason: "length \(length) is not positive") }
        guard address < PageTable.addressLimit else {
            throw .invalidArgument(reason: "address \(address.hex) is past the address space (\(PageTable.addressLimit.hex))")
        }
    }

    /// Unmaps `[start, end)` with the mmap lock held for write.
    func unmapLocked(_ start: UInt64, _ end: UInt64) throws(HostMMError) {
        guard vmas.contains(where: { $0.start < end && start < $0.end }) else { return }
        splitVMAs(at: start)
        splitVMAs(at: end)
        let victims = vmas.filter { $0.start >= start && $0.end <= end }
        notifiers.invalidating(start, end, .unmap) {
            for vma in victims { zapRange(vma, vma.start, vma.end) }
        }
        for vma in victims { detach(vma) }
        vmas.removeAll { !$0.isAttached }
    }

    /// Changes the protection of `[address, address + length)` (`mprotect`), VMA by VMA
    /// (`do_mprotect_pkey`). A VMA whose flags change is split to the range and its
    /// entries updated under a `.protectionVMA` invalidation (`mprotect_fixup`); one
    /// whose flags stay the same is left alone. Entries lose write permission when it is
    /// removed, and exclusive anonymous pages regain it directly when it is added.
    /// - Throws: `.invalidArgument` when unaligned or empty; `.outOfMemory` (`ENOMEM`)
    ///   when part of the range is not mapped — after changing the VMAs before the first
    ///   hole, as the kernel does (nothing changes when `address` itself is unmapped).
    public func mprotect(_ address: UInt64, length: Int, protection: Protection) throws(HostMMError) {
        try Self.checkRange(address, length)
        let end = min(PageTable.addressLimit, address + ((UInt64(length) + pageOffsetMask) & ~pageOffsetMask))
        try mmapLock.withWriteLock { () throws(HostMMError) in
            var cursor = address
            while cursor < end {
                guard let vma = findVMA(cursor) else { throw .outOfMemory }
                let stop = min(end, vma.end)
                let newFlags = vma.flags.subtracting([.read, .write]).union(protection.vmaFlags)
                if newFlags != vma.flags { mprotectFixup(cursor, stop, newFlags) }
                cursor = stop
            }
        }
    }

    /// `mprotect_fixup` for `[start, end)` inside one VMA: split it there, then apply `flags`.
    private func mprotectFixup(_ start: UInt64, _ end: UInt64, _ flags: VMAFlags) {
        splitVMAs(at: start)
        splitVMAs(at: end)
        guard let vma = findVMA(start) else { return }
        notifiers.invalidating(start, end, .protectionVMA) {
            withRootsLocked(vma) { vma.flags = flags }
            changeProtection(vma, start, end)
        }
    }

    /// Splits the VMA straddling `address` in two (`split_vma`), under its roots' locks.
    func splitVMAs(at address: UInt64) {
        guard let vma = findVMA(address), vma.start < address else { return }
        let tail = VMA(mm: self, start: address, end: vma.end,
                       pgoff: vma.pgoff + (address - vma.start) >> pageShift,
                       flags: vma.flags, anonRoot: vma.anonRoot, file: vma.file)
        withRootsLocked(vma) {
            vma.end = address
            for root in vma.roots { root.vmas.append(tail) }
        }
        insertVMA(tail)
    }

    /// Runs `body` with every root lock of `vma` held (ordered by id).
    func withRootsLocked(_ vma: VMA, _ body: () -> Void) {
        let roots = vma.roots.sorted { $0.id < $1.id }
        for r in roots { r.lock.lock() }
        body()
        for r in roots.reversed() { r.lock.unlock() }
    }
}
