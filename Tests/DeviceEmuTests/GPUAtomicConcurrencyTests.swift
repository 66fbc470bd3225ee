import DMAEngine
import Glibc
import DeviceEmu
import HostMM
import Synchronization
import Testing

/// GPU atomics from several threads at once on a range partly in VRAM and partly in
/// System RAM, while a CPU thread reads (pulling VRAM pages back, revoking device-exclusive
/// ones) and another migrates halves of the range back and forth. An atomic is atomic
/// against every other GPU atomic and against migration of its page: no update is lost.
@Suite(.timeLimit(.minutes(1))) struct GPUAtomicConcurrencyTests {
    static let threads = 4
    static let rounds = 100
    static let pages = 32
    /// Word 0 of each page: every thread adds to it. Word 1: every thread CAS-increments it.
    /// Word 2 + t: thread t's own.
    static let sharedWord: UInt64 = 0, casWord: UInt64 = 8

    @Test(arguments: [MigrationPolicy.GPUFaultResolution.mapSystemMemory(pages: 1), .migrateToVRAM(pages: 8)])
    func atomicsLoseNoUpdateUnderCPUReadsAndMigrations(resolution: MigrationPolicy.GPUFaultResolution) throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.gpuFault = resolution
        policy.batchPages = 16
        let gpu = try makeDevice(memory, vramMiB: 4, backend: .ioUring, policy: policy)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let pages = Self.pages
        let a = try mm.mmap(length: pages * pageSize)
        try mm.touch(a, length: pages * pageSize, write: true)
        let space = try gpu.bind(mm)
        let half = range(a, pages: pages / 2)
        #expect(try gpu.migrateToDevice(mm, range: half).migrated == pages / 2)   // the rest stays in RAM

        let failures = Atomic<Int>(0)
        let stop = Atomic<Bool>(false)
        let workers = (0..<Self.threads).map { t in
            TestThread {
                for _ in 0..<Self.rounds {
                    for p in 0..<pages {
                        let page = a + UInt64(p * pageSize)
                        do {
                            _ = try space.atomicAdd(at: page + Self.sharedWord, 1)
                            _ = try space.atomicAdd(at: page + 16 + UInt64(8 * t), 1)
                            var expected: UInt64 = 0
                            while true {
                                let r = try space.atomicCompareExchange(at: page + Self.casWord, expected: expected,
                                                                        desired: expected + 1)
                                if r.exchanged { break }
                                expected = r.original
                            }
                        } catch { failures.add(1, ordering: .relaxed) }
                    }
                }
            }
        }
        // The CPU reads whole pages (faulting VRAM pages back, restoring exclusive ones)
        // and checks that no counter ever goes backwards.
        // Its first read is of page 0, in VRAM until the migrator (which waits for that read)
        // moves it: at least one CPU fault, however the threads are scheduled.
        let readerStarted = Atomic<Bool>(false)
        let reader = TestThread {
            var seen = [UInt64](repeating: 0, count: pages)
            var n = 0
            while n == 0 || (!stop.load(ordering: .relaxed) && n < 4_000) {
                let p = n % pages
                n += 1
                do {
                    let bytes = try mm.read(at: a + UInt64(p * pageSize), count: 8)
                    let value = bytes.withUnsafeBytes { $0.load(as: UInt64.self) }
                    if value < seen[p] { failures.add(1, ordering: .relaxed) }
                    seen[p] = value
                } catch { failures.add(1, ordering: .relaxed) }
                readerStarted.store(true, ordering: .releasing)
            }
        }
        // Halves of the range go to VRAM and back to RAM, under the atomics.
        let migrator = TestThread {
            while !readerStarted.load(ordering: .acquiring) { usleep(100) }
            var n = 0
            while !stop.load(ordering: .relaxed) && n < 200 {
                n += 1
                let part = range(a + UInt64((n % 2) * pages / 2 * pageSize), pages: pages / 2)
                do {
                    if n % 4 < 2 { try gpu.migrateToDevice(mm, range: part) } else { try gpu.migrateRangeToRAM(mm, range: part) }
                } catch { failures.add(1, ordering: .relaxed) }
            }
        }
        let joined = workers.allSatisfy { $0.join(seconds: 45) }
        stop.store(true, ordering: .relaxed)
        let othersJoined = reader.join(seconds: 10) && migrator.join(seconds: 10)
        #expect(joined && othersJoined, "a thread is stuck")
        guard joined && othersJoined else { return }
        #expect(failures.load(ordering: .relaxed) == 0)

        let total = UInt64(Self.threads * Self.rounds)
        let own = [UInt64](repeating: UInt64(Self.rounds), count: Self.threads)
        var wrong: [Int] = []
        for p in 0..<pages {
            let page = a + UInt64(p * pageSize)
            let gpuBytes = try space.read(at: page, count: 16 + 8 * Self.threads)
            let cpuBytes = try mm.read(at: page, count: 16 + 8 * Self.threads)
            let words = cpuBytes.withUnsafeBytes { Array($0.bindMemory(to: UInt64.self)) }
            if gpuBytes != cpuBytes || words[0] != total || words[1] != total || Array(words[2...]) != own {
                wrong.append(p)
                if wrong.count == 1 { Issue.record("page \(p): words \(words), expected \(total), \(total), \(own)") }
            }
        }
        #expect(wrong.isEmpty, "pages with lost updates: \(wrong)")
        // Every page that went to VRAM came back, was evicted, or is still there.
        let c = gpu.counters
        #expect(c[.pagesToDevice] == c[.pagesToRAM] + c[.pagesEvicted] + gpu.vram.inUsePageCount)
        #expect(c[.gpuFaults] > 0 && c[.cpuFaults] > 0)
        #expect(c[.copyFailures] == 0)
        #expect(gpu.checkInvariants().isEmpty)
        #expect(memory.diagnostics.refcountUnderflowCount == 0 && memory.diagnostics.unlocksOfUnlockedPages == 0)
    }
}
