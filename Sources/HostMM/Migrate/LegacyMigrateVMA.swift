/// The 2017 callback form of device migration (`struct migrate_vma_ops`), kept for
/// drivers and experiments written against it. Implemented on the three-step API,
/// exactly as the 2019 "turn migrate_vma upside down" patch converted its callers.
///
/// Callbacks run on the calling thread with the mmap lock (read) held by the caller.
public protocol MigrateVMAOps: AnyObject {
    /// `alloc_and_copy`: for each `src[i]` with `.valid` and `.migrate`, allocate and lock a
    /// destination page, copy, and set `dst[i]` (`.valid`, optionally `.locked`, which is
    /// ignored). `dst[i] = .error` marks a device page that could not be brought back.
    /// Must not change `src`.
    func allocAndCopy(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeMutableBufferPointer<MigratePFN>,
                      start: UInt64, end: UInt64)
    /// `finalize_and_map`: inspect which entries moved (`src[i]` kept `.migrate`) and
    /// update device mappings; both pages are still locked. Must not change `src` or `dst`.
    func finalizeAndMap(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeBufferPointer<MigratePFN>,
                        start: UInt64, end: UInt64)
}

/// Migrates `[start, end)` of `vma` through `ops` (`migrate_vma`, 2017).
///
/// Collects System-RAM pages and holes (and, when `pgmapOwner` is given, that owner's
/// device-private pages — the 2017 code (seed 000) skipped non-present entries, so it
/// collected none; v5.0 (seed 002) took every device-private page; the owner filter
/// came later), then calls `allocAndCopy`, moves the page state, calls
/// `finalizeAndMap`, and remaps. Succeeds even if nothing migrated; returns without
/// calling `ops` when nothing could be collected. The caller holds the mmap lock (read).
/// Called from `migrateToRAM` with `pgmapOwner`, it moves the faulting page back, as a
/// 2017 driver's fault handler did.
/// - Throws: `.invalidArgument` — no VMA, hugetlb/DAX/`VM_SPECIAL` VMA, start or end
///   outside the VMA, no `ops`, missing arrays, `start >= end` (after page rounding), a
///   call from `migrateToRAM` whose range holds the faulting page without `pgmapOwner`
///   (model-only: the kernel would retry the fault for ever); `.mmapLockNotHeld`.
public func migrateVMA(ops: (any MigrateVMAOps)?, vma: VMA?, start: UInt64, end: UInt64,
                       src: UnsafeMutableBufferPointer<MigratePFN>, dst: UnsafeMutableBufferPointer<MigratePFN>,
                       pgmapOwner: PgmapOwner? = nil,
                       fileID: StaticString = #fileID, line: UInt = #line) throws(HostMMError) {
    let start = start.pageAlignedDown
    let end = end.pageAlignedDown
    guard let vma else { throw .invalidArgument(reason: "no VMA (vma is nil)") }
    try vma.checkMigratable()
    try vma.checkHolds(start: start, end: end)
    guard let ops else { throw .invalidArgument(reason: "no ops (ops is nil)") }
    guard src.baseAddress != nil else { throw .invalidArgument(reason: "src array is missing (no base address)") }
    guard dst.baseAddress != nil else { throw .invalidArgument(reason: "dst array is missing (no base address)") }
    guard start < end else { throw .invalidArgument(reason: "end \(end.hex) is not above start \(start.hex)") }

    var flags: MigrateVMA.Flags = .selectSystem
    if pgmapOwner != nil { flags.insert(.selectDevicePrivate) }
    var args = MigrateVMA(vma: vma, start: start, end: end, src: src, dst: dst, pgmapOwner: pgmapOwner, flags: flags)
    // From a driver's fault handler: v5.0's fault path (`device_private_entry_fault`) took
    // no reference on the faulting page, so `migrate_vma` could move it. This model's fault
    // holds one, as `do_swap_page` has since v6.1, and tells setup so by `faultPage`, which
    // this API lacks: the page of the fault being handled is passed for the caller.
    if let fault = MigrateToRAMContext.current, let mm = vma.mm, fault.mm == ObjectIdentifier(mm),
       start <= fault.address, fault.address < end {
        guard pgmapOwner != nil else {
            throw .invalidArgument(reason: "migrateVMA(ops:) inside migrateToRAM for \(fault.page) at \(fault.address.hex) "
                                   + "without pgmapOwner: the faulting page would not be collected and the access would "
                                   + "fault again for ever")
        }
        args.faultPage = fault.page
    }
    try migrateVMASetup(&args, fileID: fileID, line: line)
    guard args.cpages > 0 else { return }
    let n = args.npages
    ops.allocAndCopy(vma: vma, src: UnsafeBufferPointer(rebasing: src[0..<n]),
                     dst: UnsafeMutableBufferPointer(rebasing: dst[0..<n]), start: start, end: args.end)
    // 2017 drivers flag unrecoverable entries with MIGRATE_PFN_ERROR (no VALID bit), and
    // always set LOCKED: neither changes what the three-step core does with them.
    do {
        try migrateVMAPages(&args, fileID: fileID, line: line)
    } catch {
        // The step refused the arrays before changing anything (a bad destination, or a
        // checked-mode violation): nothing moves, and finalize must still run, or every
        // collected page stays locked behind its migration entry.
        vma.memory.abandonMigration(src, dst, n)
        migrateVMAFinalize(&args, fileID: fileID, line: line)
        throw error
    }
    ops.finalizeAndMap(vma: vma, src: UnsafeBufferPointer(rebasing: src[0..<n]),
                       dst: UnsafeBufferPointer(rebasing: dst[0..<n]), start: start, end: args.end)
    migrateVMAFinalize(&args, fileID: fileID, line: line)
}

extension PhysicalMemory {
    /// Before finalizing a migration whose pages step was refused: every source is
    /// restored, and each destination is made one finalize can release (locked, with a
    /// reference) or dropped from `dst` when it is not (not memory, free, locked elsewhere).
    func abandonMigration(_ src: UnsafeMutableBufferPointer<MigratePFN>,
                          _ dst: UnsafeMutableBufferPointer<MigratePFN>, _ npages: Int) {
        for i in 0..<max(0, min(npages, src.count, dst.count)) {
            src[i].remove(.migrate)
            guard let page = dst[i].page else { continue }
            guard isValid(page), refcount(page) > 0, isPageLocked(page) || trylockPage(page) else {
                dst[i] = []
                continue
            }
        }
    }
}
