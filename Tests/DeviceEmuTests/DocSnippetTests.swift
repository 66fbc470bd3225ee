import DeviceEmu
import Foundation
import Glibc
import HostMM
import NIOConcurrencyHelpers
import Testing

// The code of docs/driver-guide.md, as printed there (ToyGPU, ToyMirror, ToyOps), and its
// examples below with each `print` turned into an expectation of what the guide says it prints.

/// A minimal device-private driver on HostMM alone: "VRAM" is host memory the CPU
/// model cannot reach through page tables, copies are memcpy (so there is no fence).
final class ToyGPU: DevicePagemapOps, @unchecked Sendable {
    let memory: PhysicalMemory
    private(set) var pagemap: DevicePagemap!
    private(set) var owner = PgmapOwner(rawValue: 0)
    private let vram: UnsafeMutableRawPointer
    private let lock = NIOLock()
    private var free: [PFN] = []               // guarded by lock

    init(memory: PhysicalMemory, pages: Int) throws(HostMMError) {
        self.memory = memory
        vram = .allocate(byteCount: pages * pageSize, alignment: pageSize)
        owner = PgmapOwner(self)
        // memremap_pages: device PFNs with struct-page metadata and no CPU-visible bytes.
        pagemap = try memory.registerPagemap(type: .devicePrivate, pageCount: pages, owner: owner, ops: self)
        free = Array(pagemap.pfns.reversed())
    }

    deinit { vram.deallocate() }

    /// Where the "GPU" keeps the bytes of a device page.
    func bytes(_ pfn: PFN) -> UnsafeMutableRawPointer { vram + (pfn - pagemap.firstPFN) * pageSize }

    /// A free device page, refcount 1 and locked (zone_device_page_init).
    func allocPage() -> PFN? {
        guard let pfn = lock.withLock({ free.popLast() }) else { return nil }
        do { try memory.zoneDevicePageInit(pfn) } catch { return nil }
        return pfn
    }

    // MARK: dev_pagemap_ops

    func pageFree(_ pfn: PFN, pagemap: DevicePagemap) {
        lock.withLock { free.append(pfn) }
    }

    func migrateToRAM(_ fault: VMFault) -> VMFaultResult {
        let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 1)
        let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 1)
        defer { src.deallocate(); dst.deallocate() }
        src.initialize(repeating: []); dst.initialize(repeating: [])
        // The faulting thread holds the mmap lock (read) and a reference on fault.page.
        var args = MigrateVMA(vma: fault.vma, start: fault.address, end: fault.address + UInt64(pageSize),
                              src: src, dst: dst, pgmapOwner: owner,
                              flags: .selectDevicePrivate, faultPage: fault.page)
        do { try migrateVMASetup(&args) } catch { return .sigbus }
        defer { migrateVMAFinalize(&args) }   // restores or remaps, unlocks, frees the old page
        guard src[0].contains(.migrate), let device = src[0].page else { return .done }  // raced: retry
        guard let ram = memory.allocPage() else { return .oom }
        memory.lockPage(ram)                                 // destinations must be locked
        memcpy(memory.bytes(ram)!, bytes(device), pageSize)  // the D2H copy
        dst[0] = MigratePFN(pfn: ram)
        do { try migrateVMAPages(&args) } catch {
            src[0].remove(.migrate)                          // refused: finalize restores the entry
            return .sigbus
        }
        return .done
    }

    // MARK: The driver's own operations

    /// Migrates the anonymous pages of [start, end) (one VMA) to device memory; returns
    /// how many moved. Best effort, like nouveau.
    func migrateToDevice(_ mm: AddressSpace, _ start: UInt64, _ end: UInt64) throws(HostMMError) -> Int {
        let n = Int((end - start) >> 12)
        let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: n)
        let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: n)
        defer { src.deallocate(); dst.deallocate() }
        src.initialize(repeating: []); dst.initialize(repeating: [])
        mm.mmapLock.readLock()
        defer { mm.mmapLock.readUnlock() }
        var args = MigrateVMA(vma: mm.findVMA(start), start: start, end: end, src: src, dst: dst,
                              pgmapOwner: owner, flags: .selectSystem)
        try migrateVMASetup(&args)               // collect, lock, unmap: sources are stable
        for i in 0..<args.npages where src[i].contains(.migrate) {
            guard let page = allocPage() else { break }      // out of VRAM: the rest stays
            if let from = src[i].page {
                memcpy(bytes(page), memory.bytes(from)!, pageSize)
            } else {
                memset(bytes(page), 0, pageSize)             // a hole or the zero page
            }
            dst[i] = MigratePFN(pfn: page)
        }
        do { try migrateVMAPages(&args) } catch {
            // Refused, nothing moved: drop MIGRATE so that finalize restores every source
            // and frees the destinations (never leave pages locked).
            for i in 0..<args.npages { src[i].remove(.migrate) }
            migrateVMAFinalize(&args)
            throw error
        }
        // A real driver waits for its copy fence here, then maps the pages on the device.
        migrateVMAFinalize(&args)
        return (0..<args.npages).reduce(0) { $0 + (src[$1].contains(.migrate) && dst[$1].page != nil ? 1 : 0) }
    }

    /// Evicts every page back to RAM by PFN (teardown), then unregisters the pgmap.
    func shutdown() throws(HostMMError) {
        let n = pagemap.pageCount
        let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: n)
        let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: n)
        defer { src.deallocate(); dst.deallocate() }
        src.initialize(repeating: []); dst.initialize(repeating: [])
        try memory.migrateDeviceRange(src, start: pagemap.firstPFN, npages: n)
        for i in 0..<n where src[i].contains(.migrate) {
            guard let device = src[i].page, let ram = memory.allocPage() else { continue }
            memory.lockPage(ram)
            memcpy(memory.bytes(ram)!, bytes(device), pageSize)
            dst[i] = MigratePFN(pfn: ram)
        }
        do { try memory.migrateDevicePages(src: src, dst: dst, npages: n) } catch {
            for i in 0..<n { src[i].remove(.migrate) }       // finalize then restores them all
        }
        memory.migrateDeviceFinalize(src: src, dst: dst, npages: n)
        try memory.unregisterPagemap(pagemap)                // .busy if a page is still in use
    }
}
/// A device page table kept coherent with the CPU's by an MMU interval notifier.
final class ToyMirror: MMUIntervalNotifierOps, @unchecked Sendable {
    let mm: AddressSpace
    let owner: PgmapOwner
    let lock = NIOLock()
    var table: [UInt64: HMMPFN] = [:]       // guarded by lock: VA → what the device maps
    private(set) var notifier: MMUIntervalNotifier!

    init(mm: AddressSpace, owner: PgmapOwner) throws(HostMMError) {
        self.mm = mm
        self.owner = owner
        notifier = try mm.notifiers.insert(start: 0, length: 1 << 47, ops: self)
    }

    func invalidate(_ n: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool {
        if range.event == .migrate && range.owner == owner { return true }   // our own migration
        lock.withLock {
            n.setSequence(currentSequence)
            table = table.filter { !(range.start ..< range.end).contains($0.key) }
        }
        return true
    }

    /// A GPU fault at `address`: fault the page in on the CPU side and map it, retrying
    /// while an invalidation races the snapshot.
    func fault(_ address: UInt64, write: Bool) throws(HostMMError) {
        let pfns = UnsafeMutableBufferPointer<HMMPFN>.allocate(capacity: 1)
        defer { pfns.deallocate() }
        while true {
            pfns[0] = write ? [.requestFault, .requestWrite] : .requestFault
            let seq = notifier.readBegin()
            var range = HMMRange(notifier: notifier, notifierSeq: seq, start: address, end: address + 4096,
                                 hmmPFNs: pfns, pfnFlagsMask: [.requestFault, .requestWrite],
                                 devicePrivateOwner: owner)
            do {
                try mm.mmapLock.withReadLock { () throws(HostMMError) in try hmmRangeFault(&range) }
            } catch .busy {
                continue                                   // invalidated since readBegin
            }
            let mapped = lock.withLock { () -> Bool in
                guard !notifier.readRetry(seq) else { return false }
                table[address] = pfns[0]                   // program the device page table
                return true
            }
            if mapped { return }
        }
    }
}
final class ToyOps: MigrateVMAOps {
    let gpu: ToyGPU
    init(gpu: ToyGPU) { self.gpu = gpu }

    func allocAndCopy(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeMutableBufferPointer<MigratePFN>,
                      start: UInt64, end: UInt64) {
        for i in 0..<src.count where src[i].contains(.migrate) {
            guard let page = gpu.allocPage() else { continue }
            if let from = src[i].page {
                memcpy(gpu.bytes(page), gpu.memory.bytes(from)!, pageSize)
            } else {
                memset(gpu.bytes(page), 0, pageSize)
            }
            dst[i] = MigratePFN(pfn: page).union(.locked)   // 2017 drivers set LOCKED
        }
        // nouveau submitted its copies here and kept the fence in its private struct.
    }

    func finalizeAndMap(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeBufferPointer<MigratePFN>,
                        start: UInt64, end: UInt64) {
        // Wait for the fence; map entries whose src kept .migrate. src and dst are read-only.
    }
}

/// Every Swift snippet of `docs/driver-guide.md` compiles and does what the guide says.
@Suite(.timeLimit(.minutes(1))) struct DocSnippetTests {
    /// Section 1: the whole flow with the reference driver.
    @Test func wholeFlow() throws {
        let memory = try PhysicalMemory(ramBytes: 1 << 30)
        var config = Device.Configuration(vramSize: 64 << 20)
        config.policy.batchPages = 128                        // nouveau before 2025
        config.policy.cpuFaultGranularity = .faultAround(pages: 16)
        let gpu = try Device(memory: memory, configuration: config)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 8 << 20)
        try mm.write(at: a, bytes: [UInt8](repeating: 7, count: 8 << 20))
        let view = try gpu.bind(mm)                           // device page table + MMU notifier
        let r = try gpu.migrateToDevice(mm, range: a ..< a + (8 << 20))
        #expect(r.migrated == 2048 && r.batches == 16 && view.mappedPageCount == 2048)
        #expect(try view.read(at: a, count: 4) == [7, 7, 7, 7])  // GPU load from VRAM
        _ = try mm.read(at: a, count: 4096)                   // CPU fault: 16 pages come back
        #expect(gpu.counters[.cpuFaults] == 1 && gpu.counters[.pagesToRAM] == 16 && view.mappedPageCount == 2032)
        try gpu.shutdown()                                    // evicts the 2032 pages left
        #expect(gpu.counters[.pagesEvicted] == 2032)
        #expect(try mm.read(at: a + (8 << 20) - 4096, count: 4096).allSatisfy { $0 == 7 })
    }

    /// Section 9: `setPolicy` takes a valid policy and refuses an invalid one, keeping the old.
    @Test func setPolicy() throws {
        let memory = try PhysicalMemory(ramBytes: 1 << 30)
        let gpu = try Device(memory: memory, configuration: Device.Configuration(vramSize: 64 << 20))
        defer { try? gpu.shutdown() }
        var p = gpu.policy
        p.pipelineDepth = 2
        p.cpuFaultGranularity = .faultAround(pages: 16)
        try gpu.setPolicy(p)
        p.batchPages = 0
        #expect(throws: DeviceError.invalidArgument) { try gpu.setPolicy(p) }
        #expect(gpu.policy.batchPages == 512 && gpu.policy.pipelineDepth == 2)
    }

    /// Section 9: a `ThrashingMitigationPolicy` as the GPU-fault policy, and its statistics.
    @Test func thrashingPolicy() throws {
        let memory = try PhysicalMemory(ramBytes: 1 << 30)
        let gpu = try Device(memory: memory, configuration: Device.Configuration(vramSize: 64 << 20))
        defer { try? gpu.shutdown() }
        var t = ThrashingMitigationPolicy.Parameters()   // window 16, threshold 3, lapse 20 ms, pin 300 ms
        #expect(t.threshold == 3 && t.lapse == .milliseconds(20) && t.pin == .milliseconds(300))
        t.windowPages = 16
        let thrashing = try ThrashingMitigationPolicy(t)
        var p = gpu.policy
        p.gpuFault = .custom(thrashing)
        try gpu.setPolicy(p)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * 4096)
        let view = try gpu.bind(mm)
        try view.write(at: a, bytes: [1])                 // the GPU fault migrates the window
        #expect(thrashing.statistics == .init(pins: 0, migrations: 1, pinnedFaults: 0))
        #expect(gpu.counters[.pagesToDevice] == 16)
    }

    /// Section 13: a CPU read pinned at the fence wait finishes only after the driver goes on.
    @Test func stepProbe() throws {
        let memory = try PhysicalMemory(ramBytes: 1 << 30)
        let probe = StepProbe()                      // StepProbe(forwardingTo: tracer) to chain one
        var config = Device.Configuration(vramSize: 64 << 20)
        config.observer = probe
        let gpu = try Device(memory: memory, configuration: config)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * 4096)
        try mm.write(at: a, bytes: [UInt8](repeating: 7, count: 16 * 4096))
        // A CPU read of page 3 while the batch waits for its fence:
        try probe.arm(at: .init(.fenceWaitBegin, direction: .toDevice), hold: .milliseconds(50)) {
            _ = try mm.read(at: a + 3 * 4096, count: 8)   // what it throws lands in probe.actionError
        }
        try gpu.migrateToDevice(mm, range: a ..< a + 16 * 4096)
        _ = probe.waitForAction()
        #expect(probe.outcome == .finishedAfterHold)
        #expect(probe.actionError == nil)
        // The read met the page in VRAM after finalize (a fault; more than one when it came
        // while finalize still held the page locked: the kernel's retry).
        #expect(gpu.counters[.cpuFaults] >= 1)
        #expect(try mm.read(at: a + 3 * 4096, count: 8) == [UInt8](repeating: 7, count: 8))
    }

    /// Section 11: ToyGPU migrates, faults one page back, and evicts the rest at shutdown.
    @Test func toyGPU() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20)
        let gpu = try ToyGPU(memory: memory, pages: 1024)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 64 * 4096)
        try mm.write(at: a, bytes: [UInt8](repeating: 0xAB, count: 32 * 4096))  // 32 pages; 32 holes
        let moved = try gpu.migrateToDevice(mm, a, a + 64 * 4096)
        #expect(moved == 64 && mm.pageTableEntry(a).kind == .devicePrivate)
        let back = try mm.read(at: a, count: 4096)             // CPU fault → gpu.migrateToRAM
        #expect(back.allSatisfy { $0 == 0xAB } && mm.pageTableEntry(a).kind == .present)
        #expect(mm.faultCounters[.devicePrivate] == 1)
        try gpu.shutdown()                                     // evicts the other 63 pages
        #expect(mm.pageTableEntry(a + 4096).kind == .present)
        #expect(try mm.read(at: a + 4096, count: 1) == [171])
        #expect(try mm.read(at: a + 63 * 4096, count: 4096).allSatisfy { $0 == 0 })  // a hole: cleared
        #expect(memory.diagnostics.refcountUnderflowCount == 0 && memory.diagnostics.unlocksOfUnlockedPages == 0)
    }

    /// Section 11: what the text says ToyMirror maps, before and after a ToyGPU migration.
    @Test func toyMirror() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20)
        let gpu = try ToyGPU(memory: memory, pages: 64)
        let mm = AddressSpace(memory: memory)
        let mirror = try ToyMirror(mm: mm, owner: gpu.owner)
        let a = try mm.mmap(length: 8 * 4096)
        try mirror.fault(a, write: false)                      // untouched: the zero page, read-only
        var entry = try #require(mirror.lock.withLock { mirror.table[a] })
        #expect(entry.contains(.valid) && !entry.contains(.write) && entry.pfn == memory.zeroPFN)
        try mirror.fault(a + 4096, write: true)                // a fresh writable RAM page
        entry = try #require(mirror.lock.withLock { mirror.table[a + 4096] })
        #expect(entry.contains([.valid, .write]) && entry.pfn != memory.zeroPFN && !gpu.pagemap.pfns.contains(entry.pfn))
        let ram = entry.pfn

        #expect(try gpu.migrateToDevice(mm, a, a + 8 * 4096) == 8)
        #expect(mirror.lock.withLock { mirror.table[a + 4096]?.pfn } == ram)  // skipped its own .migrate
        try mirror.fault(a + 4096, write: false)
        #expect(gpu.pagemap.pfns.contains(try #require(mirror.lock.withLock { mirror.table[a + 4096] }).pfn))

        try mm.munmap(a, length: 8 * 4096)
        #expect(mirror.lock.withLock { mirror.table.isEmpty })
        try gpu.shutdown()
    }

    /// Sections 10 and 11: checked mode catches a hand-written driver's mistakes with their
    /// call site. Throwing, it refuses a second pages step before it changes anything; a
    /// second finalize (an error path plus a `defer`) is recorded and skipped.
    @Test func checkedModeCatchesADriverMistake() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20, checked: CheckedMode(isEnabled: true, throwsViolations: true))
        let gpu = try ToyGPU(memory: memory, pages: 64)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * 4096)
        try mm.write(at: a, bytes: [UInt8](repeating: 5, count: 4 * 4096))
        let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 4)
        let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 4)
        defer { src.deallocate(); dst.deallocate() }
        src.initialize(repeating: []); dst.initialize(repeating: [])
        var secondPages: HostMMError?
        try mm.mmapLock.withReadLock { () throws(HostMMError) in
            var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + 4 * 4096, src: src, dst: dst,
                                  pgmapOwner: gpu.owner, flags: .selectSystem)
            try migrateVMASetup(&args)
            for i in 0..<4 where src[i].contains(.migrate) {
                guard let page = gpu.allocPage(), let from = src[i].page else { continue }
                memcpy(gpu.bytes(page), memory.bytes(from)!, pageSize)
                dst[i] = MigratePFN(pfn: page)
            }
            try migrateVMAPages(&args)
            do throws(HostMMError) { try migrateVMAPages(&args) } catch { secondPages = error }     // mistake 1
            migrateVMAFinalize(&args)
            migrateVMAFinalize(&args)                                           // mistake 2
        }
        guard case .protocolViolation(let violation)? = secondPages else {
            Issue.record("a second pages step was not refused: \(String(describing: secondPages))")
            return
        }
        #expect(violation.rule == .pagesTwice && violation.site.hasPrefix("DeviceEmuTests/DocSnippetTests.swift:"))
        let checker = try #require(memory.checker)
        #expect(checker.countsByRule == [.pagesTwice: 1, .finalizeTwice: 1])
        #expect(mm.pageTableEntry(a).kind == .devicePrivate)
        #expect(try mm.read(at: a + 3 * 4096, count: 4096).allSatisfy { $0 == 5 })
        try gpu.shutdown()
        #expect(checker.countsByRule == [.pagesTwice: 1, .finalizeTwice: 1])
        #expect(memory.diagnostics.refcountUnderflowCount == 0 && memory.diagnostics.unlocksOfUnlockedPages == 0)
    }

    /// Section 11: ToyGPU through the 2017 callback API.
    @Test func toyGPU2017() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20)
        let gpu = try ToyGPU(memory: memory, pages: 1024)
        let mm = AddressSpace(memory: memory)
        let b = try mm.mmap(length: 8 * 4096)
        try mm.write(at: b, bytes: [1, 2, 3])
        let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 8)
        let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 8)
        defer { src.deallocate(); dst.deallocate() }
        src.initialize(repeating: []); dst.initialize(repeating: [])
        // The caller holds the mmap lock for read:
        try mm.mmapLock.withReadLock { () throws(HostMMError) in
            try migrateVMA(ops: ToyOps(gpu: gpu), vma: mm.findVMA(b), start: b, end: b + 8 * 4096, src: src, dst: dst)
        }
        #expect(mm.pageTableEntry(b).kind == .devicePrivate)
        #expect(try mm.read(at: b, count: 3) == [1, 2, 3])
        try gpu.shutdown()
    }
}
