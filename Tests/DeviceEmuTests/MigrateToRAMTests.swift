import DMAEngine
import DeviceEmu
import HostMM
import Testing

@Suite struct MigrateToRAMTests {
    /// 16 MiB of VRAM; a CPU fault brings back the aligned 16-page window around it.
    static func faultAroundDevice(_ memory: PhysicalMemory) throws -> Device {
        var policy = MigrationPolicy()
        policy.cpuFaultGranularity = .faultAround(pages: 16)
        return try makeDevice(memory, vramMiB: 16, policy: policy)
    }

    /// 64 MiB to VRAM, then read back on the CPU page by page: one fault per page.
    @Test func cpuReadBackFaultsOncePerPage() throws {
        let memory = try makeMemory(mib: 256)
        let gpu = try makeDevice(memory, vramMiB: 64, backend: .ioUring)
        defer { try? gpu.shutdown() }
        let pages = 16384
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 65)
        try gpu.migrateToDevice(mm, range: range(a, pages: pages))

        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
        #expect(gpu.counters[.cpuFaults] == pages && mm.faultCounters[.devicePrivate] == pages)
        #expect(gpu.counters[.pagesToRAM] == pages)
        #expect(entryKinds(mm, a, pages: pages) == [.present: pages])
        #expect(gpu.vram.inUsePageCount == 0 && gpu.counters[.pagesFreed] == pages)
    }

    @Test func faultAroundBringsBackWindowsAndFaultsLess() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try Self.faultAroundDevice(memory)
        defer { try? gpu.shutdown() }
        let pages = 1024
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 66)
        try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
        #expect(gpu.counters[.cpuFaults] == pages / 16)
        #expect(gpu.counters[.pagesToRAM] == pages)
        #expect(gpu.vram.inUsePageCount == 0)
    }

    @Test func faultAroundWindowIsAlignedAndClampedToTheVMA() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try Self.faultAroundDevice(memory)
        defer { try? gpu.shutdown() }
        let (mm, a, _) = try makeProcess(memory, pages: 40, seed: 67)
        try gpu.migrateToDevice(mm, range: range(a, pages: 40))
        _ = try mm.read(at: a + 37 * 4096 + 5, count: 1)
        // The 16-page window holding page 37 of an aligned layout, cut at the VMA's end.
        let firstPage = Int(a >> 12)
        let windowStart = (firstPage + 37) / 16 * 16 - firstPage
        for p in 0..<40 {
            let back = p >= max(windowStart, 0)
            #expect(mm.pageTableEntry(a + UInt64(p * 4096)).kind == (back ? .present : .devicePrivate))
        }
        #expect(gpu.counters[.cpuFaults] == 1)
    }

    /// The fault-around window is cut at the VMA's start, not slid up: a fault at page s + 5
    /// of a VMA starting 3 pages past a 16-page boundary brings back pages s ..< s + 13 (the
    /// aligned window s - 3 ..< s + 13 within the VMA: `.faultAround` is the aligned window
    /// clamped to the VMA, where `do_fault_around` would keep 16 pages from s); s + 13 and
    /// after stay in VRAM.
    @Test func faultAroundWindowIsCutAtTheVMAStart() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try Self.faultAroundDevice(memory)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 64, seed: 70)
        let s = 16 + (3 - Int(a >> 12) % 16 + 16) % 16
        try mm.mprotect(a, length: s * pageSize, protection: .read)       // the VMA below ends at page s
        let upper = a + UInt64(s * pageSize)
        try gpu.migrateToDevice(mm, range: upper ..< a + UInt64(64 * pageSize))
        _ = try mm.read(at: upper + UInt64(5 * pageSize), count: 1)
        #expect(gpu.counters[.cpuFaults] == 1 && gpu.counters[.pagesToRAM] == 13)
        #expect(entryKinds(mm, upper, pages: 13) == [.present: 13])
        #expect(entryKinds(mm, upper + UInt64(13 * pageSize), pages: 64 - s - 13) == [.devicePrivate: 64 - s - 13])
        #expect(try pattern.cpuMismatches(mm, a, pages: 64).isEmpty)
    }

    /// A window of `Int.max` pages (a driver's "the whole VMA") is a valid policy: CPU
    /// faults bring back the whole VMA, GPU faults map or migrate it, instead of trapping
    /// on the window's arithmetic.
    @Test(arguments: [MigrationPolicy.GPUFaultResolution.mapSystemMemory(pages: .max), .migrateToVRAM(pages: .max)])
    func windowsOfAnyPageCountAreClampedToTheVMA(gpuFault: MigrationPolicy.GPUFaultResolution) throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.cpuFaultGranularity = .faultAround(pages: .max)
        policy.gpuFault = gpuFault
        let gpu = try makeDevice(memory, vramMiB: 2, policy: policy)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 40, seed: 68)
        let space = try gpu.bind(mm)
        #expect(try pattern.gpuMismatches(space, a, first: 37, pages: 1).isEmpty)   // GPU fault on page 37
        #expect(space.mappedPageCount == 40 && gpu.counters[.gpuFaults] == 1)
        if case .migrateToVRAM = gpuFault {
            #expect(entryKinds(mm, a, pages: 40) == [.devicePrivate: 40])
        } else {
            try gpu.migrateToDevice(mm, range: range(a, pages: 40))
        }
        _ = try mm.read(at: a + 37 * 4096, count: 1)                                // CPU fault on page 37
        #expect(entryKinds(mm, a, pages: 40) == [.present: 40])
        #expect(gpu.counters[.cpuFaults] == 1 && gpu.counters[.pagesToRAM] == 40)
        #expect(try pattern.cpuMismatches(mm, a, pages: 40).isEmpty)
    }

    @Test func wholeAllocationBringsBackWhatWasMigratedTogether() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.cpuFaultGranularity = .wholeAllocation
        policy.batchPages = 256      // the fault's batch first, then the other three
        let gpu = try makeDevice(memory, vramMiB: 16, policy: policy)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 2048, seed: 68)
        try gpu.migrateToDevice(mm, range: range(a, pages: 1024))           // allocation 1
        try gpu.migrateToDevice(mm, range: a + 1024 * 4096 ..< a + 2048 * 4096)  // allocation 2
        _ = try mm.read(at: a + 700 * 4096, count: 8)
        #expect(gpu.counters[.cpuFaults] == 1)
        #expect(entryKinds(mm, a, pages: 1024) == [.present: 1024])
        #expect(entryKinds(mm, a + 1024 * 4096, pages: 1024) == [.devicePrivate: 1024])
        #expect(try pattern.cpuMismatches(mm, a, pages: 2048).isEmpty)
        #expect(gpu.counters[.cpuFaults] == 2)
    }

    /// A window of several batches brings back the faulting page's batch first (its result
    /// is the fault's), then the rest of the window in address order.
    @Test func theFaultingBatchOfAWindowComesBackFirst() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.cpuFaultGranularity = .wholeAllocation
        policy.batchPages = 256
        let log = EventLog()
        let gpu = try makeDevice(memory, vramMiB: 16, policy: policy, observer: log)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 1024, seed: 70)
        try gpu.migrateToDevice(mm, range: range(a, pages: 1024))
        _ = try mm.read(at: a + 700 * 4096, count: 1)
        let starts = log.all.filter { $0.kind == .setupBegin && $0.direction == .toRAM }.map { ($0.address - a) >> 12 }
        #expect(starts == [512, 0, 256, 768])
        #expect(try pattern.cpuMismatches(mm, a, pages: 1024).isEmpty)
    }

    @Test func cpuWritesToADevicePageLandAfterItsMigration() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 4, seed: 69)
        try gpu.migrateToDevice(mm, range: range(a, pages: 4))
        try mm.write(at: a + 4096 + 10, bytes: [1, 2, 3])
        var expected = pattern.page(1)
        expected[10] = 1; expected[11] = 2; expected[12] = 3
        #expect(try mm.read(at: a + 4096, count: pageSize) == expected)
        #expect(gpu.counters[.cpuFaults] == 1 && mm.pageTableEntry(a).kind == .devicePrivate)
    }

    @Test func explicitMigrationToRAMCausesNoCPUFaults() throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 8)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 600, seed: 70)
        let space = try gpu.bind(mm)
        try gpu.migrateToDevice(mm, range: range(a, pages: 600))
        #expect(space.mappedPageCount == 600)
        let r = try gpu.migrateRangeToRAM(mm, range: range(a, pages: 600))
        #expect(r.migrated == 600 && r.batches == 2)
        #expect(space.mappedPageCount == 0)   // the driver zapped its own entries
        #expect(entryKinds(mm, a, pages: 600) == [.present: 600])
        #expect(try pattern.cpuMismatches(mm, a, pages: 600).isEmpty)
        #expect(gpu.counters[.cpuFaults] == 0 && gpu.vram.inUsePageCount == 0)
    }

    @Test func minimumResidencyMakesAnEarlyCPUFaultWait() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.minimumResidency = .milliseconds(30)
        let gpu = try makeDevice(memory, vramMiB: 8, policy: policy)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 2, seed: 71)
        try gpu.migrateToDevice(mm, range: range(a, pages: 2))
        #expect(try pattern.cpuMismatches(mm, a, pages: 1).isEmpty)
        #expect(gpu.counters[.residencyWaits] == 1)
        var relaxed = policy
        relaxed.minimumResidency = .zero
        try gpu.setPolicy(relaxed)
        _ = try mm.read(at: a + 4096, count: 1)
        #expect(gpu.counters[.residencyWaits] == 1 && gpu.counters[.cpuFaults] == 2)
    }

    @Test func cpuFaultsCanUseTheirOwnCopyBackend() throws {
        let memory = try makeMemory(mib: 64)
        var c = Device.Configuration(vramSize: 8 << 20, backend: .ioUring)
        c.faultBackend = .memcpy
        let log = EventLog()
        c.observer = log
        let gpu = try Device(memory: memory, configuration: c)
        defer { try? gpu.shutdown() }
        #expect(gpu.channelCount == 2)
        let (mm, a, pattern) = try makeProcess(memory, pages: 64, seed: 72)
        try gpu.migrateToDevice(mm, range: range(a, pages: 64))
        #expect(try pattern.cpuMismatches(mm, a, pages: 64).isEmpty)
        let toDevice = Set(log.all.filter { $0.direction == .toDevice && $0.channel >= 0 }.map(\.channel))
        let toRAM = Set(log.all.filter { $0.direction == .toRAM && $0.channel >= 0 }.map(\.channel))
        #expect(toDevice.count == 1 && toRAM.count == 1 && toDevice != toRAM)
    }
}
