import DMAEngine
import DeviceEmu
import Foundation
import HostMM
import Testing

/// Seeded random bad input against DeviceEmu's public API — `Device` (migrations, GPU
/// accesses, binding, policies, lifecycle, its `DeviceMemory` and pgmap callbacks) and
/// `MirrorDevice` (every dmirror command): each call returns a typed error or succeeds,
/// nothing traps, and after every call HostMM's, the device's and the mirror device's
/// invariants hold (`checkInvariants`). Checked mode is on; bounded per seed.
@Suite(.timeLimit(.minutes(2))) struct BadInputFuzzTests {
    @Test(arguments: [1, 2, 3] as [UInt64])
    func randomBadCallsThrowTypedErrorsAndKeepInvariants(seed: UInt64) throws {
        let fuzz = try DeviceFuzz(seed: seed)
        for step in 0..<250 {
            let call = fuzz.step()
            let problems = fuzz.invariants()
            if !problems.isEmpty {
                Issue.record("seed \(seed) step \(step) after \(call): \(problems.prefix(5))")
                return
            }
        }
        fuzz.finish()
        #expect(fuzz.invariants().isEmpty)
        #expect(fuzz.errors > 60 && fuzz.successes > 30, "errors \(fuzz.errors), successes \(fuzz.successes)")
    }

    @Test func badDeviceConfigurationsAreRefusedWithoutTrapping() throws {
        let memory = try PhysicalMemory(ramBytes: 16 << 20, maxDevicePages: 1 << 14, checked: .on)
        var bad: [Device.Configuration] = []
        let mib = 1 << 20, gib = 1 << 30
        let sizes: [(Int, Int, Int)] = [(0, 2 * mib, gib), (-4096, 2 * mib, gib), (3 * mib, 2 * mib, gib),
                                         (4 * mib, 0, gib), (4 * mib, 4095, gib), (4 * mib, 2 * mib, mib),
                                         (Int.max, 2 * mib, gib), (4 * mib, -2 * mib, gib), (1 << 40, 2 * mib, gib)]
        for (vram, chunk, pool) in sizes {
            var c = Device.Configuration(vramSize: vram, backend: .memcpy)
            c.chunkSize = chunk
            c.poolSize = pool
            bad.append(c)
        }
        for p in DeviceFuzz.badPolicies() {
            bad.append(Device.Configuration(vramSize: 2 << 20, backend: .memcpy, policy: p))
        }
        bad.append(Device.Configuration(vramSize: 2 << 20, backend: .mappedWorkers(threads: 0)))
        for c in bad {
            #expect(throws: DeviceError.self) { try Device(memory: memory, configuration: c) }
        }
        for c in [MirrorDevice.Configuration(vramSize: 0), MirrorDevice.Configuration(vramSize: -1),
                  MirrorDevice.Configuration(vramSize: 3 << 20, chunkSize: 2 << 20),
                  MirrorDevice.Configuration(vramSize: 4 << 20, chunkSize: 0),
                  MirrorDevice.Configuration(vramSize: Int.max, chunkSize: 1 << 20)] {
            #expect(throws: MirrorError.self) { try MirrorDevice(memory: memory, configuration: c) }
        }
        #expect(memory.checkInvariants(addressSpaces: []).isEmpty)
    }
}

/// The fuzzer's machine: one address space, a nouveau-like device bound to it, a dmirror
/// device with one open mirror, and the random choices.
final class DeviceFuzz {
    let memory: PhysicalMemory
    let gpu: Device
    let mirrorDevice: MirrorDevice
    let mm: AddressSpace
    var child: AddressSpace?
    var space: GPUAddressSpace
    var mirror: Mirror
    var rng: SplitMix64
    var errors = 0, successes = 0
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 4096, alignment: 4096)

    init(seed: UInt64) throws {
        rng = SplitMix64(seed: seed)
        memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        gpu = try Device(memory: memory, configuration: .init(name: "fuzz", vramSize: 2 << 20,
                                                               backend: .faultInjecting(FaultPlan(seed: seed, rules: [.init(.rate(0.05), .fail(.ioError))]), wrapping: .memcpy)))
        mirrorDevice = try MirrorDevice(memory: memory, configuration: .init(vramSize: 2 << 20, chunkSize: 2 << 20))
        mm = AddressSpace(memory: memory)
        for _ in 0..<3 {
            let a = try mm.mmap(length: 128 * pageSize)
            try mm.touch(a, length: 64 * pageSize, write: true)
        }
        space = try gpu.bind(mm)
        mirror = try mirrorDevice.open(mm)
    }

    deinit { buffer.deallocate() }

    static func badPolicies() -> [MigrationPolicy] {
        var out: [MigrationPolicy] = []
        for change: (inout MigrationPolicy) -> Void in [
            { $0.batchPages = 0 }, { $0.batchPages = -1 }, { $0.batchPages = 1 << 30 }, { $0.pipelineDepth = 0 },
            { $0.pipelineDepth = 9 }, { $0.cpuFaultGranularity = .faultAround(pages: 0) },
            { $0.gpuFault = .migrateToVRAM(pages: 0) }, { $0.gpuFault = .mapSystemMemory(pages: -3) },
            { $0.committedCopyRetries = -1 }, { $0.minimumResidency = .seconds(-1) },
        ] {
            var p = MigrationPolicy()
            change(&p)
            out.append(p)
        }
        return out
    }

    func pick<T>(_ xs: [T]) -> T { xs[Int(rng.next() % UInt64(xs.count))] }
    func chance(_ n: Int) -> Bool { rng.next() % UInt64(n) == 0 }

    func address() -> UInt64 {
        var options: [UInt64] = [0, 1, 4096, UInt64.max, UInt64.max - 4095, 1 << 47, (1 << 47) - 4096, 1 << 63, 7]
        if let v = mm.vmaList.randomElement(using: &rng) {
            options += [v.start, v.start + 4096, v.start + 8, v.start + 17, v.end, v.end - 4096, v.end - 8, v.start &- 4096, v.start, v.start]
        }
        return pick(options)
    }

    func span() -> Range<UInt64> {
        let a = address()
        let end = pick([a, a &+ 4096, a &+ 64 * 4096, a &+ 1, address(), a &+ (1 << 40), UInt64.max])
        return a <= end ? a ..< end : end ..< a
    }

    func npages() -> Int { pick([0, 1, 2, 16, 64, -1, Int.max, 1 << 40]) }

    func pfn() -> PFN {
        let chunk = gpu.vram.chunks.first?.pagemap.firstPFN ?? PFN(0)
        return pick([PFN(0), PFN(1), chunk, chunk + 511, chunk + 512, PFN(rawValue: UInt64.max), PFN(memory.maxPFN)])
    }

    func invariants() -> [String] {
        memory.checkInvariants(addressSpaces: [mm] + (child.map { [$0] } ?? [])) + gpu.checkInvariants()
            + mirrorDevice.checkInvariants()
    }

    /// Makes one random call; returns its description.
    func step() -> String {
        let calls: [(String, () throws -> Void)] = [
            ("migrateToDevice", { [self] in try gpu.migrateToDevice(mm, range: span()) }),
            ("migrateRangeToRAM", { [self] in try gpu.migrateRangeToRAM(mm, range: span()) }),
            ("gpu read", { [self] in
                try space.read(at: address(), into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<pick([0, 1, 4096, 8193, 64 * 4096])]))
            }),
            ("gpu read(count:)", { [self] in _ = try space.read(at: address(), count: pick([-1, 0, 9])) }),
            ("gpu write", { [self] in try space.write(at: address(), bytes: [UInt8](repeating: 3, count: pick([0, 1, 4097]))) }),
            ("gpu atomics", { [self] in
                _ = try space.atomicAdd(at: address(), 1)
                _ = try space.atomicCompareExchange(at: address(), expected: 0, desired: 1)
            }),
            ("cpu read", { [self] in try mm.read(at: address(), into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<4096])) }),
            ("setPolicy", { [self] in try gpu.setPolicy(chance(3) ? MigrationPolicy() : pick(Self.badPolicies())) }),
            ("bind/unbind", { [self] in
                if let c = child {
                    gpu.unbind(c)
                    c.exit()
                    child = nil
                    _ = try gpu.bind(c)                       // an exited address space
                } else {
                    let c = try mm.fork()
                    child = c
                    _ = try gpu.bind(c)
                }
            }),
            ("suspend/resume", { [self] in
                if chance(2) { try gpu.suspend() }
                try gpu.resume()
            }),
            ("evictAll", { [self] in _ = gpu.evictAll() }),
            ("vram free/alloc", { [self] in
                let p = pfn()
                gpu.vram.freePage(p)                          // foreign, free or in-use pages: ignored and counted
                if let chunk = gpu.vram.chunks.first { gpu.pageFree(p, pagemap: chunk.pagemap) }
                if let page = gpu.vram.allocPage() { memory.unlockPage(page); memory.putPage(page) }
            }),
            ("munmap/mmap", { [self] in
                try mm.munmap(address(), length: pick([0, 4096, 64 * 4096, -1]))
                if mm.vmaList.count < 3 { _ = try mm.mmap(length: 128 * pageSize) }
            }),
            ("mirror read/write", { [self] in
                let n = npages()
                let b = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<pick([0, 4096, 64 * 4096])])
                if chance(2) { _ = try mirror.read(address(), npages: n, into: b) } else { _ = try mirror.write(address(), npages: n, from: UnsafeRawBufferPointer(b)) }
            }),
            ("mirror migrate", { [self] in
                if chance(2) { _ = try mirror.migrateToDevice(address(), npages: npages()) } else { _ = try mirror.migrateToSystem(address(), npages: npages()) }
            }),
            ("mirror snapshot", { [self] in _ = try mirror.snapshot(address(), npages: pick([0, 1, 16, -1, 1 << 40])) }),
            ("mirror exclusive", { [self] in
                _ = try mirror.makeExclusive(address(), npages: npages())
                _ = try mirror.checkExclusive(address(), npages: npages())
            }),
            ("mirror release/flags", { [self] in
                _ = try mirror.release(address(), npages: npages())
                _ = try mirror.setFlags(MirrorFlags(rawValue: pick([0, 1, 0xFF])))
            }),
            ("mirror reopen", { [self] in
                mirror.close()
                _ = try? mirror.read(address(), npages: 1, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<4096]))
                mirror = try mirrorDevice.open(mm)
            }),
            ("mirror mmap", { [self] in _ = try mirror.mmap(length: pick([0, -1, 4096, Int.max])) }),
        ]
        let (name, call) = pick(calls)
        do { try call(); successes += 1 } catch { errors += 1 }
        return name
    }

    func finish() {
        if let c = child {
            gpu.unbind(c)
            c.exit()
            child = nil
        }
        try? gpu.resume()
        mirror.close()
    }
}
