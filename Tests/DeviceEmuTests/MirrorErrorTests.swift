import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// `MirrorError.invalidArgument`, and the `DeviceError.invalidArgument`s that had no reason
/// yet, say which check failed; a memory-manager EINVAL keeps its reason through the
/// device's and the mirror's errors. The reasons take no part in `==` or in matching.
@Suite struct MirrorErrorTests {
    /// The description of what `body` throws, or nil.
    private func thrown<E: Error>(_ body: () throws(E) -> Void) -> String? {
        do { try body() } catch { return "\(error)" }
        return nil
    }

    private func hex(_ a: UInt64) -> String { "0x" + String(a, radix: 16) }

    /// `npages << 12` that wraps to exactly 0 bytes (npages = 2^52) leaves `end == address`:
    /// refused as a wrap, never taken as an empty range that succeeds.
    @Test func aPageCountThatWrapsToZeroBytesIsRefused() throws {
        let memory = try makeMemory(mib: 64)
        let device = try MirrorDevice(memory: memory, configuration: .init(vramSize: 4 << 20, chunkSize: 4 << 20))
        defer { device.shutdown() }
        let mm = AddressSpace(memory: memory)
        let mirror = try device.open(mm)
        let a = try mm.mmap(length: 4 * pageSize)
        let n = 1 << 52
        #expect(thrown { () throws(MirrorError) in _ = try mirror.setFlags(a, npages: n) }
                == "Invalid argument (22): npages \(n) at \(hex(a)) wraps around the address space")
        #expect(thrown { () throws(MirrorError) in _ = try mirror.checkExclusive(a, npages: n) }
                == "Invalid argument (22): npages \(n) at \(hex(a)) wraps around the address space")
        mirror.close()
    }

    @Test func mirrorCommandsSayWhichArgumentWasWrong() throws {
        let memory = try makeMemory(mib: 64)
        let device = try MirrorDevice(memory: memory, configuration: .init(vramSize: 4 << 20, chunkSize: 4 << 20))
        defer { device.shutdown() }
        let mm = AddressSpace(memory: memory)
        let mirror = try device.open(mm)
        let a = try mm.mmap(length: 4 * pageSize)
        let page = UInt64(pageSize)
        let e = "Invalid argument (22): "
        try withUnsafeTemporaryAllocation(byteCount: 4 * pageSize, alignment: 8) { buffer in
            #expect(thrown { () throws(MirrorError) in _ = try mirror.read(a + 8, npages: 1, into: buffer) }
                    == e + "address \(hex(a + 8)) is not page-aligned")
            #expect(thrown { () throws(MirrorError) in _ = try mirror.read(a, npages: 0, into: buffer) } == e + "npages 0 is not positive")
            #expect(thrown { () throws(MirrorError) in _ = try mirror.snapshot(.max - page + 1, npages: 1) }
                    == e + "npages 1 at \(hex(.max - page + 1)) wraps around the address space")
            #expect(thrown { () throws(MirrorError) in _ = try mirror.mmap(length: 0) } == e + "length 0 is not positive")
            // A page with no VMA: the migration's own check, then setup's reason through MirrorError(HostMMError).
            #expect(thrown { () throws(MirrorError) in _ = try mirror.migrateToDevice(a + 4 * page, npages: 1) }
                    == e + "\(hex(a + 4 * page)) is not in a readable VMA")
            #expect(try mirror.migrateToDevice(a, npages: 4).cpages == 4)
            // A readable VM_IO mapping passes the mirror's check; setup's reason comes through
            // MirrorError(HostMMError).
            let io = try mm.mmap(.special(.io), length: pageSize)
            let vma = try #require(mm.mmapLock.withReadLock { mm.findVMA(io) })
            #expect(thrown { () throws(MirrorError) in _ = try mirror.migrateToDevice(io, npages: 1) }
                    == e + "\(vma) is VM_IO: migration refuses hugetlb, DAX and VM_SPECIAL VMAs")
        }
        mirror.close()
        #expect(thrown { () throws(MirrorError) in _ = try mirror.snapshot(a, npages: 1) } == e + "the mirror is closed")
        #expect(thrown { () throws(MirrorError) in _ = try MirrorDevice(memory: memory, configuration: .init(vramSize: 0)) }
                == e + "vramSize 0 and chunkSize \(MirrorDevice.Configuration().chunkSize) must be positive")

        let error = MirrorError.invalidArgument(reason: "why")
        #expect(error == .invalidArgument && error.errno == .invalidArgument && error.reason == "why")
        #expect("\(error)" == "Invalid argument (22): why" && "\(MirrorError.invalidArgument)" == "Invalid argument (22)")
        #expect(MirrorError.invalidArgument.reason == nil && MirrorError.fault.reason == nil && error != .fault)
        var matched = false
        do throws(MirrorError) { throw error } catch .invalidArgument { matched = true } catch {}
        #expect(matched)
        // A memory-manager EINVAL keeps its reason in the device's wrapper too.
        let host = HostMMError.invalidArgument(reason: "start 0x1001 is not page-aligned")
        #expect("\(DeviceError.hostMM(host))" == "memory manager: invalid argument (EINVAL): start 0x1001 is not page-aligned")
        #expect(DeviceError.hostMM(host) == .hostMM(.invalidArgument) && DeviceError.hostMM(host) != .invalidArgument)
    }

    @Test func probePolicyAndLinkSettingsSayWhichWasWrong() throws {
        let e = "invalid argument: "
        let probe = StepProbe()
        #expect(thrown { () throws(DeviceError) in try probe.arm(at: .init(.setupEnd, occurrence: 0)) {} } == e + "occurrence 0 is below 1")
        #expect(thrown { () throws(DeviceError) in try probe.arm(at: .init(.setupEnd), hold: .milliseconds(-1)) {} }
                == e + "hold -0.001 seconds is negative")
        var thrash = ThrashingMitigationPolicy.Parameters()
        thrash.threshold = 0
        #expect(thrown { () throws(DeviceError) in _ = try ThrashingMitigationPolicy(thrash) } == e + "thrashing parameters: threshold 0 is below 1")
        var prefetch = SequentialPrefetchPolicy.Parameters()
        prefetch.maxPages = 0
        #expect(thrown { () throws(DeviceError) in _ = try SequentialPrefetchPolicy(prefetch) }
                == e + "prefetch parameters: maxPages 0 is below initialPages 1")
        #expect(!prefetch.isValid && thrash.problem != nil && SequentialPrefetchPolicy.Parameters().problem == nil)
        let memory = try makeMemory(mib: 64)
        var c = Device.Configuration(vramSize: 4 << 20, backend: defaultTestBackend)
        c.remoteAccessLink = LinkModel(bytesPerSecond: 0, latency: .zero)
        #expect(thrown { () throws(DeviceError) in _ = try Device(memory: memory, configuration: c) }
                == e + "remote access link: bytesPerSecond 0.0 is not a positive finite number")
        c.remoteAccessLink = LinkModel(bytesPerSecond: 1e9, latency: .seconds(-1))
        #expect(thrown { () throws(DeviceError) in _ = try Device(memory: memory, configuration: c) }
                == e + "remote access link: latency -1.0 seconds is negative")
    }
}
