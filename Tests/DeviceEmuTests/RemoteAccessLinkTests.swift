import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// `Configuration.remoteAccessLink`: GPU accesses that reach system memory cross the
/// modelled bus; VRAM accesses do not. Counted, never timed.
@Suite struct RemoteAccessLinkTests {
    private func device(_ memory: PhysicalMemory, link: LinkModel?, gpuFault: MigrationPolicy.GPUFaultResolution) throws -> Device {
        var p = MigrationPolicy()
        p.gpuFault = gpuFault
        var c = Device.Configuration(vramSize: 8 << 20, backend: defaultTestBackend, policy: p)
        c.remoteAccessLink = link
        return try Device(memory: memory, configuration: c)
    }

    @Test func remoteAccessesCrossTheLinkAndWaitWhenItIsSlow() throws {
        let memory = try makeMemory(mib: 64)
        // 1 MB/s: a 4 KiB access holds the link for 4 ms, far past the 200 µs of slack.
        let gpu = try device(memory, link: LinkModel(gigabytesPerSecond: 0.001, latency: .zero),
                             gpuFault: .mapSystemMemory(pages: 8))
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 8, seed: 95)
        let space = try gpu.bind(mm)
        #expect(try pattern.gpuMismatches(space, a, pages: 8).isEmpty)
        #expect(gpu.counters[.remoteLinkBytes] == 8 * pageSize && gpu.counters[.remoteLinkWaits] == 8)
        try space.write(at: a + 100, bytes: [1, 2, 3])
        // 3 bytes hold the other direction 3 µs: no wait.
        #expect(gpu.counters[.remoteLinkBytes] == 8 * pageSize + 3 && gpu.counters[.remoteLinkWaits] == 8)
        // An atomic takes the page device-exclusive and still crosses the bus.
        _ = try space.atomicAdd(at: a + UInt64(pageSize), 1)
        #expect(gpu.counters[.remoteLinkBytes] == 8 * pageSize + 3 + 8)
        #expect(try mm.read(at: a + 100, count: 3) == [1, 2, 3])
    }

    @Test func vramAccessesAndAFastLinkCostNoWait() throws {
        let memory = try makeMemory(mib: 64)
        let migrating = try device(memory, link: .pcie4, gpuFault: .migrateToVRAM(pages: 8))
        defer { try? migrating.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 8, seed: 96)
        let space = try migrating.bind(mm)
        #expect(try pattern.gpuMismatches(space, a, pages: 8).isEmpty)
        #expect(migrating.residentPages(mm, a, pages: 8) == 8)
        #expect(migrating.counters[.remoteLinkBytes] == 0)
        migrating.unbind(mm)

        // NVLink: 8 accesses hold the link ~8 µs in all, inside the slack.
        let mapping = try device(memory, link: .nvlink, gpuFault: .mapSystemMemory(pages: 8))
        defer { try? mapping.shutdown() }
        let (mm2, b, pattern2) = try makeProcess(memory, pages: 8, seed: 97)
        let view = try mapping.bind(mm2)
        #expect(try pattern2.gpuMismatches(view, b, pages: 8).isEmpty)
        #expect(mapping.counters[.remoteLinkBytes] == 8 * pageSize && mapping.counters[.remoteLinkWaits] == 0)
    }

    @Test func anUnusableLinkIsRefused() throws {
        let memory = try makeMemory(mib: 64)
        for link in [LinkModel(bytesPerSecond: 0, latency: .zero), LinkModel(bytesPerSecond: .infinity, latency: .zero),
                     LinkModel(bytesPerSecond: 1e9, latency: .microseconds(-1))] {
            #expect(throws: DeviceError.invalidArgument) {
                _ = try device(memory, link: link, gpuFault: .mapSystemMemory(pages: 1))
            }
        }
    }
}
