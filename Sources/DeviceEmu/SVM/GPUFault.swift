import HostMM

/// GPU fault resolution (`nouveau_svm_fault`, `dmirror_fault`): by policy (fixed, or a
/// `GPUFaultPolicy` asked per fault), migrate a window around the fault to VRAM, or map
/// the system pages through `hmmRangeFault`
/// under the notifier's sequence protocol; atomics on pages that stay in system memory
/// take them device-exclusive (`nouveau_atomic_range_fault`).
extension GPUAddressSpace {
    /// Resolves one GPU fault at page `address` so that a replayed `kind` access may succeed.
    func handleGPUFault(_ address: UInt64, _ kind: Access) throws(DeviceError) {
        device.counters.add(.gpuFaults)
        let begin = device.stamp()
        device.emit(.gpuFault, .none, address: address)
        guard let vma = mm.mmapLock.withReadLock({
            mm.findVMA(address).map { (start: $0.start, end: $0.end, flags: $0.flags, entry: mm.pageTableEntry(address).kind) }
        }), vma.flags.contains(.read) else { throw .fault(address: address) }
        if kind != .read && !vma.flags.contains(.write) { throw .permissionDenied(address: address) }
        let policy = device.policy
        let info = GPUFaultInfo(address: address, access: kind.info, vma: vma.start ..< vma.end, vmaFlags: vma.flags,
                                cpuEntry: vma.entry, addressSpace: ObjectIdentifier(mm))
        let decision = policy.gpuFault.decide(info)
        // Entries the migration mapped (it counts them in `deviceMappings` itself), and
        // entries this fault writes itself.
        var migrated = 0, written = 0
        if case .migrateToVRAM(let pages) = decision {
            let window = Self.window(address, pages: pages, vma.start, vma.end)
            // The channels a CPU fault of this size would take: a small window copies on
            // this thread (an engine round trip costs more than the copy here).
            do {
                migrated = try device.migrateToDevice(mm, range: window, channels: device.channels(forFault: window, policy)).migrated
            } catch {
                // Memory migration refuses (special VMAs, VRAM exhausted…): map instead. It
                // runs inside this access's admission by the device gate, so a suspend or a
                // teardown that began meanwhile waits for it rather than refusing it.
            }
            if kind.allows(entry(at: address)) {
                policy.gpuFault.customPolicy?.gpuFaultResolved(info, decision: decision, migrated: migrated, mapped: 0)
                device.emit(.gpuFaultResolved, .none, begin: begin, address: address, pages: migrated)
                return
            }
        }
        if kind == .atomic {
            // A page already in this device's VRAM needs no exclusivity, only a writable
            // entry: map it where it is rather than pull it back to RAM (a read-only entry
            // shared after fork is faulted for write, which breaks COW in RAM; then the
            // page is taken exclusive below). So does one being migrated, perhaps into
            // this VRAM by another fault on the window: `hmm_range_fault` waits it out.
            if mayBeOwnDevicePage(address) {
                written += try mapSystem(address ..< address + 4096, faulting: address, write: true, reportOwnPages: true)
            }
            if !kind.allows(entry(at: address)) {
                try makeExclusive(address)
                written += 1
            }
        } else {
            // After a migration that left the faulting page behind, map the window's pages
            // that could not move too: each later fault on one of them would try the window's
            // migration again, and that migration's own invalidation zaps the system entries
            // mapped so far, so the window would fault page by page forever.
            let pages: Int
            switch decision {
            case .mapSystemMemory(let n), .migrateToVRAM(let n): pages = n
            }
            written += try mapSystem(Self.window(address, pages: pages, vma.start, vma.end), faulting: address,
                                     write: kind == .write, reportOwnPages: true)
            let e = entry(at: address)
            if kind == .write && e.kind == .vram && !e.isWritable {
                // A read-only entry of one of this device's own pages (shared after fork):
                // fault it back to RAM through the CPU path so the write can break COW.
                written += try mapSystem(address ..< address + 4096, faulting: address,
                                         write: kind == .write, reportOwnPages: false)
            }
        }
        device.counters.add(.deviceMappings, written)
        policy.gpuFault.customPolicy?.gpuFaultResolved(info, decision: decision, migrated: migrated, mapped: written)
        device.emit(.gpuFaultResolved, .none, begin: begin, address: address, pages: migrated + written)
    }

    /// The aligned window of `pages` pages containing `address`, intersected with
    /// `[lower, upper)`, as `nouveau_svm_fault` intersects its window with the VMA (its
    /// window starts at the faulting address, so it never meets the VMA's start).
    /// `do_fault_around` differs: it cuts its start at the VMA's start but keeps `nr_pages`
    /// from there (up to the VMA's end and the page table's), so its window slides up; the
    /// fault-around policy is documented as the aligned window clamped to the VMA. Any count
    /// is valid: a window larger than the address space (`Int.max`: "the whole VMA") is
    /// clamped without overflowing.
    static func window(_ address: UInt64, pages: Int, _ lower: UInt64, _ upper: UInt64) -> Range<UInt64> {
        let n = UInt64(max(pages, 1))
        let aligned = address - (((address >> 12) % n) << 12)
        let room = upper > aligned ? (upper - aligned) >> 12 : 0   // pages from the aligned start to upper
        let end = n < room ? aligned + (n << 12) : upper
        return max(lower, aligned) ..< max(end, address + 4096)
    }

    /// `hmm_range_fault` + install under the mirror lock, retried while the notifier (or
    /// the driver's own migrations) invalidated the snapshot. Only the faulting page asks for
    /// a fault, but `hmmRangeFault` (as `hmm_vma_fault`) faults every page from it to the
    /// window's end; pages before it are mapped if already present. Returns entries written.
    func mapSystem(_ window: Range<UInt64>, faulting: UInt64, write: Bool, reportOwnPages: Bool) throws(DeviceError) -> Int {
        let n = Int((window.upperBound - window.lowerBound) >> 12)
        let fi = Int((faulting - window.lowerBound) >> 12)
        let pfns = UnsafeMutableBufferPointer<HMMPFN>.allocate(capacity: n)
        defer { pfns.deallocate() }
        var attempts = 0
        while true {
            attempts += 1
            guard attempts <= 10_000 else { throw .busy }
            pfns.initialize(repeating: [])
            pfns[fi] = write ? [.requestFault, .requestWrite] : .requestFault
            let seq = notifier.readBegin()
            let own = lock.withLock { ownSequence }
            var range = HMMRange(notifier: notifier, notifierSeq: seq, start: window.lowerBound, end: window.upperBound,
                                 hmmPFNs: pfns, pfnFlagsMask: [.requestFault, .requestWrite],
                                 devicePrivateOwner: reportOwnPages ? device.owner : nil)
            do {
                try mm.mmapLock.withReadLock { () throws(HostMMError) in try hmmRangeFault(&range) }
            } catch .busy {
                continue
            } catch .fault, .segmentationFault, .busError {
                throw .fault(address: faulting)
            } catch .permissionDenied {
                throw .permissionDenied(address: faulting)
            } catch {
                throw .hostMM(error)
            }
            // A page of this VRAM still locked is a hole `migrateVMAPages` already inserted,
            // whose clear may be in flight (the fence gates finalize, which unlocks it):
            // wait for it rather than map VRAM the copy engine has not reached yet. The
            // snapshot holds no reference: take one first (a page freed since is not waited
            // for), else the page could be freed and reused under the sleeper, and its new
            // owner's unlock would not wake it.
            if let busy = lockedOwnPage(pfns) {
                if device.memory.getPageUnlessZero(busy) { device.memory.putPageAndWaitOnUnlocked(busy) }
                continue
            }
            let installed: Int? = lock.withLock {
                guard !isDetached else { return 0 }
                guard !notifier.readRetry(seq), ownSequence == own else { return nil }
                var count = 0
                for i in 0..<n {
                    let p = pfns[i]
                    guard p.contains(.valid), !p.contains(.error) else { continue }
                    let kind: DevicePageTableEntry.Kind = device.vram.contains(p.pfn) ? .vram : .system
                    let address = window.lowerBound + UInt64(i) << 12
                    let e = DevicePageTableEntry(pfn: p.pfn, kind: kind, write: p.contains(.write))
                    // An entry already holding this value (mapped by the migration this fault
                    // just ran, or by an earlier fault on the window) is not written again.
                    guard table.entry(address) != e else { continue }
                    table.set(address, e)
                    count += 1
                }
                return count
            }
            if let installed { return installed }
        }
    }

    /// The first page of this device's VRAM among the valid entries of a snapshot that is
    /// still locked (a migration into it has not finalized), or nil.
    private func lockedOwnPage(_ pfns: UnsafeMutableBufferPointer<HMMPFN>) -> PFN? {
        for p in pfns where p.contains(.valid) && !p.contains(.error) {
            if device.vram.contains(p.pfn) && device.memory.isPageLocked(p.pfn) { return p.pfn }
        }
        return nil
    }

    /// Whether the CPU entry at `address` is a device-private entry of this device's VRAM,
    /// or a migration entry: a migration in flight, which may be bringing the page into
    /// this VRAM (a `ptep_get` peek under the mmap lock: a hint the caller's fault path
    /// re-checks). Taking such a page exclusive would wait for the migration, then pull the
    /// page straight back to RAM through a CPU fault.
    private func mayBeOwnDevicePage(_ address: UInt64) -> Bool {
        mm.mmapLock.withReadLock {
            let pte = mm.pageTableEntry(address)
            return pte.kind == .migration || (pte.kind == .devicePrivate && device.vram.contains(pte.pfn))
        }
    }

    /// Takes the System-RAM page at `address` device-exclusive and maps it for atomics
    /// (`nouveau_atomic_range_fault`, `dmirror_exclusive`). The mmap lock is held until the
    /// entry is installed: once dropped, an munmap could zap the CPU entry, and raise its
    /// invalidation, before the device entry exists, which would then map an unmapped page.
    /// An invalidation that needs only the mmap read lock (`MADV_DONTNEED`) can still zap
    /// the new device-exclusive entry, and free the page, before the device entry exists:
    /// its notifier call found nothing to zap. So the entry is installed only if, under the
    /// mirror lock, the CPU entry is still this device-exclusive entry and no invalidation
    /// began since it was checked (`mmu_interval_read_begin` / `_read_retry`, as
    /// `nouveau_atomic_range_fault` does). nouveau reads the sequence before
    /// `make_device_exclusive`; it is read after here, because the write fault-in inside it
    /// (a copy-on-write break, the restore of this device's own earlier exclusive entry that
    /// a failed try left behind) raises invalidations of its own, which would fail every
    /// retry. `readBegin` waits for an invalidation in progress, so a zap that began before
    /// it has ended when the CPU entry is checked.
    func makeExclusive(_ address: UInt64) throws(DeviceError) {
        mm.mmapLock.readLock()
        defer { mm.mmapLock.readUnlock() }
        let page: PFN
        do {
            page = try mm.makeDeviceExclusive(address, owner: device.owner)
        } catch .fault, .segmentationFault, .busError {
            // GUP's `check_vma_flags`: a VMA made read-only since the fault checked it (an
            // mprotect in between) refuses the write as the fault refuses it up front.
            if let vma = mm.findVMA(address), vma.flags.contains(.read), !vma.flags.contains(.write) {
                throw .permissionDenied(address: address)
            }
            throw .fault(address: address)
        } catch .busy {
            return  // the entry changed underneath: the replay faults again
        } catch {
            throw .hostMM(error)
        }
        device.emit(.deviceExclusive, .none, address: address)
        let seq = notifier.readBegin()
        let pte = mm.pageTableEntry(address)
        let stillExclusive = pte.kind == .deviceExclusive && pte.pfn == page
        // Installed before the page is unlocked: a CPU access restoring the entry takes the
        // page lock first, then invalidates, so it cannot slip between. Not installed, the
        // replay faults again and takes the page afresh.
        lock.withLock {
            if !isDetached && stillExclusive && !notifier.readRetry(seq) {
                table.set(address, DevicePageTableEntry(pfn: page, kind: .exclusive, write: true))
                ownSequence &+= 1
            }
        }
        device.memory.unlockPage(page)
        device.memory.putPage(page)
    }
}
