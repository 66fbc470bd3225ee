import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// `Device.Configuration.fixedBuffers`: System RAM registered as io_uring fixed buffers
/// carries the dmem flow both ways, and the device reports the fixed-buffer operations.
@Suite struct DeviceFixedBufferTests {
    @Test func fixedBuffersCarryMigrationBothWays() throws {
        let memory = try makeMemory(mib: 32)
        var c = Device.Configuration(name: "fixed", vramSize: 8 << 20, backend: .ioUring)
        c.fixedBuffers = true
        c.faultBackend = .ioUring  // faults through the engine too, not the CPU copy path
        let gpu = try Device(memory: memory, configuration: c)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 1024, seed: 91)
        let space = try gpu.bind(mm)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 1024)).migrated == 1024)
        #expect(try pattern.gpuMismatches(space, a, pages: 1024).isEmpty)
        #expect(try pattern.cpuMismatches(mm, a, pages: 1024).isEmpty)
        #expect(gpu.counters[.cpuFaults] > 0 && gpu.vram.inUsePageCount == 0)
        let status = gpu.fixedBuffers
        if let failure = status.failure {
            // A process that may not pin (no CAP_IPC_LOCK, small ulimit -l): plain opcodes, same data.
            #expect(status.operations == 0, "\(failure)")
        } else {
            #expect(status.installedPieces >= 2, "every channel holds System RAM")
            #expect(status.operations > 0)
        }
    }

    @Test func offByDefault() throws {
        let memory = try makeMemory(mib: 16)
        let gpu = try makeDevice(memory, vramMiB: 4, backend: .ioUring)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 64, seed: 92)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 64)).migrated == 64)
        #expect(try pattern.cpuMismatches(mm, a, pages: 64).isEmpty)
        #expect(gpu.fixedBuffers == FixedBufferStatus())
    }
}
