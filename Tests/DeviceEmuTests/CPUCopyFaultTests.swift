import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// `MigrationPolicy.cpuCopyFaultPages`: small CPU faults are copied on the faulting
/// thread (a memcpy channel of their own), larger windows and migrations use the engine.
@Suite struct CPUCopyFaultTests {
    /// Migrates 64 pattern pages, reads them back with `policy`; returns the channels
    /// the to-RAM batches used and the device's channel count.
    func readBack(_ policy: MigrationPolicy, backend: CopyBackendKind = .ioUring,
                  faultBackend: CopyBackendKind? = nil) throws -> (toDevice: Set<Int>, toRAM: Set<Int>, channels: Int) {
        let memory = try makeMemory(mib: 64)
        var c = Device.Configuration(vramSize: 8 << 20, backend: backend, policy: policy)
        c.faultBackend = faultBackend
        let log = EventLog()
        c.observer = log
        let gpu = try Device(memory: memory, configuration: c)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 64, seed: 91)
        try gpu.migrateToDevice(mm, range: range(a, pages: 64))
        #expect(try pattern.cpuMismatches(mm, a, pages: 64).isEmpty)
        #expect(gpu.vram.inUsePageCount == 0)
        let channels = { (d: MigrationEvent.Direction) in
            Set(log.all.filter { $0.direction == d && $0.kind == .copiesSubmitted }.map(\.channel))
        }
        return (channels(.toDevice), channels(.toRAM), gpu.channelCount)
    }

    @Test func singlePageFaultsTakeTheCPUCopyChannelByDefault() throws {
        let r = try readBack(MigrationPolicy())
        #expect(r.channels == 2)
        #expect(r.toDevice.count == 1 && r.toRAM.count == 1 && r.toDevice != r.toRAM)
    }

    @Test func windowsAboveTheLimitAndALimitOfZeroUseTheEngine() throws {
        var p = MigrationPolicy()
        p.cpuFaultGranularity = .faultAround(pages: 32)
        let large = try readBack(p)
        #expect(large.toRAM == large.toDevice)
        p.cpuFaultGranularity = .page
        p.cpuCopyFaultPages = 0
        let none = try readBack(p)
        #expect(none.toRAM == none.toDevice)
    }

    @Test func anExplicitFaultBackendOrACPUBackendNeedsNoExtraChannels() throws {
        #expect(try readBack(MigrationPolicy(), backend: .memcpy).channels == 1)
        #expect(try readBack(MigrationPolicy(), faultBackend: .ioUring).channels == 2)
    }

    /// A GPU fault migrating its window to VRAM is a fault too: a window within the limit
    /// copies on the CPU-copy channel, a larger one (or a limit of 0) through the engine
    /// `migrateToDevice` uses. The data arrives either way.
    @Test(arguments: [(16, 16, true), (32, 16, false), (16, 0, false)])
    func gpuFaultWindowsWithinTheLimitTakeTheCPUCopyChannel(window: Int, limit: Int, cpuCopy: Bool) throws {
        let memory = try makeMemory(mib: 64)
        var p = MigrationPolicy()
        p.gpuFault = .migrateToVRAM(pages: window)
        p.cpuCopyFaultPages = limit
        var c = Device.Configuration(vramSize: 8 << 20, backend: .ioUring, policy: p)
        let log = EventLog()
        c.observer = log
        let gpu = try Device(memory: memory, configuration: c)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 64, seed: 92)
        let space = try gpu.bind(mm)
        _ = try space.read(at: a, count: 8)                                   // a GPU fault: one window to VRAM
        #expect(gpu.counters[.pagesToDevice] == window)
        try gpu.migrateToDevice(mm, range: range(a, pages: 64))               // the rest, through the engine
        let faultChannels = Set(log.all.filter { $0.kind == .copiesSubmitted }.prefix(1).map(\.channel))
        let engineChannels = Set(log.all.filter { $0.kind == .copiesSubmitted }.dropFirst().map(\.channel))
        #expect(faultChannels.isDisjoint(with: engineChannels) == cpuCopy, "fault \(faultChannels), engine \(engineChannels)")
        #expect(try pattern.gpuMismatches(space, a, pages: 64).isEmpty)
        #expect(gpu.counters[.pagesToDevice] == 64)
    }

    /// With `faultBackend` set, GPU faults take its channels as CPU faults do ("it takes
    /// every fault"), not the bulk channels of `migrateToDevice`.
    @Test func anExplicitFaultBackendTakesGPUFaultsToo() throws {
        let memory = try makeMemory(mib: 64)
        var c = Device.Configuration(vramSize: 8 << 20, backend: .ioUring, policy: MigrationPolicy())
        c.faultBackend = .memcpy
        let log = EventLog()
        c.observer = log
        let gpu = try Device(memory: memory, configuration: c)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 64, seed: 93)
        let space = try gpu.bind(mm)
        _ = try space.read(at: a, count: 8)                                   // GPU fault: 16 pages to VRAM
        #expect(try pattern.cpuMismatches(mm, a, pages: 1).isEmpty)          // CPU fault: page 0 back
        try gpu.migrateToDevice(mm, range: range(a, pages: 64))               // bulk
        let submitted = log.all.filter { $0.kind == .copiesSubmitted }.map(\.channel)
        try #require(submitted.count >= 3)
        #expect(submitted[0] == submitted[1], "GPU fault on \(submitted[0]), CPU fault on \(submitted[1])")
        #expect(submitted[0] != submitted[2], "GPU fault and migrateToDevice both on \(submitted[0])")
        #expect(try pattern.gpuMismatches(space, a, pages: 64).isEmpty)
    }

    @Test func aNegativeLimitIsRejected() throws {
        let memory = try makeMemory(mib: 16)
        let gpu = try makeDevice(memory, vramMiB: 4)
        defer { try? gpu.shutdown() }
        var p = MigrationPolicy()
        p.cpuCopyFaultPages = -1
        #expect(throws: DeviceError.invalidArgument) { try gpu.setPolicy(p) }
    }
}
