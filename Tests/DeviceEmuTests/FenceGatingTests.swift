import DMAEngine
import DeviceEmu
import Foundation
import NIOConcurrencyHelpers
import HostMM
import Synchronization
import Testing

/// The fence gates finalize: with copies delayed so they finish long after submit (and
/// out of order), neither the CPU nor the GPU may ever see a page before its copy landed.
@Suite(.timeLimit(.minutes(1))) struct FenceGatingTests {
    static let delayed = CopyBackendKind.faultInjecting(
        FaultPlan(rules: [.init(.every(3), .delay(.milliseconds(2))), .init(.every(7), .delay(.microseconds(300)))]),
        wrapping: .ioUring)

    @Test(arguments: [1, 2, 3])
    func finalizeAndDeviceMapWaitForTheFenceSignal(pipelineDepth: Int) throws {
        let memory = try makeMemory(mib: 64)
        let log = EventLog()
        var policy = MigrationPolicy()
        policy.pipelineDepth = pipelineDepth
        let gpu = try makeDevice(memory, vramMiB: 16, backend: Self.delayed, policy: policy, observer: log)
        defer { try? gpu.shutdown() }
        gpu.vram.pools[0].mapping.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let pages = 2048
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 11)
        let space = try gpu.bind(mm)
        let r = try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        #expect(r.migrated == pages)

        let events = log.all.filter { $0.direction == .toDevice }
        let batches = Set(events.map(\.batch))
        #expect(batches.count == pages / 512)
        for batch in batches {
            let mine = events.filter { $0.batch == batch }
            func time(_ k: MigrationEvent.Kind) -> UInt64? { mine.first { $0.kind == k }?.time }
            let signaled = try #require(time(.fenceSignaled))
            let submitted = try #require(time(.copiesSubmitted))
            let pagesEnd = try #require(time(.migratePagesEnd))
            let mapped = try #require(time(.deviceMap))
            let finalize = try #require(time(.finalizeBegin))
            #expect(submitted <= pagesEnd)         // migrate_vma_pages overlaps the copy…
            #expect(signaled <= mapped)             // …but the device maps only after the signal
            #expect(signaled <= finalize)           // …and finalize starts only after it
            #expect(mine.first { $0.kind == .finalizeBegin }?.seqno == mine.first { $0.kind == .fenceSignaled }?.seqno)
        }
        // With a pipeline, the next batch is submitted before the previous one finalizes.
        let ordered = batches.sorted()
        let overlapped = zip(ordered, ordered.dropFirst()).contains { previous, next in
            let submitted = events.first { $0.batch == next && $0.kind == .copiesSubmitted }!.time
            let finalized = events.first { $0.batch == previous && $0.kind == .finalizeBegin }!.time
            return submitted < finalized
        }
        #expect(overlapped == (pipelineDepth > 1))
        #expect(try pattern.gpuMismatches(space, a, pages: pages).isEmpty)
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
    }

    /// CPU and GPU readers hammer the range while it migrates to VRAM, is pulled back by
    /// their faults and migrated again; VRAM starts poisoned and copies are delayed.
    @Test func concurrentReadersNeverSeeAStaleByte() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 64
        policy.pipelineDepth = 2
        policy.gpuFault = .mapSystemMemory(pages: 1)
        let gpu = try makeDevice(memory, vramMiB: 16, backend: Self.delayed, policy: policy)
        defer { try? gpu.shutdown() }
        gpu.vram.pools[0].mapping.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let pages = 512
        let (mm, a, pattern) = try makeProcess(memory, pages: pages, seed: 12)
        let space = try gpu.bind(mm)
        let stop = Atomic<Bool>(false)
        let bad = NIOLockedValueBox<[String]>([])
        let reads = Atomic<Int>(0)
        func reader(_ seed: Int, gpuSide: Bool) -> TestThread {
            TestThread {
                var rng = SystemRandomNumberGenerator()
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: pageSize, alignment: pageSize)
                defer { buffer.deallocate() }
                var n = 0
                while !stop.load(ordering: .relaxed) && n < 20_000 {
                    let p = Int.random(in: 0..<pages, using: &rng)
                    do {
                        if gpuSide { try space.read(at: a + UInt64(p * pageSize), into: buffer) }
                        else { try mm.read(at: a + UInt64(p * pageSize), into: buffer) }
                        if !pattern.matches(p, buffer.baseAddress!) {
                            bad.withLockedValue { $0.append("\(gpuSide ? "gpu" : "cpu") page \(p): bytes \(buffer[0]), \(buffer[100])") }
                        }
                    } catch {
                        bad.withLockedValue { $0.append("\(gpuSide ? "gpu" : "cpu") page \(p): \(error)") }
                    }
                    n += 1
                    reads.add(1, ordering: .relaxed)
                }
            }
        }
        let threads = [reader(1, gpuSide: false), reader(2, gpuSide: false), reader(3, gpuSide: true)]
        for _ in 0..<12 { try gpu.migrateToDevice(mm, range: range(a, pages: pages)) }
        // CPU readers not scheduled during those rounds (a loaded machine) have pulled no page
        // back yet: migrate again until one has and its page moved again (bounded).
        let deadline = ContinuousClock.now + .seconds(20)
        while gpu.counters[.pagesToDevice] <= pages && ContinuousClock.now < deadline {
            usleep(1000)
            try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        }
        stop.store(true, ordering: .relaxed)
        let joined = threads.map { $0.join(seconds: 30) }
        #expect(joined.allSatisfy { $0 }, "a reader is stuck")
        guard joined.allSatisfy({ $0 }) else { return }
        let failures = bad.withLockedValue { $0 }
        #expect(failures.isEmpty, "\(failures.count) bad reads, first: \(failures.prefix(3))")
        #expect(reads.load(ordering: .relaxed) > 0)
        #expect(gpu.counters[.pagesToDevice] > pages)      // readers pulled pages back and they moved again
        #expect(try pattern.cpuMismatches(mm, a, pages: pages).isEmpty)
        #expect(memory.diagnostics.unlocksOfUnlockedPages == 0 && memory.diagnostics.refcountUnderflowCount == 0)
    }

    @Test func cpuFaultWaitsForItsDelayedCopy() throws {
        let memory = try makeMemory(mib: 64)
        let log = EventLog()
        let slow = CopyBackendKind.faultInjecting(FaultPlan(rules: [.init(.every(1), .delay(.milliseconds(3)))]),
                                                  wrapping: .memcpy)
        let gpu = try makeDevice(memory, vramMiB: 8, backend: slow, observer: log)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 8, seed: 13)
        try gpu.migrateToDevice(mm, range: range(a, pages: 8))
        #expect(try pattern.cpuMismatches(mm, a, pages: 8).isEmpty)
        let toRAM = log.all.filter { $0.direction == .toRAM }
        #expect(toRAM.filter { $0.kind == .finalizeBegin }.count == 8)
        for batch in Set(toRAM.map(\.batch)) where batch != 0 {   // batch 0: the fault events themselves
            let mine = toRAM.filter { $0.batch == batch }
            let signaled = try #require(mine.first { $0.kind == .fenceSignaled }?.time)
            let finalize = try #require(mine.first { $0.kind == .finalizeBegin }?.time)
            #expect(signaled <= finalize)
        }
        #expect(log.count(.cpuFaultBegin) == 8 && log.count(.cpuFaultEnd) == 8)
    }
}
