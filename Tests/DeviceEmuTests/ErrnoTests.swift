import DMAEngine
import DeviceEmu
import HostMM
import SystemPackage
import Testing

/// Every error of the public API reaches a driver author as an errno, without @testable.
@Suite struct ErrnoTests {
    /// A driver of its own on HostMM (the guide's section 11) gets the errno of HostMM's
    /// errors from DeviceEmu, as `DeviceError.errno` reports them when wrapped.
    @Test func hostMMErrorsHaveTheirErrno() {
        #expect(HostMMError.invalidArgument.errno == .invalidArgument)
        #expect(HostMMError.busy.errno == .resourceBusy)
        #expect(HostMMError.outOfMemory.errno == .noMemory)
        #expect(HostMMError.busError(address: 0x1000).errno == .badAddress)
        #expect(DeviceError.hostMM(.busy).errno == HostMMError.busy.errno)
    }

    /// An EINVAL says what was wrong: a driver author got "invalid argument" alone for an
    /// unaligned range, a bad VRAM size or a bad policy, and had to guess. The reason does
    /// not take part in `==` or in matching `.invalidArgument`.
    @Test func invalidArgumentSaysWhatWasWrong() throws {
        let memory = try makeMemory(mib: 64)
        func reason(_ body: () throws -> Void) -> String? {
            do { try body() } catch DeviceError.invalidArgument(let why) { return why } catch { return "other: \(error)" }
            return nil
        }
        #expect(reason { _ = try Device(memory: memory, configuration: .init(vramSize: 3 << 19)) }?
            .contains("VRAM size 1572864 must be a positive multiple of chunkSize 2097152") == true)
        var bad = MigrationPolicy()
        bad.pipelineDepth = 9
        #expect(reason { _ = try Device(memory: memory, configuration: .init(vramSize: 4 << 20, policy: bad)) }
                == "policy: pipelineDepth 9 is outside 1...8")
        let gpu = try makeDevice(memory, vramMiB: 4)
        defer { try? gpu.shutdown() }
        bad = gpu.policy
        bad.batchPages = 0
        #expect(reason { try gpu.setPolicy(bad) } == "policy: batchPages 0 is outside 1...4096 (the engine's maxBatch)")
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        #expect(reason { _ = try gpu.migrateToDevice(mm, range: a + 1 ..< a + 4096) }
                == "range 0x\(String(a + 1, radix: 16))..<0x\(String(a + 4096, radix: 16)) is not page-aligned (4096)")
        #expect(reason { _ = try gpu.migrateRangeToRAM(mm, range: a ..< a) }?.hasPrefix("empty range") == true)
        let space = try gpu.bind(mm)
        #expect(reason { _ = try space.atomicAdd(at: a + 4, 1) } == "atomic at 0x\(String(a + 4, radix: 16)) is not 8-byte aligned")
        #expect(reason { _ = try space.read(at: a, count: -1) } == "negative length -1")

        let error = DeviceError.invalidArgument(reason: "why")
        #expect(error == .invalidArgument && error.errno == .invalidArgument && error.reason == "why")
        #expect("\(error)" == "invalid argument: why" && "\(DeviceError.invalidArgument)" == "invalid argument")
        #expect(DeviceError.invalidArgument.reason == nil && DeviceError.busy.reason == nil)
        #expect(DeviceError.fault(address: 1) != .fault(address: 2) && DeviceError.busy != .suspended)
        #expect(DeviceError.hostMM(.busy) == .hostMM(.busy) && DeviceError.hostMM(.busy) != .dma(.timedOut))
    }
}
