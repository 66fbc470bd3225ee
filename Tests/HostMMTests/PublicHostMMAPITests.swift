#if canImport(Glibc)
import Glibc
#endif
import HostMM                      // public API only: what a driver of one's own sees
import NIOConcurrencyHelpers
import Testing

/// A driver written against HostMM's public API alone, as lib/test_hmm.c's dmirror and
/// nouveau_dmem.c are written against mm: a device-private pgmap with `pageFree` and
/// `migrateToRAM`, migration with `migrateVMA*` on caller-owned src/dst arrays, eviction
/// by PFN with `migrateDevice*`. "VRAM" is host memory the CPU model cannot reach; copies
/// are memcpy through `PhysicalMemory.bytes(_:)`.
private final class ToyDevice: DevicePagemapOps, @unchecked Sendable {
    let memory: PhysicalMemory
    private(set) var pagemap: DevicePagemap!
    private(set) var owner = PgmapOwner(rawValue: 0)
    private let vram: UnsafeMutableRawPointer
    private let lock = NIOLock()
    private var free: [PFN] = []            // guarded by lock
    private var freedCount = 0              // guarded by lock: pageFree calls
    private var toRAMCount = 0              // guarded by lock: migrateToRAM calls
    /// The device page table to update on a migration back to RAM (test_hmm's `dmirror->pt`).
    weak var mirror: ToyMirror?
    /// A driver bug to make in `migrateToRAM`'s setup (set before the fault).
    enum Mistake { case noFaultPage, selectSystem, otherOwner }
    var mistake: Mistake?
    /// What `migrateToRAM`'s setup threw (set on the faulting thread, read after the fault).
    private(set) var setupError: HostMMError?

    init(memory: PhysicalMemory, pages: Int) throws(HostMMError) {
        self.memory = memory
        vram = .allocate(byteCount: pages * pageSize, alignment: pageSize)
        owner = PgmapOwner(self)
        pagemap = try memory.registerPagemap(type: .devicePrivate, pageCount: pages, owner: owner, ops: self)
        free = Array(pagemap.pfns.reversed())
    }

    deinit { vram.deallocate() }

    var pageFreeCalls: Int { lock.withLock { freedCount } }
    var migrateToRAMCalls: Int { lock.withLock { toRAMCount } }
    var freePages: Int { lock.withLock { free.count } }

    /// The bytes of a device page (`nouveau_dmem_page_addr` with a CPU mapping of VRAM).
    func bytes(_ pfn: PFN) -> UnsafeMutableRawPointer { vram + (pfn - pagemap.firstPFN) * pageSize }

    /// `nouveau_dmem_page_alloc_locked`: a free device page, refcount 1 and locked.
    func allocPage() -> PFN? {
        guard let pfn = lock.withLock({ free.popLast() }) else { return nil }
        do { try memory.zoneDevicePageInit(pfn) } catch { return nil }
        return pfn
    }

    func pageFree(_ pfn: PFN, pagemap: DevicePagemap) {
        lock.withLock {
            free.append(pfn)
            freedCount += 1
        }
    }

    func migrateToRAM(_ fault: VMFault) -> VMFaultResult {
        lock.withLock { toRAMCount += 1 }
        // One page: the count check cannot refuse it; a driver still handles the error.
        let result = try? withMigrateBuffers(npages: 1) { (src, dst) -> VMFaultResult in
            var args = MigrateVMA(vma: fault.vma, start: fault.address, end: fault.address + UInt64(pageSize),
                                  src: src, dst: dst, pgmapOwner: owner,
                                  flags: .selectDevicePrivate, faultPage: fault.page)
            switch mistake {
            case .noFaultPage: args.faultPage = nil
            case .selectSystem: args.flags = .selectSystem
            case .otherOwner: args.pgmapOwner = PgmapOwner(rawValue: 1)
            case nil: break
            }
            do throws(HostMMError) { try migrateVMASetup(&args) } catch {
                setupError = error
                return .sigbus
            }
            defer { migrateVMAFinalize(&args) }
            // Nothing collected: a racing thread moved the page (.done retries), unless the
            // driver set the migration up wrong, which would retry for ever: .sigbus here.
            guard src[0].contains(.migrate), let device = src[0].page else { return mistake == nil ? .done : .sigbus }
            // Our own .migrate event skipped the mirror: drop the entry here, as
            // dmirror_devmem_fault_alloc_and_copy does with xa_erase.
            mirror?.zap(fault.address, fault.address + UInt64(pageSize))
            guard let ram = memory.allocPage() else { return .oom }
            memory.lockPage(ram)
            memcpy(memory.bytes(ram)!, bytes(device), pageSize)
            dst[0] = MigratePFN(pfn: ram)
            do throws(HostMMError) { try migrateVMAPages(&args) } catch {
                src[0].remove(.migrate)
                return .sigbus
            }
            return .done
        }
        return result ?? .oom
    }

    /// Migrates [start, end) of one VMA to the device (test_hmm's
    /// `dmirror_migrate_to_device`); returns (collected, moved).
    func migrateToDevice(_ mm: AddressSpace, _ start: UInt64, _ end: UInt64) throws(HostMMError) -> (Int, Int) {
        let n = Int((end - start) >> pageShift)
        return try withMigrateBuffers(npages: n) { (src, dst) throws(HostMMError) -> (Int, Int) in
            try mm.mmapLock.withReadLock { () throws(HostMMError) -> (Int, Int) in
                var args = MigrateVMA(vma: mm.findVMA(start), start: start, end: end, src: src, dst: dst,
                                      pgmapOwner: owner, flags: .selectSystem)
                try migrateVMASetup(&args)
                let collected = args.cpages
                for i in 0..<args.npages where src[i].contains(.migrate) {
                    guard let page = allocPage() else { break }
                    if let from = src[i].page {
                        memcpy(bytes(page), memory.bytes(from)!, pageSize)
                    } else {
                        memset(bytes(page), 0, pageSize)
                    }
                    dst[i] = MigratePFN(pfn: page)
                }
                do throws(HostMMError) { try migrateVMAPages(&args) } catch {
                    for i in 0..<args.npages { src[i].remove(.migrate) }
                    migrateVMAFinalize(&args)
                    throw error
                }
                migrateVMAFinalize(&args)
                let moved = (0..<args.npages).count { src[$0].contains(.migrate) && dst[$0].page != nil }
                return (collected, moved)
            }
        }
    }

    /// Evicts every in-use page back to RAM by PFN (`dmirror_device_evict_chunk`);
    /// returns how many moved.
    func evictAll() throws(HostMMError) -> Int {
        let n = pagemap.pageCount
        return try withMigrateBuffers(npages: n) { (src, dst) throws(HostMMError) -> Int in
            try memory.migrateDeviceRange(src, start: pagemap.firstPFN, npages: n)
            for i in 0..<n where src[i].contains(.migrate) {
                guard let device = src[i].page, let ram = memory.allocPage() else { continue }
                memory.lockPage(ram)
                memcpy(memory.bytes(ram)!, bytes(device), pageSize)
                dst[i] = MigratePFN(pfn: ram)
            }
            do throws(HostMMError) { try memory.migrateDevicePages(src: src, dst: dst, npages: n) } catch {
                for i in 0..<n { src[i].remove(.migrate) }
                memory.migrateDeviceFinalize(src: src, dst: dst, npages: n)
                throw error
            }
            memory.migrateDeviceFinalize(src: src, dst: dst, npages: n)
            return (0..<n).count { src[$0].contains(.migrate) && dst[$0].page != nil }
        }
    }
}

/// A device page table mirroring a range, kept coherent by an interval notifier
/// (test_hmm's `dmirror_interval_invalidate` + `dmirror_range_fault`).
private final class ToyMirror: MMUIntervalNotifierOps, @unchecked Sendable {
    let mm: AddressSpace
    let owner: PgmapOwner
    let lock = NIOLock()
    private var table: [UInt64: HMMPFN] = [:]   // guarded by lock: VA → entry
    private var invalidations: [MMUNotifyEvent] = []   // guarded by lock
    private(set) var notifier: MMUIntervalNotifier!

    init(mm: AddressSpace, start: UInt64, length: UInt64, owner: PgmapOwner) throws(HostMMError) {
        self.mm = mm
        self.owner = owner
        notifier = try mm.notifiers.insert(start: start, length: length, ops: self)
    }

    var entries: [UInt64: HMMPFN] { lock.withLock { table } }
    var events: [MMUNotifyEvent] { lock.withLock { invalidations } }

    func invalidate(_ n: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool {
        lock.withLock {
            invalidations.append(range.event)
            if range.event == .migrate && range.owner == owner { return }
            n.setSequence(currentSequence)
            table = table.filter { !(range.start ..< range.end).contains($0.key) }
        }
        return true
    }

    /// Drops the entries of [start, end) (the driver's own invalidation).
    func zap(_ start: UInt64, _ end: UInt64) {
        lock.withLock { table = table.filter { !(start ..< end).contains($0.key) } }
    }

    /// Faults [start, end) in and maps it, retrying while an invalidation races.
    func fault(_ start: UInt64, _ end: UInt64, write: Bool) throws(HostMMError) {
        let n = Int((end - start) >> pageShift)
        let pfns = UnsafeMutableBufferPointer<HMMPFN>.allocate(capacity: n)
        defer { pfns.deallocate() }
        while true {
            pfns.initialize(repeating: write ? [.requestFault, .requestWrite] : .requestFault)
            let seq = notifier.readBegin()
            var range = HMMRange(notifier: notifier, notifierSeq: seq, start: start, end: end, hmmPFNs: pfns,
                                 pfnFlagsMask: [.requestFault, .requestWrite], devicePrivateOwner: owner)
            do {
                try mm.mmapLock.withReadLock { () throws(HostMMError) in try hmmRangeFault(&range) }
            } catch .busy {
                continue
            }
            let mapped = lock.withLock { () -> Bool in
                guard !notifier.readRetry(seq) else { return false }
                for i in 0..<n { table[start + UInt64(i) * UInt64(pageSize)] = pfns[i] }
                return true
            }
            if mapped { return }
        }
    }
}

@Suite struct PublicHostMMAPITests {
    /// Page i of the range holds byte `i + 1`.
    static func pattern(_ i: Int) -> [UInt8] { [UInt8](repeating: UInt8(i + 1), count: pageSize) }

    @Test func toyDriverMigratesFaultsBackEvictsAndMirrors() throws {
        let memory = try PhysicalMemory(ramBytes: 16 << 20, checked: CheckedMode(isEnabled: true, throwsViolations: true))
        let dev = try ToyDevice(memory: memory, pages: 16)
        let mm = AddressSpace(memory: memory)
        let page = UInt64(pageSize)
        let a = try mm.mmap(length: 16 * pageSize)
        for i in 0..<16 { try mm.write(at: a + UInt64(i) * page, bytes: Self.pattern(i)) }
        let freeRAM = memory.freeRAMPageCount

        // 1. Migrate pages 4..<12 to the device.
        let lo = a + 4 * page, hi = a + 12 * page
        let (collected, moved) = try dev.migrateToDevice(mm, lo, hi)
        #expect(collected == 8 && moved == 8)
        #expect(dev.freePages == 8)
        #expect(memory.freeRAMPageCount == freeRAM + 8)       // the sources went back
        for i in 0..<16 {
            let pte = mm.pageTableEntry(a + UInt64(i) * page)
            #expect(pte.kind == ((4..<12).contains(i) ? .devicePrivate : .present), "page \(i)")
            if pte.kind == .devicePrivate {
                let onDevice = [UInt8](UnsafeRawBufferPointer(start: dev.bytes(pte.pfn), count: pageSize))
                #expect(onDevice == Self.pattern(i), "page \(i) on the device")
            }
        }

        // 2. A mirror of the whole range sees the device pages as the owner's own PFNs.
        let mirror = try ToyMirror(mm: mm, start: a, length: 16 * page, owner: dev.owner)
        dev.mirror = mirror
        try mirror.fault(a, a + 16 * page, write: false)
        var table = mirror.entries
        #expect(table.count == 16)
        for i in 0..<16 {
            let va = a + UInt64(i) * page
            #expect(table[va]?.contains(.valid) == true)
            #expect(table[va]?.pfn == mm.pageTableEntry(va).pfn, "page \(i)")
        }
        #expect(dev.migrateToRAMCalls == 0)                   // reported, not faulted back

        // 3. A CPU read of page 5 faults it back through migrateToRAM.
        let back = try mm.read(at: a + 5 * page, count: pageSize)
        #expect(back == Self.pattern(5))
        #expect(dev.migrateToRAMCalls == 1)
        #expect(mm.faultCounters[.devicePrivate] == 1)
        #expect(mm.pageTableEntry(a + 5 * page).kind == .present)
        #expect(dev.pageFreeCalls == 1 && dev.freePages == 9)
        // The notifier skipped our own .migrate event; migrateToRAM zapped page 5 itself.
        table = mirror.entries
        #expect(mirror.events.contains(.migrate))
        #expect(table.count == 15 && table[a + 5 * page] == nil)

        // 4. Evict the other 7 by PFN.
        #expect(try dev.evictAll() == 7)
        #expect(dev.pageFreeCalls == 8 && dev.freePages == 16)
        for i in 0..<16 {
            let va = a + UInt64(i) * page
            #expect(mm.pageTableEntry(va).kind == .present, "page \(i)")
            #expect(try mm.read(at: va, count: pageSize) == Self.pattern(i), "page \(i)")
        }
        #expect(dev.migrateToRAMCalls == 1)                   // eviction needs no fault
        // Eviction unmapped the device entries through rmap: the mirror lost them.
        table = mirror.entries
        #expect(table.count == 8, "\(table.keys.sorted().map { ($0 - a) >> pageShift })")
        try memory.unregisterPagemap(dev.pagemap)

        // 5. The mirror again, then an unmap of two pages invalidates them.
        try mirror.fault(a, a + 16 * page, write: true)
        table = mirror.entries
        #expect(table.count == 16 && table.values.allSatisfy { $0.contains(.write) })
        for i in 0..<16 {
            let va = a + UInt64(i) * page
            #expect(table[va]?.pfn == mm.pageTableEntry(va).pfn, "page \(i)")
        }
        let seq = mirror.notifier.readBegin()
        try mm.munmap(a + 2 * page, length: 2 * pageSize)
        #expect(mirror.notifier.readRetry(seq))
        table = mirror.entries
        #expect(table.count == 14 && table[a + 2 * page] == nil && table[a + 3 * page] == nil)
        #expect(mirror.events.last == .unmap)
        mirror.notifier.remove()

        #expect(memory.checker?.violationCount == 0)
        #expect(memory.diagnostics.refcountUnderflowCount == 0 && memory.diagnostics.unlocksOfUnlockedPages == 0)
    }

    /// `withMigrateBuffers` gives zeroed arrays of the range's length, usable by setup.
    @Test func migrateBuffersAreZeroedAndSizedForSetup() throws {
        let counts = try withMigrateBuffers(npages: 5) { src, dst in
            (src.count, dst.count, src.allSatisfy { $0 == [] } && dst.allSatisfy { $0 == [] },
             src.baseAddress! + 5 == dst.baseAddress!)
        }
        #expect(counts == (5, 5, true, true))
        // Past the stack-sized batches (4096 entries) the arrays come zeroed from the heap.
        let big = try withMigrateBuffers(npages: 4097) { src, dst in
            (src.count, dst.count, src.allSatisfy { $0 == [] } && dst.allSatisfy { $0 == [] })
        }
        #expect(big == (4097, 4097, true))

        let memory = try PhysicalMemory(ramBytes: 4 << 20, checked: .off)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        try mm.write(at: a, bytes: [9])
        let collected = try withMigrateBuffers(npages: 4) { (src, dst) throws(HostMMError) -> Int in
            try mm.mmapLock.withReadLock { () throws(HostMMError) -> Int in
                var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + 4 * UInt64(pageSize),
                                      src: src, dst: dst, flags: .selectSystem)
                try migrateVMASetup(&args)
                defer { migrateVMAFinalize(&args) }
                return args.cpages
            }
        }
        #expect(collected == 4)                             // one page and three holes
        #expect(try mm.read(at: a, count: 1) == [9])
    }

    /// A count no range can have throws `.invalidArgument` before anything is allocated and
    /// without calling `body`; it used to trap in the allocation (Int.max: the byte size
    /// overflows; 2^40: an allocation of 16 TiB; 2^35 + 1: one page more than an address
    /// space holds). Zero is refused as `migrateVMASetup` refuses an empty range.
    @Test(arguments: [
        (Int.min, "npages \(Int.min) is negative"),
        (-1, "npages -1 is negative"),
        (0, "npages is 0: no range is empty (migrate_vma_setup refuses one)"),
        ((1 << 35) + 1, "npages \((1 << 35) + 1) exceeds the \(1 << 35) pages of an address space"),
        (1 << 40, "npages \(1 << 40) exceeds the \(1 << 35) pages of an address space"),
        (Int.max / MemoryLayout<MigratePFN>.stride + 1,
         "npages \(Int.max / 8 + 1) exceeds the \(1 << 35) pages of an address space"),
        (Int.max, "npages \(Int.max) exceeds the \(1 << 35) pages of an address space"),
    ])
    func migrateBuffersRefuseImpossibleCounts(npages: Int, reason: String) {
        var called = false
        do {
            try withMigrateBuffers(npages: npages) { _, _ in called = true }
            Issue.record("withMigrateBuffers(npages: \(npages)) did not throw")
        } catch {
            #expect(error == .invalidArgument)
            #expect(error.reason == reason)
        }
        #expect(!called)
    }

    /// A `migrateToRAM` whose setup cannot collect the faulting page (no `faultPage`, no
    /// `.selectDevicePrivate`, another owner) made the CPU access fault again for ever;
    /// setup now throws `.invalidArgument` naming the field to set.
    @Test(arguments: [(ToyDevice.Mistake.noFaultPage, "without faultPage: set faultPage: fault.page"),
                      (.selectSystem, "without .selectDevicePrivate in flags"),
                      (.otherOwner, "not the page's pgmap owner")])
    fileprivate func migrateToRAMSetupThatCannotCollectTheFaultingPage(_ mistake: ToyDevice.Mistake, _ says: String) throws {
        let memory = try PhysicalMemory(ramBytes: 4 << 20, checked: .off)
        let dev = try ToyDevice(memory: memory, pages: 4)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        try mm.write(at: a, bytes: Self.pattern(0) + Self.pattern(1))
        #expect(try dev.migrateToDevice(mm, a, a + 2 * UInt64(pageSize)) == (2, 2))
        dev.mistake = mistake
        #expect(throws: HostMMError.busError(address: a)) { try mm.read(at: a, count: 1) }
        let reason = dev.setupError?.reason ?? "setup did not throw"
        #expect(reason.contains(says), "\(reason)")
        #expect(reason.contains("inside migrateToRAM"), "\(reason)")
        // Set up right, the same driver brings both pages back.
        dev.mistake = nil
        #expect(try mm.read(at: a, count: pageSize) == Self.pattern(0))
        #expect(try mm.read(at: a + UInt64(pageSize), count: pageSize) == Self.pattern(1))
        #expect(dev.migrateToRAMCalls == 3 && dev.freePages == 4)
    }
}
