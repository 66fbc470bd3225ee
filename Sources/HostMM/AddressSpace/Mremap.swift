/// The flags of `mremap` (`MREMAP_*`).
public struct MremapFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `MREMAP_MAYMOVE`: the mapping may move when it cannot grow in place.
    public static let mayMove = MremapFlags(rawValue: 1 << 0)
    /// `MREMAP_FIXED`: move to exactly `newAddress`, replacing what is there.
    public static let fixed = MremapFlags(rawValue: 1 << 1)
    /// `MREMAP_DONTUNMAP`: move the pages but leave the old range mapped, empty.
    public static let dontUnmap = MremapFlags(rawValue: 1 << 2)
    static let all: MremapFlags = [.mayMove, .fixed, .dontUnmap]
}

/// `mremap()`: resize or move a mapping together with its pages (`do_mremap`,
/// `move_vma`, `move_page_tables`).
extension AddressSpace {
    /// Resizes `[oldAddress, oldAddress + oldLength)`, moving it when needed and allowed;
    /// returns the mapping's new address.
    ///
    /// A move carries every page-table entry as it is — present pages, device-private and
    /// device-exclusive entries, migration entries — so no page is copied or faulted; the
    /// new VMA keeps the old one's page offset, so reverse mapping still finds each page.
    /// Notifiers see `.unmap` over the old range. `newAddress` is read only with `.fixed`.
    /// With `.dontUnmap` the old range stays mapped with no pages (a private mapping gets a
    /// new anonymous family, so later faults there start afresh). Takes the mmap lock for write.
    /// - Throws: `.invalidArgument` (`EINVAL`) for unknown flags, `.fixed` or `.dontUnmap`
    ///   without `.mayMove`, `.dontUnmap` with a size change, an unaligned address, a zero
    ///   new length, a fixed target overlapping the source or past the address space, a
    ///   hugetlb VMA, `.dontUnmap` on a `VM_DONTEXPAND`/`VM_PFNMAP` VMA, or a zero old length
    ///   of a private mapping; `.fault` (`EFAULT`) when no VMA contains `oldAddress`, the old
    ///   range runs past its VMA, or a `VM_DONTEXPAND`/`VM_PFNMAP` mapping would grow;
    ///   `.outOfMemory` (`ENOMEM`) when it must grow, cannot in place and may not move, or
    ///   no address room is left; `.notSupported` for duplicating a shared mapping
    ///   (zero old length), which this model does not do.
    public func mremap(_ oldAddress: UInt64, oldLength: Int, newLength: Int, flags: MremapFlags = [],
                       newAddress: UInt64 = 0) throws(HostMMError) -> UInt64 {
        try Self.checkMremapArguments(oldAddress, oldLength, newLength, flags)
        let oldLen = (UInt64(oldLength) + pageOffsetMask) & ~pageOffsetMask
        let newLen = (UInt64(newLength) + pageOffsetMask) & ~pageOffsetMask
        return try mmapLock.withWriteLock { () throws(HostMMError) -> UInt64 in
            guard let vma = findVMA(oldAddress) else { throw .fault }
            try checkResize(vma, oldAddress, oldLen, newLen, flags)
            if flags.contains(.fixed) {
                try checkFixedTarget(oldAddress, oldLen, newAddress, newLen)
                try unmapLocked(newAddress, newAddress + newLen)
                var moving = oldLen
                if oldLen > newLen {
                    try unmapLocked(oldAddress + newLen, oldAddress + oldLen)
                    moving = newLen
                }
                return moveMapping(oldAddress, moving, to: newAddress, newLen, dontUnmap: flags.contains(.dontUnmap))
            }
            if flags.contains(.dontUnmap) {
                let target = try findFreeRange(newLen)
                return moveMapping(oldAddress, oldLen, to: target, newLen, dontUnmap: true)
            }
            if newLen <= oldLen {
                if newLen < oldLen { try unmapLocked(oldAddress + newLen, oldAddress + oldLen) }
                return oldAddress
            }
            if growInPlace(vma, oldAddress, oldLen, newLen) { return oldAddress }
            guard flags.contains(.mayMove) else { throw .outOfMemory }
            let target = try findFreeRange(newLen)
            return moveMapping(oldAddress, oldLen, to: target, newLen, dontUnmap: false)
        }
    }

    /// The argument checks at the top of `mremap` (`EINVAL` before any lookup).
    private static func checkMremapArguments(_ oldAddress: UInt64, _ oldLength: Int, _ newLength: Int,
                                             _ flags: MremapFlags) throws(HostMMError) {
        guard MremapFlags.all.isSuperset(of: flags) else {
            throw .invalidArgument(reason: "unknown flags \(UInt64(flags.subtracting(.all).rawValue).hex)")
        }
        guard !flags.contains(.fixed) || flags.contains(.mayMove) else {
            throw .invalidArgument(reason: "MREMAP_FIXED without MREMAP_MAYMOVE")
        }
        guard !flags.contains(.dontUnmap) || flags.contains(.mayMove) else {
            throw .invalidArgument(reason: "MREMAP_DONTUNMAP without MREMAP_MAYMOVE")
        }
        guard !flags.contains(.dontUnmap) || oldLength == newLength else {
            throw .invalidArgument(reason: "MREMAP_DONTUNMAP with newLength \(newLength) != oldLength \(oldLength)")
        }
        guard oldAddress.isPageAligned else { throw .invalidArgument(reason: "oldAddress \(oldAddress.hex) is not page-aligned") }
        guard oldLength >= 0 else { throw .invalidArgument(reason: "negative oldLength \(oldLength)") }
        guard newLength > 0 else { throw .invalidArgument(reason: "newLength \(newLength) is not positive") }
        guard newLength <= Int(PageTable.addressLimit), oldLength <= Int(PageTable.addressLimit) else {
            throw .invalidArgument(reason: "length \(max(oldLength, newLength)) exceeds the address space (\(PageTable.addressLimit.hex))")
        }
    }

    /// `resize_is_valid` and the `MREMAP_DONTUNMAP` checks of `do_mremap`.
    private func checkResize(_ vma: VMA, _ addr: UInt64, _ oldLen: UInt64, _ newLen: UInt64,
                             _ flags: MremapFlags) throws(HostMMError) {
        if oldLen == 0 {
            // Duplicating a mapping: only shared ones may, and that is not modelled.
            throw vma.flags.contains(.shared) ? .notSupported
                : .invalidArgument(reason: "oldLength 0 (duplicate) of private \(vma): only shared mappings may be duplicated")
        }
        if vma.flags.contains(.hugetlb) { throw .invalidArgument(reason: "\(vma) is hugetlb") }
        guard oldLen <= vma.end - addr else { throw .fault }
        if flags.contains(.dontUnmap) && !vma.flags.isDisjoint(with: [.dontExpand, .pfnMap]) {
            throw .invalidArgument(reason: "MREMAP_DONTUNMAP on VM_DONTEXPAND/VM_PFNMAP \(vma)")
        }
        if newLen > oldLen && !vma.flags.isDisjoint(with: [.dontExpand, .pfnMap]) { throw .fault }
    }

    /// `mremap_to`'s checks of a fixed destination.
    private func checkFixedTarget(_ old: UInt64, _ oldLen: UInt64, _ new: UInt64, _ newLen: UInt64) throws(HostMMError) {
        guard new.isPageAligned else { throw .invalidArgument(reason: "newAddress \(new.hex) is not page-aligned") }
        guard newLen <= PageTable.addressLimit, new <= PageTable.addressLimit - newLen else {
            throw .invalidArgument(reason: "target \(new.hex) + \(newLen) bytes is past the address space (\(PageTable.addressLimit.hex))")
        }
        // The ranges must not overlap.
        guard new + newLen <= old || old + oldLen <= new else {
            throw .invalidArgument(reason: "target \(new.hex)..<\((new + newLen).hex) overlaps the source \(old.hex)..<\((old + oldLen).hex)")
        }
    }

    /// Extends `vma` when the old range ends it and the room after it is free.
    private func growInPlace(_ vma: VMA, _ addr: UInt64, _ oldLen: UInt64, _ newLen: UInt64) -> Bool {
        let newEnd = addr + newLen
        guard addr + oldLen == vma.end, newEnd <= PageTable.addressLimit,
              !vmas.contains(where: { $0 !== vma && $0.start < newEnd && vma.end < $0.end }) else { return false }
        withRootsLocked(vma) { vma.end = newEnd }
        return true
    }

    /// `move_vma`: a new VMA at `target` takes over the pages of `[addr, addr + len)`;
    /// the old range is then unmapped (or, with `dontUnmap`, left mapped and empty).
    /// The mmap lock is held for write and `target` is free.
    private func moveMapping(_ addr: UInt64, _ len: UInt64, to target: UInt64, _ newLen: UInt64, dontUnmap: Bool) -> UInt64 {
        splitVMAs(at: addr)
        splitVMAs(at: addr + len)
        guard let old = findVMA(addr) else { return target }
        let moved = VMA(mm: self, start: target, end: target + newLen, pgoff: old.pgoff,
                        flags: old.flags, anonRoot: old.anonRoot, file: old.file)
        notifiers.invalidating(addr, addr + len, .unmap) {
            // Rmap walkers hold a root lock: with every root of the VMA held, none sees the
            // entries in flight between the two addresses.
            withRootsLocked(old) {
                for root in old.roots { root.vmas.append(moved) }
                movePageTableEntries(from: addr, len, to: target)
            }
        }
        insertVMA(moved)
        detach(old)
        vmas.removeAll { $0 === old }
        if dontUnmap {
            let anonRoot = old.anonRoot == nil ? nil : memory.roots.create(anon: true)
            let empty = VMA(mm: self, start: old.start, end: old.end, pgoff: old.pgoff,
                            flags: old.flags, anonRoot: anonRoot, file: old.file)
            for root in empty.roots { root.link(empty) }
            insertVMA(empty)
        }
        return target
    }

    /// `move_ptes`: every entry of `[from, from + len)` goes to the same offset from `to`.
    /// Map counts and references do not change: the same mappings, at new addresses.
    private func movePageTableEntries(from: UInt64, _ len: UInt64, to: UInt64) {
        var entries: [(UInt64, PageTableEntry)] = []
        forEachLeaf(from, from + len) { leaf, i, a in
            let pte = leaf[i]
            guard !pte.isNone else { return }
            entries.append((a - from, pte))
            leaf.set(i, .none)
        }
        var k = 0
        forEachLeaf(to, to + len, create: true) { leaf, i, a in
            guard k < entries.count, entries[k].0 == a - to else { return }
            leaf.set(i, entries[k].1)
            k += 1
        }
    }
}
