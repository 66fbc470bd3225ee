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
        #expect(throws: DeviceError.outOfMemory) {
            try Device(memory: memory, configuration: .init(vramSize: 1 << 40, backend: .memcpy))
        }
        #expect(throws: DeviceError.outOfMemory) {
            try Device(memory: memory, configuration: .init(vramSize: (1 << 12) * 4096 + (2 << 20), backend: .memcpy))
        }
        #expect(throws: MirrorError.self) {
            try MirrorDevice(memory: memory, configuration: .init(vramSize: 1 << 40, chunkSize: 1 << 30))
        }
        #expect(ContinuousClock.now - t0 < .seconds(30))   // a bound on a hang, not a speed target
        _ = try Device(memory: memory, configuration: .init(vramSize: 8 << 20, backend: .memcpy))
    }
}
