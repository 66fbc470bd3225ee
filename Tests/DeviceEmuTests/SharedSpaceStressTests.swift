import DMAEngine
import DeviceEmu
import Foundation
import HostMM
import NIOConcurrencyHelpers
import Synchronization
import Testing

/// Threads sharing one address space and one device page table — what the torture run
/// (one process per thread) does not do: each worker reads, writes and atomically adds to
/// its own pages by CPU and GPU, while other threads migrate the whole range both ways,
/// evict all VRAM, fork, and map, protect and unmap a neighbouring region the GPU also
/// touches. Copies fail and are delayed at random, VRAM is half the range, checked mode
/// is on. Bounded in time and count; every page is verified against a shadow at the end.
@Suite(.timeLimit(.minutes(1))) struct SharedSpaceStressTests {
    static let workers = 3
    static let pagesPerWorker = 256

    /// The run's stop flag, deadline and problems seen.
    final class State: Sendable {
        let stop = Atomic<Bool>(false)
        let failedAccesses = Atomic<Int>(0)
        let problems = NIOLockedValueBox<[String]>([])
        let deadline: ContinuousClock.Instant
        init(seconds: Int) { deadline = ContinuousClock.now + .seconds(seconds) }
        @Sendable func report(_ s: String) { problems.withLockedValue { if $0.count < 20 { $0.append(s) } } }
        @Sendable func running(_ n: Int, _ limit: Int) -> Bool {
            n < limit && !stop.load(ordering: .relaxed) && ContinuousClock.now < deadline
        }
    }

    /// What a failed copy on the page a fault needs looks like: SIGBUS on the CPU, no
    /// readable mapping on the GPU.
    static func isCopyFailure(_ error: any Error) -> Bool {
        if case .fault? = error as? DeviceError { return true }
        if case .busError? = error as? HostMMError { return true }
        return false
    }

    /// `body`, tried again (at most 100 times) while an injected copy failure makes it fail.
    static func retrying(_ body: () throws -> [UInt8]) throws -> [UInt8] {
        for _ in 0..<100 { if let r = try? body() { return r } }
        return try body()
    }

    @Test func workersSharingOneSpaceUnderMigrationsForksAndUnmaps() throws {
        let memory = try PhysicalMemory(ramBytes: 96 << 20, maxDevicePages: 1 << 17, checked: .on)
        var policy = MigrationPolicy()
        policy.batchPages = 32
        policy.gpuFault = .migrateToVRAM(pages: 8)
        policy.cpuFaultGranularity = .faultAround(pages: 4)
        let backend = CopyBackendKind.faultInjecting(
            FaultPlan(seed: 3, rules: [.init(.rate(0.01), .fail(.ioError)), .init(.rate(0.02), .delay(.microseconds(300)))]),
            wrapping: .ioUring)
        let gpu = try makeDevice(memory, vramMiB: 2, backend: backend, policy: policy)
        let mm = AddressSpace(memory: memory)
        let pages = Self.workers * Self.pagesPerWorker
        let a = try mm.mmap(length: pages * pageSize)
        try mm.touch(a, length: pages * pageSize, write: true)
        let side = try mm.mmap(length: 16 * pageSize)
        let space = try gpu.bind(mm)

        let state = State(seconds: 3)
        let report = state.report, running = state.running
        let shadows = (0..<Self.workers).map { _ in NIOLockedValueBox([UInt64](repeating: 0, count: Self.pagesPerWorker)) }
        let workers = (0..<Self.workers).map { t in
            TestThread {
                var rng = SystemRandomNumberGenerator()
                var shadow = [UInt64](repeating: 0, count: Self.pagesPerWorker)
                var n = 0
                while running(n, 20_000) {
                    n += 1
                    let p = Int.random(in: 0..<Self.pagesPerWorker, using: &rng)
                    let address = a + UInt64((t * Self.pagesPerWorker + p) * pageSize)
                    do {
                        switch Int.random(in: 0..<5, using: &rng) {
                        case 0:
                            let v = UInt64(t) << 48 | UInt64(n)
                            try mm.write(at: address, bytes: withUnsafeBytes(of: v) { Array($0) })
                            shadow[p] = v
                        case 1:
                            let v = UInt64(t) << 48 | UInt64(n) | 1 << 40
                            try space.write(at: address, bytes: withUnsafeBytes(of: v) { Array($0) })
                            shadow[p] = v
                        case 2:
                            let old = try space.atomicAdd(at: address, 1)
                            if old != shadow[p] { report("t\(t) p\(p): atomic saw \(old), expected \(shadow[p])") }
                            shadow[p] &+= 1
                        case 3:
                            let v = try mm.read(at: address, count: 8).withUnsafeBytes { $0.load(as: UInt64.self) }
                            if v != shadow[p] { report("t\(t) p\(p): CPU read \(v), expected \(shadow[p])") }
                        default:
                            let v = try space.read(at: address, count: 8).withUnsafeBytes { $0.load(as: UInt64.self) }
                            if v != shadow[p] { report("t\(t) p\(p): GPU read \(v), expected \(shadow[p])") }
                        }
                    } catch where Self.isCopyFailure(error) {
                        // An injected copy failure on the page a fault needs: SIGBUS for the
                        // CPU (nouveau's answer), no mapping for the GPU. Nothing happened.
                        state.failedAccesses.add(1, ordering: .relaxed)
                    } catch {
                        report("t\(t) p\(p): \(error)")
                    }
                }
                shadows[t].withLockedValue { $0 = shadow }
            }
        }
        let migrator = TestThread {
            var n = 0
            while running(n, 2_000) {
                n += 1
                let first = Int.random(in: 0..<pages - 64), count = Int.random(in: 1...64)
                let r = range(a + UInt64(first * pageSize), pages: count)
                do {
                    if n % 3 == 2 { try gpu.migrateRangeToRAM(mm, range: r) } else { try gpu.migrateToDevice(mm, range: r) }
                } catch { report("migrate: \(error)") }
                if n % 50 == 0 { gpu.evictAll() }
            }
        }
        let churn = TestThread {
            var n = 0
            while running(n, 2_000) {
                n += 1
                do {
                    switch n % 5 {
                    case 0: try mm.munmap(side, length: 16 * pageSize)
                    case 1: _ = try mm.mmap(length: 16 * pageSize, at: side)
                    case 2: try mm.mprotect(side, length: 16 * pageSize, protection: .read)
                    case 3: try mm.mprotect(side, length: 16 * pageSize, protection: .readWrite)
                    default:
                        let child = try mm.fork()
                        _ = try? child.read(at: a, count: 8)
                        child.exit()
                    }
                } catch { report("churn \(n % 5): \(error)") }
                // The GPU on the churned region: any outcome but a wrong value or a trap is fine.
                let address = side + UInt64((n % 16) * pageSize)
                _ = try? space.atomicAdd(at: address, 1)
                _ = try? space.read(at: address, count: 8)
            }
        }
        let joined = workers.allSatisfy { $0.join(seconds: 40) }
        state.stop.store(true, ordering: .relaxed)
        #expect(joined && migrator.join(seconds: 10) && churn.join(seconds: 10), "a thread is stuck")
        guard joined else { return }
        let seen = state.problems.withLockedValue { $0 }
        #expect(seen.isEmpty, "\(seen)")

        for t in 0..<Self.workers {
            let shadow = shadows[t].withLockedValue { $0 }
            for p in 0..<Self.pagesPerWorker {
                let address = a + UInt64((t * Self.pagesPerWorker + p) * pageSize)
                let g = try Self.retrying { try space.read(at: address, count: 8) }.withUnsafeBytes { $0.load(as: UInt64.self) }
                let c = try Self.retrying { try mm.read(at: address, count: 8) }.withUnsafeBytes { $0.load(as: UInt64.self) }
                if g != shadow[p] || c != shadow[p] { Issue.record("t\(t) p\(p): GPU \(g) CPU \(c), expected \(shadow[p])") }
            }
        }
        // Not vacuous: every path ran.
        let c = gpu.counters
        #expect(c[.gpuFaults] > 0 && c[.cpuFaults] > 0 && c[.pagesToDevice] > 0 && c[.pagesEvicted] > 0 && c[.invalidations] > 0)
        #expect(gpu.checkInvariants().isEmpty, "\(gpu.checkInvariants().prefix(3))")
        #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations.prefix(3) ?? [])")
        try gpu.shutdown()
        #expect(gpu.vram.strayFreeCount == 0)
        #expect(memory.diagnostics.refcountUnderflowCount == 0 && memory.diagnostics.unlocksOfUnlockedPages == 0)
    }
}
