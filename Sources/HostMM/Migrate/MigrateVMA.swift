/// The argument of the three-step device-migration API (`struct migrate_vma`).
///
/// Owned by one thread from `migrateVMASetup` to `migrateVMAFinalize`; that thread holds
/// `vma.mm.mmapLock` in read mode for the whole sequence. `src` and `dst` are
/// caller-owned buffers of at least `(end - start) / pageSize` entries; the steps read
/// and write only that many (entries past them are left alone, as the kernel leaves them).
public struct MigrateVMA {
    /// Which kinds of page `migrateVMASetup` collects (`MIGRATE_VMA_SELECT_*`).
    public struct Flags: OptionSet, Sendable, Hashable {
        public var rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// `MIGRATE_VMA_SELECT_SYSTEM`: System-RAM pages and the zero page.
        public static let selectSystem = Flags(rawValue: 1 << 0)
        /// `MIGRATE_VMA_SELECT_DEVICE_PRIVATE`: device-private pages of `pgmapOwner`.
        public static let selectDevicePrivate = Flags(rawValue: 1 << 1)
        /// `MIGRATE_VMA_SELECT_DEVICE_COHERENT`: device-coherent pages of `pgmapOwner`.
        public static let selectDeviceCoherent = Flags(rawValue: 1 << 2)
        static let all: Flags = [.selectSystem, .selectDevicePrivate, .selectDeviceCoherent]
    }

    /// The VMA holding the range (`vma`).
    public var vma: VMA?
    /// Per-page source entries, filled by setup (`src`).
    public var src: UnsafeMutableBufferPointer<MigratePFN>
    /// Per-page destination entries, filled by the driver (`dst`).
    public var dst: UnsafeMutableBufferPointer<MigratePFN>
    /// Pages collected and still migrating after setup (`cpages`).
    public var cpages = 0
    /// Entries written to `src`/`dst` (`npages`).
    public var npages = 0
    /// First address, rounded down to a page (`start`).
    public var start: UInt64
    /// End address, rounded down to a page (`end`); setup trims it to what it walked.
    public var end: UInt64
    /// Only device pages of this owner are collected; also passed to MMU notifiers so the
    /// owner's driver can recognise its own migration (`pgmap_owner`).
    public var pgmapOwner: PgmapOwner?
    /// What to collect (`flags`).
    public var flags: Flags
    /// The device-private page a CPU fault is migrating (`fault_page`): it holds one extra
    /// reference, which the pinned-page checks allow for.
    public var faultPage: PFN?

    public init(vma: VMA?, start: UInt64, end: UInt64,
                src: UnsafeMutableBufferPointer<MigratePFN>, dst: UnsafeMutableBufferPointer<MigratePFN>,
                pgmapOwner: PgmapOwner? = nil, flags: Flags = [], faultPage: PFN? = nil) {
        self.vma = vma
        self.start = start
        self.end = end
        self.src = src
        self.dst = dst
        self.pgmapOwner = pgmapOwner
        self.flags = flags
        self.faultPage = faultPage
    }
}

/// Prepares to migrate `[args.start, args.end)` of `args.vma` (`migrate_vma_setup`).
///
/// Collects every page backing the range into `args.src`, locks and unmaps them
/// (their CPU entries become migration entries, so CPU accesses wait), and checks
/// that none is pinned. Entries that can migrate have `.migrate` set; pinned, busy or
/// unselected pages are restored and left as 0. Holes of anonymous VMAs (and the zero
/// page, with `.selectSystem`) get `.migrate` without `.valid`: the driver may provide a
/// page for them.
///
/// Then the driver, for each `src[i]` with `.migrate`: allocates a destination page,
/// locks it (`zoneDevicePageInit` does both for device pages; `allocPage` + `lockPage`
/// for RAM), copies (or clears, for a hole), and sets `dst[i] = MigratePFN(pfn:)`.
/// It may skip entries — except when migrating device memory back to RAM, where
/// skipping means the CPU access fails (`VMFaultResult.sigbus`). It then calls
/// `migrateVMAPages`, waits for its copies, optionally updates its own page table, and
/// calls `migrateVMAFinalize`. Pages are locked and unmapped until then, so their
/// contents are stable.
///
/// The caller holds `vma.mm.mmapLock` for read from setup through finalize.
/// - Throws: `.invalidArgument` (no VMA; hugetlb, DAX or `VM_SPECIAL` VMA; empty
///   range; start or end outside the VMA; missing `src`/`dst`; a `faultPage` that is
///   not device-private — the kernel's cases — plus, here: detached VMA or one whose
///   address space is gone, unknown flag bits, buffers shorter than the range, and a
///   call from `migrateToRAM` whose range holds the faulting page without `faultPage`,
///   the select flag or the `pgmapOwner` that collects it, where the kernel livelocks),
///   `.mmapLockNotHeld`; in checked mode with `throwsViolations`, `.protocolViolation`
///   when the arrays still hold a migration that was never finalized.
///
/// `fileID`/`line` name the driver's call in checked mode's reports.
public func migrateVMASetup(_ args: inout MigrateVMA, fileID: StaticString = #fileID, line: UInt = #line) throws(HostMMError) {
    let nrPages = Int64(bitPattern: args.end &- args.start) >> Int64(pageShift)
    let (asked, askedEnd) = (args.start, args.end)
    args.start = args.start.pageAlignedDown
    args.end = args.end.pageAlignedDown
    guard let vma = args.vma else { throw .invalidArgument(reason: "no VMA (args.vma is nil)") }
    try vma.checkMigratable()
    guard nrPages > 0 else {
        throw .invalidArgument(reason: askedEnd < asked ? "end \(askedEnd.hex) is before start \(asked.hex)"
                               : "range \(asked.hex)..<\(askedEnd.hex) is shorter than a page")
    }
    try vma.checkHolds(start: args.start, end: args.end)
    guard args.src.baseAddress != nil else { throw .invalidArgument(reason: "src array is missing (no base address)") }
    guard args.dst.baseAddress != nil else { throw .invalidArgument(reason: "dst array is missing (no base address)") }
    guard let mm = vma.mm else { throw .invalidArgument(reason: "\(vma)'s address space is gone") }
    if let fault = args.faultPage, !mm.memory.isDevicePrivate(fault) {
        throw .invalidArgument(reason: "faultPage \(fault) is not a device-private page")
    }
    let count = Int((args.end - args.start) >> pageShift)
    guard vma.isAttached else { throw .invalidArgument(reason: "\(vma) is detached (unmapped)") }
    guard MigrateVMA.Flags.all.isSuperset(of: args.flags) else {
        throw .invalidArgument(reason: "unknown flags \(UInt64(args.flags.subtracting(.all).rawValue).hex)")
    }
    guard args.src.count >= count else { throw .invalidArgument(reason: "src has \(args.src.count) entries for \(count) pages") }
    guard args.dst.count >= count else { throw .invalidArgument(reason: "dst has \(args.dst.count) entries for \(count) pages") }
    guard mm.mmapLock.isLocked else { throw .mmapLockNotHeld }
    try args.checkFaultingPage(mm, mm.memory)
    if let checker = mm.memory.checker {
        try checker.willSetup(mm.memory, args.src, args.dst, count: count, site: CallSite(fileID: fileID, line: line))
    }

    // Only the range's entries: a longer buffer keeps what it holds past them.
    UnsafeMutableBufferPointer(rebasing: args.src[0..<count]).update(repeating: [])
    args.cpages = 0
    args.npages = 0
    mm.migrateVMACollect(&args, vma)
    if args.cpages > 0 {
        args.cpages = mm.memory.migrateDeviceUnmap(args.src, args.npages, faultPage: args.faultPage)
    }
    if let checker = mm.memory.checker {
        checker.didSetup(mm.memory, args.src, npages: args.npages, collected: args.cpages, start: args.start,
                         site: CallSite(fileID: fileID, line: line))
    }
    // Pages are now locked and unmapped: their contents are stable and may be copied.
}

/// Moves `struct page` state from each source to its destination (`migrate_vma_pages`).
///
/// For each entry with `.migrate` and a valid `dst`: holes get the destination mapped
/// (`insert_page`); pages whose only references are the migration's get their mapping
/// and flags moved. Entries that fail lose `.migrate` in `src` — inspect `src` after
/// this call to learn what moved. Device page tables may be updated afterwards: both
/// pages stay locked and the mmap lock is held, so nothing can unmap the range.
/// - Throws: `.invalidArgument`, before changing anything, when a `dst` entry names an
///   unknown PFN or a page that is not locked (the contract requires locked destinations),
///   or when `args` was not set up. In checked mode with `throwsViolations`,
///   `.protocolViolation` for any rule the step would break (see `ProtocolRule`).
///   After a throw, fix `dst` and call it again, or remove `.migrate` from every `src`
///   entry before `migrateVMAFinalize` (what a kernel driver must do: the kernel's
///   finalize would map destinations whose `struct page` state never moved). Here
///   finalize also keeps every such source by itself.
public func migrateVMAPages(_ args: inout MigrateVMA, fileID: StaticString = #fileID, line: UInt = #line) throws(HostMMError) {
    guard let vma = args.vma else { throw .invalidArgument(reason: "args were not set up (args.vma is nil)") }
    var n = args.npages
    if let checker = vma.memory.checker {
        let plan = try checker.willRunPages(vma.memory, args.src, args.dst, npages: n, exact: true,
                                            site: CallSite(fileID: fileID, line: line))
        guard plan.run else {
            try vma.memory.validateDestinations(args.src, args.dst, n)   // bad input still gets its errno
            return
        }
        n = plan.npages
    }
    try vma.memory.validateDestinations(args.src, args.dst, n)
    vma.memory.migrateDevicePagesCore(args.src, args.dst, n, args)
}

/// Completes the migration (`migrate_vma_finalize`): migration entries become entries for
/// the new pages where `src[i]` still has `.migrate`, or for the original pages
/// otherwise; all pages are unlocked; the migration's references are dropped, which
/// frees migrated-away sources (device pages through the driver's `pageFree`) and unused
/// destinations. The driver must have finished its copies (e.g. waited on its fence):
/// checked mode reports a finalize under a running copy, and every other rule of this
/// step (see `ProtocolRule`), with `fileID`/`line` as the call site.
///
/// An entry whose destination never received its source's page state (the pages step
/// threw, or the driver skipped it) loses `.migrate`: its source is restored and its
/// destination released. The kernel would map that destination, and a CPU access of it
/// would then fault for ever.
public func migrateVMAFinalize(_ args: inout MigrateVMA, fileID: StaticString = #fileID, line: UInt = #line) {
    guard let vma = args.vma else { return }
    var n = min(args.npages, args.src.count, args.dst.count)
    if let checker = vma.memory.checker {
        let plan = checker.willFinalize(vma.memory, args.src, args.dst, npages: args.npages, exact: true,
                                        site: CallSite(fileID: fileID, line: line))
        guard plan.run else { return }
        n = max(0, min(plan.npages, args.src.count, args.dst.count))
    }
    vma.memory.migrateDeviceFinalizeCore(args.src, args.dst, n, site: CallSite(fileID: fileID, line: line))
}

extension VMA {
    /// Refuses a VMA migration cannot use: hugetlb, DAX or `VM_SPECIAL` (`migrate_vma_setup`).
    func checkMigratable() throws(HostMMError) {
        let refused = flags.intersection(VMAFlags.special.union([.hugetlb, .dax]))
        guard refused.isEmpty else {
            let names: [(VMAFlags, String)] = [(.hugetlb, "VM_HUGETLB"), (.dax, "DAX"), (.io, "VM_IO"), (.pfnMap, "VM_PFNMAP"),
                                               (.mixedMap, "VM_MIXEDMAP"), (.dontExpand, "VM_DONTEXPAND")]
            let named = names.filter { refused.contains($0.0) }.map(\.1).joined(separator: "|")
            throw .invalidArgument(reason: "\(self) is \(named): migration refuses hugetlb, DAX and VM_SPECIAL VMAs")
        }
    }

    /// Refuses a migration range whose start or end lies outside this VMA (`migrate_vma_setup`).
    func checkHolds(start: UInt64, end: UInt64) throws(HostMMError) {
        guard start >= self.start, start < self.end else {
            throw .invalidArgument(reason: start < self.start ? "start \(start.hex) is before the VMA's start \(self.start.hex)"
                                   : "start \(start.hex) is not below the VMA's end \(self.end.hex)")
        }
        guard end > self.start, end <= self.end else {
            throw .invalidArgument(reason: end > self.end ? "end \(end.hex) is past the VMA's end \(self.end.hex)"
                                   : "end \(end.hex) is not above the VMA's start \(self.start.hex)")
        }
    }
}

extension PhysicalMemory {
    /// The EINVAL of a `dst` entry the pages step cannot take; which rule it breaks.
    func badDestination(_ i: Int, _ page: PFN) -> HostMMError {
        let what = !isValid(page) ? "is not a known PFN" : !isPageLocked(page) ? "is not locked" : "is free (refcount 0)"
        return .invalidArgument(reason: "dst[\(i)] \(page) \(what)")
    }

    /// Rejects destination arrays the pages step could not process safely.
    func validateDestinations(_ src: UnsafeMutableBufferPointer<MigratePFN>,
                              _ dst: UnsafeMutableBufferPointer<MigratePFN>, _ npages: Int) throws(HostMMError) {
        guard npages >= 0 else { throw .invalidArgument(reason: "npages \(npages) is negative") }
        guard src.count >= npages else { throw .invalidArgument(reason: "src has \(src.count) entries for \(npages) pages") }
        guard dst.count >= npages else { throw .invalidArgument(reason: "dst has \(dst.count) entries for \(npages) pages") }
        for i in 0..<npages {
            guard let page = dst[i].page else { continue }
            guard isValid(page), isPageLocked(page), refcount(page) > 0 else { throw badDestination(i, page) }
        }
    }
}
