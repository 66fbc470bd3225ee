import DMAEngine
import DeviceEmu
import Foundation
import HostMM
import NIOConcurrencyHelpers
import Testing

/// Checked mode with the real copy engine: the nouveau driver (`Device`) and the dmirror
/// device run clean through every flow while copies fail, come up short and finish late;
/// drivers built on DeviceMemory + DMAEngine that break a rule are caught with the page
/// and their call site.
@Suite(.timeLimit(.minutes(1))) struct CheckedDeviceTests {
    static let flaky = CopyBackendKind.faultInjecting(
        FaultPlan(seed: 7, rules: [.init(.every(5), .delay(.milliseconds(1))), .init(.every(37), .fail(.ioError)),
                                   .init(.every(41), .shortCopy(bytes: 100))]),
        wrapping: .ioUring)

    static func checkedMemory(mib: Int = 64) throws -> PhysicalMemory {
        try PhysicalMemory(ramBytes: mib << 20, maxDevicePages: 1 << 17, checked: .on)
    }

    // MARK: Correct drivers

    @Test(arguments: [1, 3])
    func theDmemDriverRunsCleanUnderFaultsAndDelays(pipelineDepth: Int) throws {
        let memory = try Self.checkedMemory()
        var policy = MigrationPolicy()
        policy.pipelineDepth = pipelineDepth
        policy.batchPages = 128
        // 512 pages of VRAM: pressure. CPU faults copy on a clean channel: a failed fault copy
        // is SIGBUS by design (nouveau), which the torture run exercises instead.
        var c = Device.Configuration(name: "gpu", vramSize: 2 << 20, backend: Self.flaky, policy: policy)
        c.faultBackend = .ioUring
        let gpu = try Device(memory: memory, configuration: c)
        let pages = 768
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 5)
        let space = try gpu.bind(mm)
        for round in 0..<3 {
            let lo = round * 256
            try gpu.migrateToDevice(mm, range: range(a + UInt64(lo * pageSize), pages: 512))
            #expect(try pattern.gpuMismatches(space, a, pages: pages).isEmpty)
            _ = try space.atomicAdd(at: a + UInt64(lo * pageSize) + 8, 0)
        }
        let child = try mm.fork()
        try mm.write(at: a + 4096 * 10, bytes: pattern.page(10))             // COW of a migrated page
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
        #expect(try pattern.cpuMismatches(child, a, pages: pages).isEmpty)
        try gpu.migrateToDevice(mm, range: range(a, pages: 256))
        try gpu.suspend()
        try gpu.resume()
        try mm.munmap(a + 4096 * 100, length: 4096 * 50)
        child.exit()
        try gpu.shutdown()
        let checker = try #require(memory.checker)
        #expect(checker.violationCount == 0, "\(checker.violations.prefix(5))")
        #expect(checker.unfinishedMigrations == 0)
        #expect(gpu.counters[.copyFailures] > 0)                                // the injection did run
    }

    @Test func theMirrorDeviceRunsCleanWithOneOpen() throws {
        let memory = try Self.checkedMemory()
        let device = try MirrorDevice(memory: memory, configuration: .init(vramSize: 4 << 20, chunkSize: 2 << 20))
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 256 * pageSize)
        try PagePattern(seed: 3).fill(mm, a, pages: 256)
        let mirror = try device.open(mm)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        _ = try mirror.read(a, npages: 256, into: buffer)
        _ = try mirror.migrateToDevice(a, npages: 256)
        #expect(try PagePattern(seed: 3).cpuMismatches(mm, a, pages: 256).isEmpty)   // CPU faults back
        _ = try mirror.migrateToDevice(a, npages: 128)
        _ = try mirror.migrateToSystem(a, npages: 64)
        mirror.close()
        device.shutdown()
        #expect(memory.checker?.violationCount == 0, "\(memory.checker?.violations.prefix(5) ?? [])")
    }

    // MARK: Drivers that break a rule

    /// A small driver on DeviceMemory and its own engine, copies delayed by `plan`: the
    /// nouveau flow with one switch to forget the fence.
    final class HandRolledDriver: DevicePagemapOps, @unchecked Sendable {
        let memory: PhysicalMemory
        let engine: DMAEngine
        let host: RegionID
        let vram: DeviceMemory
        let channel: DMAChannel
        let oracle: EngineCopyOracle
        private let token = Token()
        final class Token: Sendable {}
        var owner: PgmapOwner { PgmapOwner(token) }
        /// Handed back to the free list by `pageFree` (false: the bug of losing pages).
        let returnsFreedPages = NIOLockedValueBox(true)

        init(memory: PhysicalMemory, plan: FaultPlan) throws {
            self.memory = memory
            var c = DMAEngine.Configuration(backend: .faultInjecting(plan, wrapping: .ioUring))
            c.tracksInFlightCopies = true
            engine = try DMAEngine(configuration: c)
            host = try engine.registerHostMemory(UnsafeMutableRawBufferPointer(start: memory.baseAddress, count: memory.byteCount))
            let forwarder = PagemapOpsForwarder()
            vram = try DeviceMemory(memory: memory, engine: engine, configuration: .init(size: 2 << 20),
                                    owner: PgmapOwner(token), ops: forwarder)
            channel = try engine.makeChannel()
            oracle = EngineCopyOracle(memory: memory, engine: engine, hostRegion: host, deviceMemories: [vram])
            forwarder.target = self
            memory.checker?.register(oracle)
        }

        deinit { engine.shutdown() }

        func pageFree(_ pfn: PFN, pagemap: DevicePagemap) {
            if returnsFreedPages.withLockedValue({ $0 }) { vram.freePage(pfn) }
        }

        func migrateToRAM(_ fault: VMFault) -> VMFaultResult { .sigbus }

        func ram(_ pfn: PFN) -> DMAAddress { DMAAddress(region: host, offset: Int(pfn.rawValue) * pageSize) }

        /// nouveau_dmem_migrate_chunk, with or without the fence wait before finalize.
        func migrateToDevice(_ mm: AddressSpace, _ a: UInt64, pages: Int, waitForFence: Bool) throws {
            let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: pages)
            let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: pages)
            src.initialize(repeating: [])
            dst.initialize(repeating: [])
            defer { src.deallocate(); dst.deallocate() }
            do {
                try mm.mmapLock.withReadLock { () throws in
                    var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + UInt64(pages * pageSize),
                                          src: src, dst: dst, pgmapOwner: owner, flags: .selectSystem)
                    try migrateVMASetup(&args)
                    for i in 0..<args.npages where src[i].contains(.migrate) {
                        guard let page = vram.allocPage(), let to = vram.dmaAddress(of: page) else { continue }
                        if let s = src[i].page {
                            try channel.enqueueCopy(from: ram(s), to: to, length: pageSize)
                        } else {
                            try channel.enqueueFill(to, length: pageSize)
                        }
                        dst[i] = MigratePFN(pfn: page)
                    }
                    let fence = try channel.submit()
                    try migrateVMAPages(&args)
                    if waitForFence { try fence.wait(timeout: .seconds(10)) }
                    migrateVMAFinalize(&args)
                    _ = fence.waitForSignal(timeout: .seconds(10))
                }
            }
        }
    }

    @Test func finalizeBeforeTheFenceIsCaughtWithPageAndCallSite() throws {
        let memory = try Self.checkedMemory()
        let driver = try HandRolledDriver(memory: memory,
                                          plan: FaultPlan(rules: [.init(.rate(1), .delay(.milliseconds(500)))]))
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        try PagePattern(seed: 1).fill(mm, a, pages: 3)                          // page 3 stays a hole
        try driver.migrateToDevice(mm, a, pages: 4, waitForFence: false)         // the bug
        let checker = try #require(memory.checker)
        #expect(checker.countsByRule == [.finalizeWithCopyInFlight: 7])          // 4 destinations, 3 sources
        let v = try #require(checker.violations.first)
        #expect(v.address == a && v.pfn != nil && v.site.hasPrefix("DeviceEmuTests/CheckedDeviceTests.swift:"))
        #expect(v.detail.contains("into destination"))
        #expect(checker.violations.contains { $0.detail.contains("out of source") })
        try mm.munmap(a, length: 4 * pageSize)
    }

    @Test func theSameDriverWaitingForItsFenceIsClean() throws {
        let memory = try Self.checkedMemory()
        let driver = try HandRolledDriver(memory: memory,
                                          plan: FaultPlan(rules: [.init(.rate(1), .delay(.milliseconds(20)))]))
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 64 * pageSize)
        try PagePattern(seed: 2).fill(mm, a, pages: 64)
        try driver.migrateToDevice(mm, a, pages: 64, waitForFence: true)
        try mm.munmap(a, length: 64 * pageSize)
        try driver.vram.retire()
        #expect(memory.checker?.violationCount == 0, "\(memory.checker?.violations.prefix(3) ?? [])")
    }

    @Test func aDevicePageHandedBackTwiceIsCaughtAndKeptOffTheList() throws {
        let memory = try Self.checkedMemory()
        let driver = try HandRolledDriver(memory: memory, plan: FaultPlan(rules: []))
        let page = try #require(driver.vram.allocPage())
        memory.unlockPage(page)
        memory.putPage(page)                                                    // pageFree → free list
        driver.vram.freePage(page)                                              // the bug: freed again by hand
        #expect(memory.checker?.countsByRule == [.devicePageFreedTwice: 1])
        let a = try #require(driver.vram.allocPage()), b = try #require(driver.vram.allocPage())
        #expect(a != b)                                                         // not handed out twice
        for p in [a, b] { memory.unlockPage(p); memory.putPage(p) }
        try driver.vram.retire()
        #expect(memory.checker?.countsByRule == [.devicePageFreedTwice: 1])
    }

    @Test func devicePagesNeverFreedAreLeaksAtTeardown() throws {
        let memory = try Self.checkedMemory()
        let gpu = try makeDevice(memory, vramMiB: 2)
        let kept = try #require(gpu.vram.allocPage())                           // the bug: never freed
        #expect(throws: DeviceError.busy) { try gpu.shutdown() }
        #expect(throws: DeviceError.busy) { try gpu.shutdown() }
        #expect(memory.checker?.countsByRule == [.devicePageLeaked: 1])
        let v = try #require(memory.checker?.violations.first)
        #expect(v.pfn == kept && v.site.hasPrefix("DeviceEmu/Device-Lifecycle.swift:"))
        memory.unlockPage(kept)
        memory.putPage(kept)
        try gpu.shutdown()
        #expect(memory.checker?.violationCount == 1)
    }

    @Test func devicePagesLostByTheDriverAreLeaksAtTeardown() throws {
        let memory = try Self.checkedMemory()
        let driver = try HandRolledDriver(memory: memory, plan: FaultPlan(rules: []))
        driver.returnsFreedPages.withLockedValue { $0 = false }                 // the bug: pageFree drops pages
        let page = try #require(driver.vram.allocPage())
        memory.unlockPage(page)
        memory.putPage(page)
        #expect(throws: DeviceError.busy) { try driver.vram.retire() }
        #expect(memory.checker?.countsByRule == [.devicePageLeaked: 1])
        #expect(memory.checker?.violations.first?.pfn == page)
        driver.vram.freePage(page)
        try driver.vram.retire()
    }

    @Test func aSiblingMirrorKeepingEntriesOfMigratedPagesIsReported() throws {
        // test_hmm's own quirk, reproduced faithfully: two opens of one device share its
        // owner, so a migration by one does not invalidate the other, whose entries keep
        // naming the system pages that moved (the kernel's dmirror has the same hole).
        let memory = try Self.checkedMemory()
        let device = try MirrorDevice(memory: memory, configuration: .init(vramSize: 4 << 20, chunkSize: 2 << 20))
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        try PagePattern(seed: 4).fill(mm, a, pages: 4)
        let first = try device.open(mm), sibling = try device.open(mm)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 * pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        _ = try sibling.read(a, npages: 4, into: buffer)
        _ = try first.migrateToDevice(a, npages: 4)
        let checker = try #require(memory.checker)
        #expect(checker.countsByRule == [.devicePTEMapsMigratedPage: 4])
        #expect(Set(checker.violations.compactMap(\.address)) == Set((0..<4).map { a + UInt64($0 * pageSize) }))
        sibling.close()
        first.close()
        device.shutdown()
        #expect(checker.countsByRule == [.devicePTEMapsMigratedPage: 4])
    }
}
