import DeviceEmu
import HostMM
import Testing

/// `MirrorDevice.Configuration.observer`: each test_hmm command reports the steps it really
/// takes, in order, with the kinds `Device` uses (the mirror copies on the CPU, so no fence
/// steps appear).
@Suite(.timeLimit(.minutes(1))) struct MirrorObserverTests {
    /// A device observed by an `EventLog`, one process with `pages` pages of a pattern, a mirror.
    struct Rig {
        let memory: PhysicalMemory
        let log = EventLog()
        let device: MirrorDevice
        let mm: AddressSpace
        let a: UInt64
        let pattern: PagePattern
        let mirror: Mirror

        init(pages: Int = 8) throws {
            memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
            device = try MirrorDevice(memory: memory, configuration: .init(vramSize: 4 << 20, chunkSize: 4 << 20,
                                                                           observer: log))
            (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 3)
            mirror = try device.open(mm)
        }

        /// The kinds logged since `from`, with one direction.
        func kinds(from: Int = 0) -> [MigrationEvent.Kind] { Array(log.all[from...].map(\.kind)) }

        func teardown() {
            mirror.close()
            #expect(device.inUsePageCount == 0)
            #expect(memory.checker?.violations.isEmpty == true, "\(memory.checker?.violations.prefix(3) ?? [])")
            device.shutdown()
        }
    }

    static let batchToDevice: [MigrationEvent.Kind] = [.setupBegin, .setupEnd, .copiesSubmitted, .migratePagesBegin,
                                                       .migratePagesEnd, .deviceMap, .finalizeBegin, .finalizeEnd]
    static let batchToRAM: [MigrationEvent.Kind] = [.setupBegin, .setupEnd, .copiesSubmitted, .migratePagesBegin,
                                                    .migratePagesEnd, .finalizeBegin, .finalizeEnd]

    @Test func migrateToDeviceReportsOneBatchWithoutAFence() throws {
        let rig = try Rig()
        #expect(try rig.mirror.migrateToDevice(rig.a, npages: 8).cpages == 8)
        let events = rig.log.all
        #expect(events.map(\.kind) == Self.batchToDevice)
        #expect(events.allSatisfy { $0.direction == .toDevice && $0.batch == events[0].batch && $0.batch != 0 })
        #expect(events.allSatisfy { $0.seqno == 0 && $0.channel == -1 }, "CPU copies have no fence")
        #expect(events.first { $0.kind == .setupEnd }?.pages == 8)
        #expect(events.first { $0.kind == .copiesSubmitted }?.pages == 8)
        #expect(events.first { $0.kind == .deviceMap }?.pages == 8)
        #expect(events.first { $0.kind == .finalizeEnd }?.pages == 8)
        #expect(events.allSatisfy { $0.kind == .setupBegin || $0.kind == .deviceMap || $0.kind == .copiesSubmitted
                                    || $0.kind == .migratePagesBegin || $0.kind == .finalizeBegin || $0.beginTime != 0 })
        rig.teardown()
    }

    @Test func aCPUFaultReportsOneToRAMBatchOfOnePageInsideItsFault() throws {
        let rig = try Rig()
        _ = try rig.mirror.migrateToDevice(rig.a, npages: 8)
        let from = rig.log.all.count
        #expect(try rig.mm.read(at: rig.a + 2 * UInt64(pageSize), count: pageSize) == rig.pattern.page(2))
        #expect(rig.kinds(from: from) == [.cpuFaultBegin] + Self.batchToRAM + [.cpuFaultEnd])
        let events = Array(rig.log.all[from...])
        #expect(events.allSatisfy { $0.direction == .toRAM })
        #expect(events.first?.address == rig.a + 2 * UInt64(pageSize))
        #expect(events.first { $0.kind == .setupEnd }?.pages == 1, "dmirror_devmem_fault has no fault-around")
        #expect(events.last?.pages == 1)
        rig.teardown()
    }

    @Test func migrateToSystemReportsToRAMBatches() throws {
        let rig = try Rig()
        _ = try rig.mirror.migrateToDevice(rig.a, npages: 8)
        let from = rig.log.all.count
        #expect(try rig.mirror.migrateToSystem(rig.a, npages: 8).cpages == 8)
        #expect(rig.kinds(from: from) == Self.batchToRAM)
        #expect(rig.log.all[from...].allSatisfy { $0.direction == .toRAM })
        #expect(rig.log.all.last?.pages == 8)
        rig.teardown()
    }

    @Test func anAllocationFailureToSystemReportsNoCopiesButFinalizes() throws {
        let rig = try Rig()
        _ = try rig.mirror.migrateToDevice(rig.a, npages: 8)
        try rig.mirror.setFlags(.failAllocation)
        let from = rig.log.all.count
        #expect(throws: MirrorError.outOfMemory) { try rig.mirror.migrateToSystem(rig.a, npages: 8) }
        #expect(rig.kinds(from: from) == [.setupBegin, .setupEnd, .finalizeBegin, .finalizeEnd])
        #expect(rig.log.all.last?.pages == 0)
        rig.teardown()
    }

    @Test func releaseReportsEvictionBatches() throws {
        let rig = try Rig()
        _ = try rig.mirror.migrateToDevice(rig.a, npages: 8)
        let from = rig.log.all.count
        try rig.mirror.release(rig.a, npages: 1)
        let events = Array(rig.log.all[from...])
        #expect(events.allSatisfy { $0.direction == .evict })
        let busy = events.filter { $0.kind == .setupEnd && $0.pages > 0 }.map(\.batch)
        #expect(busy.count == 1)
        #expect(events.filter { $0.batch == busy.first }.map(\.kind) == Self.batchToRAM)
        #expect(events.last { $0.kind == .finalizeEnd }?.pages == 8)
        // Empty batches report their setup only.
        for batch in Set(events.map(\.batch)) where batch != busy.first {
            #expect(events.filter { $0.batch == batch }.map(\.kind) == [.setupBegin, .setupEnd])
        }
        #expect(rig.device.inUsePageCount == 0)
        rig.teardown()
    }

    @Test func readAndWriteFaultsReportGPUFaults() throws {
        let rig = try Rig()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 * pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        #expect(try rig.mirror.read(rig.a, npages: 8, into: buffer).faults == 1)
        #expect(rig.kinds() == [.gpuFault, .gpuFaultResolved])
        #expect(rig.log.all.allSatisfy { $0.direction == .none && $0.address == rig.a })
        #expect(rig.log.all.last?.pages == 8)
        // Mapped already: a second read faults nothing and reports nothing.
        let from = rig.log.all.count
        #expect(try rig.mirror.read(rig.a, npages: 8, into: buffer).faults == 0)
        #expect(rig.log.all.count == from)
        // The CPU entries were writable, so were the mirror's: a write faults nothing either.
        #expect(try rig.mirror.write(rig.a, npages: 8, from: UnsafeRawBufferPointer(buffer)).faults == 0)
        #expect(rig.log.all.count == from)
        // A write of pages the mirror has not seen faults them in for write.
        try rig.mm.madvise(rig.a, length: 4 * pageSize, advice: .dontNeed)
        #expect(try rig.mirror.write(rig.a, npages: 8, from: UnsafeRawBufferPointer(buffer)).faults == 1)
        #expect(rig.kinds(from: from) == [.gpuFault, .gpuFaultResolved])
        #expect(rig.log.all.last?.pages == 8)
        rig.teardown()
    }

    @Test func aFailedFaultReportsNoResolution() throws {
        let rig = try Rig()
        try rig.mm.mprotect(rig.a, length: 8 * pageSize, protection: .read)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 * pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        #expect(throws: MirrorError.permissionDenied) { try rig.mirror.write(rig.a, npages: 8, from: UnsafeRawBufferPointer(buffer)) }
        #expect(rig.kinds() == [.gpuFault])
        rig.teardown()
    }

    @Test func makeExclusiveReportsEachPageTaken() throws {
        let rig = try Rig()
        #expect(try rig.mirror.makeExclusive(rig.a, npages: 3).cpages == 3)
        #expect(rig.kinds() == [.deviceExclusive, .deviceExclusive, .deviceExclusive])
        #expect(rig.log.all.map(\.address) == (0..<3).map { rig.a + UInt64($0 * pageSize) })
        rig.teardown()
    }
}
