import DMAEngine
import DeviceEmu
import Foundation
import HostMM
import Testing

/// `Device.Configuration.vramLayout` reaches the pools: VRAM in a directory (a tmpfs,
/// as a huge=always mount would be) carries the whole dmem flow.
@Suite struct VRAMLayoutTests {
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/shm"), "needs a tmpfs at /dev/shm"))
    func vramInADirectoryCarriesTheMigrationFlow() throws {
        let memory = try makeMemory(mib: 64)
        var c = Device.Configuration(name: "dir", vramSize: 8 << 20, backend: .ioUring)
        c.vramLayout.directory = "/dev/shm"
        let gpu = try Device(memory: memory, configuration: c)
        defer { try? gpu.shutdown() }
        #expect(gpu.vram.pools.allSatisfy { $0.layout.directory == "/dev/shm" && $0.files.count == 4 })
        let pages = 1024
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 77)
        let space = try gpu.bind(mm)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: pages)).migrated == pages)
        #expect(try pattern.gpuMismatches(space, a, pages: pages).isEmpty)
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
        #expect(gpu.counters[.cpuFaults] > 0, "the read-back went through CPU faults")
    }

    @Test func aDeviceWhoseVRAMDirectoryIsMissingFailsToCreate() throws {
        let memory = try makeMemory(mib: 16)
        var c = Device.Configuration(name: "nodir", vramSize: 4 << 20, backend: .memcpy)
        c.vramLayout.directory = "/nonexistent/vram"
        #expect(throws: DeviceError.dma(.system(.noSuchFileOrDirectory, operation: "open(/nonexistent/vram, O_TMPFILE) for a VRAM file"))) {
            try Device(memory: memory, configuration: c)
        }
    }
}
