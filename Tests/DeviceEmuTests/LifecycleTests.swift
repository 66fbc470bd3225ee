import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// Teardown and suspend/resume evict VRAM through `migrateDevice*` and keep the data.
@Suite struct LifecycleTests {
    @Test func suspendEvictsEverythingAndResumeWorksAgain() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 16, backend: .ioUring)
        defer { try? gpu.shutdown() }
        let pages = 2000
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 61)
        let space = try gpu.bind(mm)
        try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        try gpu.suspend()
        #expect(gpu.isSuspended)
        #expect(gpu.vram.inUsePageCount == 0 && gpu.counters[.pagesEvicted] == pages)
        #expect(entryKinds(mm, a, pages: pages) == [.present: pages])
        #expect(space.mappedPageCount == 0)
        #expect(throws: DeviceError.suspended) { try gpu.migrateToDevice(mm, range: range(a, pages: 1)) }
        #expect(throws: DeviceError.suspended) { try space.read(at: a, count: 1) }
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)   // no CPU fault needed
        #expect(gpu.counters[.cpuFaults] == 0)

        try gpu.resume()
        #expect(!gpu.isSuspended)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: pages)).migrated == pages)
        #expect(try pattern.gpuMismatches(space, a, pages: pages).isEmpty)
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
    }

    @Test func evictionBatchesAreGatedByTheirFence() throws {
        let memory = try makeMemory(mib: 64)
        let log = EventLog()
        let slow = CopyBackendKind.faultInjecting(FaultPlan(rules: [.init(.every(5), .delay(.milliseconds(1)))]),
                                                  wrapping: .ioUring)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: slow, observer: log)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 1024, seed: 65)
        try gpu.migrateToDevice(mm, range: range(a, pages: 1024))
        try gpu.suspend()
        let evict = log.all.filter { $0.direction == .evict }
        let batches = Set(evict.map(\.batch))
        #expect(evict.filter { $0.kind == .finalizeEnd }.map(\.pages).reduce(0, +) == 1024)
        for batch in batches {
            let mine = evict.filter { $0.batch == batch }
            guard let finalize = mine.first(where: { $0.kind == .finalizeBegin })?.time else { continue }
            let signaled = try #require(mine.first { $0.kind == .fenceSignaled }?.time)
            #expect(signaled <= finalize)
        }
        #expect(try pattern.cpuMismatches(mm, a, pages: 1024).isEmpty)
        #expect(gpu.counters[.cpuFaults] == 0)
    }

    @Test func teardownEvictsAndUnregistersAndRefusesFurtherWork() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 16)
        let mm = AddressSpace(memory: memory)
        let pages = 1500
        let a = try mm.mmap(length: pages * pageSize)
        let pattern = PagePattern(seed: 62)
        try pattern.fill(mm, a, pages: pages / 2)
        let space = try gpu.bind(mm)
        try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        let chunk = try #require(gpu.vram.chunks.first).pfns.lowerBound
        try gpu.shutdown()
        #expect(memory.pagemap(of: chunk) == nil)
        #expect(entryKinds(mm, a, pages: pages) == [.present: pages])
        #expect(try pattern.cpuMismatches(mm, a, pages: pages / 2).isEmpty)
        #expect(try mm.read(at: a + UInt64(pages / 2 * 4096), count: (pages / 2) * pageSize).allSatisfy { $0 == 0 })
        #expect(throws: DeviceError.shutDown) { try gpu.migrateToDevice(mm, range: range(a, pages: 1)) }
        #expect(throws: DeviceError.shutDown) { try gpu.bind(mm) }
        #expect(throws: DeviceError.shutDown) { try space.read(at: a, count: 1) }
        #expect(throws: DeviceError.shutDown) { try gpu.resume() }
        try gpu.shutdown()    // idempotent
    }

    @Test func teardownWithAPinnedDevicePageIsBusyUntilUnpinned() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 4)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        try PagePattern(seed: 63).fill(mm, a, pages: 4)
        try gpu.migrateToDevice(mm, range: range(a, pages: 4))
        // Another user holds a reference on one device page (get_user_pages on the entry).
        let pfn = mm.pageTableEntry(a).pfn
        memory.getPage(pfn)
        #expect(throws: DeviceError.busy) { try gpu.shutdown() }
        #expect(gpu.vram.inUsePageCount == 1 && mm.pageTableEntry(a).kind == .devicePrivate)
        memory.putPage(pfn)
        try gpu.shutdown()
        #expect(gpu.vram.inUsePageCount == 0 && mm.pageTableEntry(a).kind == .present)
        #expect(try PagePattern(seed: 63).cpuMismatches(mm, a, pages: 4).isEmpty)
    }
}

@Suite struct DroppedDeviceTests {
    @Test func aDeviceDroppedWithoutShutdownEvictsItsPages() throws {
        let memory = try makeMemory(mib: 64)
        let (mm, a, pattern) = try makeProcess(memory, pages: 64, seed: 64)
        var chunk = PFN(0)
        do {
            let gpu = try makeDevice(memory, vramMiB: 4)
            try gpu.migrateToDevice(mm, range: range(a, pages: 64))
            chunk = try #require(gpu.vram.chunks.first).pfns.lowerBound
        }
        #expect(memory.pagemap(of: chunk) == nil)     // evicted, chunks unregistered
        #expect(entryKinds(mm, a, pages: 64) == [.present: 64])
        #expect(try pattern.cpuMismatches(mm, a, pages: 64).isEmpty)
    }
}
