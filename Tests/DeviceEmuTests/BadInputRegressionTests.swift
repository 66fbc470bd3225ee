import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// Regressions the bad-input fuzzer (`BadInputFuzzTests`) found in DeviceEmu.
@Suite struct BadInputRegressionTests {
    /// A VRAM size past HostMM's device-PFN room created (and populated) 1 GiB memfd pools
    /// one after another before failing — minutes and gigabytes for `vramSize: 1 << 40`.
    @Test func vramLargerThanTheDevicePFNSpaceIsRefusedAtOnce() throws {
        let memory = try PhysicalMemory(ramBytes: 16 << 20, maxDevicePages: 1 << 12, checked: .off)
        let t0 = ContinuousClock.now
        #expect(throws: DeviceError.hostMM(.outOfMemory)) {
            try Device(memory: memory, configuration: .init(vramSize: 1 << 40, backend: .memcpy))
        }
        #expect(throws: DeviceError.hostMM(.outOfMemory)) {
            try Device(memory: memory, configuration: .init(vramSize: (1 << 12) * 4096 + (2 << 20), backend: .memcpy))
        }
        #expect(throws: MirrorError.self) {
            try MirrorDevice(memory: memory, configuration: .init(vramSize: 1 << 40, chunkSize: 1 << 30))
        }
        #expect(ContinuousClock.now - t0 < .seconds(30))   // a bound on a hang, not a speed target
        _ = try Device(memory: memory, configuration: .init(vramSize: 8 << 20, backend: .memcpy))
    }

    /// dmirror commands with a negative page count passed the wrap check at low addresses
    /// (`address < address + npages << 12` in wrapping arithmetic) and trapped later,
    /// building an Array of negative count; `checkExclusive` walked every page of any range.
    @Test func mirrorCommandsRefuseNegativeCountsAndHugeRangesStayCheap() throws {
        let memory = try PhysicalMemory(ramBytes: 16 << 20, maxDevicePages: 1 << 12, checked: .off)
        let device = try MirrorDevice(memory: memory, configuration: .init(vramSize: 2 << 20, chunkSize: 2 << 20))
        let mm = AddressSpace(memory: memory)
        let mirror = try device.open(mm)
        for n in [-1, -2, Int.min] {
            #expect(throws: MirrorError.invalidArgument) { try mirror.snapshot(0, npages: n) }
            #expect(throws: MirrorError.invalidArgument) { try mirror.checkExclusive(0, npages: n) }
            #expect(throws: MirrorError.invalidArgument) { try mirror.migrateToSystem(4096, npages: n) }
        }
        #expect(try mirror.checkExclusive(0, npages: 1 << 40) == MirrorResult(cpages: 0, faults: 0))
        mirror.close()
        device.shutdown()
    }

    /// `DeviceMemory.freePage` (and so `Device.pageFree`, public as a pgmap callback) put a
    /// page that still had references on the free list: two later allocations could get
    /// it while its owner still used it. Such a page is now counted and ignored.
    @Test func freeingAPageStillInUseIsIgnoredAndCounted() throws {
        let memory = try PhysicalMemory(ramBytes: 16 << 20, maxDevicePages: 1 << 12, checked: .off)
        let gpu = try Device(memory: memory, configuration: .init(vramSize: 2 << 20, backend: .memcpy))
        let page = try #require(gpu.vram.allocPage())
        let free = gpu.vram.freePageCount
        gpu.vram.freePage(page)                                                  // still referenced
        gpu.pageFree(page, pagemap: try #require(memory.pagemap(of: page)))
        #expect(gpu.vram.freePageCount == free && gpu.vram.strayFreeCount == 2)
        #expect(gpu.checkInvariants().isEmpty)
        var others: [PFN] = []
        while let p = gpu.vram.allocPage() { others.append(p) }
        #expect(!others.contains(page))
        for p in others + [page] { memory.unlockPage(p); memory.putPage(p) }
        try gpu.shutdown()
    }
}
