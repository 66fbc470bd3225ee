import HostMM

/// `HMM_DMIRROR_EXCLUSIVE` and `HMM_DMIRROR_CHECK_EXCLUSIVE` (`dmirror_exclusive`,
/// `dmirror_atomic_map`, `dmirror_check_atomic`).
extension Mirror {
    /// `HMM_DMIRROR_EXCLUSIVE` (`dmirror_exclusive`): takes `npages` pages at `address` for
    /// device atomics, one page at a time: each is faulted in writable, its CPU entry
    /// becomes a device-exclusive entry (an `.exclusive` invalidation with no owner, which
    /// every mirror obeys), and the mirror maps it tagged atomic; each page taken is
    /// reported as `deviceExclusive`. The first failure stops the walk; pages already taken
    /// stay exclusive. Then the range is read back through the mirror into `buffer`.
    /// - Returns: `cpages` = pages read back (`npages`), `faults` 0.
    /// - Throws: `.fault` (no VMA, no write permission), `.notSupported` (shared memory,
    ///   page cache), `.outOfMemory`; `.invalidArgument` when the address space is
    ///   gone; `.noEntry` if an entry vanished before the read-back.
    public func makeExclusive(_ address: UInt64, npages: Int,
                              into buffer: UnsafeMutableRawBufferPointer? = nil) throws(MirrorError) -> MirrorResult {
        try beginCommand()
        defer { endCommand() }
        let end = try checkRange(address, npages)
        let mm = try liveMM(orElse: .invalidArgument(reason: Self.addressSpaceGone))
        let memory = device.memory
        try mm.mmapLock.withReadLock { () throws(MirrorError) in
            var addr = address
            while addr < end {
                let page: PFN
                do throws(HostMMError) { page = try mm.makeDeviceExclusive(addr) } catch { throw MirrorError(error) }
                // Reported with the page locked, its CPU entry already device-exclusive and
                // the mirror's atomic entry not yet written (`dmirror_atomic_map` follows).
                device.emit(.deviceExclusive, .none, address: addr)
                lock.withLock {
                    if !isClosed { table.set(addr, DevicePageTableEntry(pfn: page, kind: .exclusive, write: false)) }
                }
                memory.unlockPage(page)
                memory.putPage(page)
                addr += UInt64(pageSize)
            }
        }
        return try readBack(address, end, into: buffer)
    }

    /// `HMM_DMIRROR_CHECK_EXCLUSIVE` (`dmirror_check_atomic`): checks that no page of the
    /// range is still mapped for atomics (a missing entry is not). Faults nothing.
    /// - Returns: cpages 0, faults 0.
    /// - Throws: `.permissionDenied` (`EPERM`) while some entry is tagged atomic.
    @discardableResult
    public func checkExclusive(_ address: UInt64, npages: Int) throws(MirrorError) -> MirrorResult {
        try beginCommand()
        defer { endCommand() }
        let end = try checkRange(address, npages)
        // Walk the populated entries, not every address of the range: the range may be
        // far larger than anything mapped (dmirror_check_atomic's per-page loop, bounded).
        let atomic: Bool = lock.withLock {
            var found = false
            table.forEachValid { a, e in if a >= address && a < end && e.kind == .exclusive { found = true } }
            return found
        }
        if atomic { throw .permissionDenied }
        return MirrorResult(cpages: 0, faults: 0)
    }
}
