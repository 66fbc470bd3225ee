import Foundation
import NIOConcurrencyHelpers
import Synchronization
import Testing
@testable import HostMM

/// Regressions the torture run (`dmem-bench torture`) found in HostMM, each reduced to a
/// bounded race between the two paths involved.
@Suite(.timeLimit(.minutes(1))) struct TortureRegressionTests {
    /// `zoneDevicePageInit` took the page's first reference, then `trylock`ed it; when an
    /// evictor (`migrateDeviceRange`) had slipped in between — its `get_page_unless_zero`
    /// succeeds once the count is 1 — the trylock failed and init *stored* 0 over the
    /// evictor's reference. The evictor then "migrated" a free page and its finalize
    /// dropped a reference from refcount 0, and the page was lost to its driver. Init now
    /// sleeps on the page lock like the kernel's `lock_page`.
    @Test func allocatingADevicePageWhileAnEvictorSweepsItKeepsEveryReference() throws {
        let memory = try PhysicalMemory(ramBytes: 16 << 20, maxDevicePages: 4096, checked: .on)
        let device = try TestDevice(memory: memory, pageCount: 4)
        let first = device.pagemap.firstPFN
        let stop = Atomic<Bool>(false)
        let evictor = Thread {
            withBuffers(4) { src, dst in
                while !stop.load(ordering: .relaxed) {
                    guard (try? memory.migrateDeviceRange(src, start: first, npages: 4)) != nil else { continue }
                    try? memory.migrateDevicePages(src: src, dst: dst, npages: 4)   // no destinations: all restored
                    memory.migrateDeviceFinalize(src: src, dst: dst, npages: 4)
                }
            }
        }
        evictor.start()
        var allocations = 0
        // 2 s and at least 1001 allocations, however slow the machine (Thread Sanitizer); at most 30 s.
        let start = ContinuousClock.now
        while (allocations <= 1000 || ContinuousClock.now - start < .seconds(2)) && ContinuousClock.now - start < .seconds(30) {
            guard let page = device.allocPage() else { continue }   // zoneDevicePageInit: ref 1, locked
            allocations += 1
            memory.unlockPage(page)
            memory.putPage(page)                                     // pageFree → free list
        }
        stop.store(true, ordering: .relaxed)
        while !evictor.isFinished { usleep(1000) }
        #expect(allocations > 1000)
        #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations.prefix(3) ?? [])")
        #expect(memory.diagnostics.refcountUnderflowCount == 0)
        #expect(device.freePageCount == 4)                           // none lost
        #expect((0..<4).allSatisfy { memory.refcount(first + $0) == 0 && !memory.isPageLocked(first + $0) })
    }

    /// `hmmRangeFault` found a migration entry and slept on its page's lock holding no
    /// reference. A migration that finished meanwhile freed that page (RAM frames and
    /// device pages are reused last-freed first) and the next migration took it again as
    /// its locked destination; the free reset the page's flags, wiping the `PG_waiters` the
    /// sleeper had just set, so the new owner's unlock woke nobody: the fault slept for
    /// ever (a GPU fault holding its device gate, PolicyStressTests'
    /// unbindRacingEvictionsOfMappedPages). It now takes a reference under the page-table
    /// lock and drops it once queued (`__migration_entry_wait`, `put_and_wait_on_page_locked`).
    @Test func aFaultWaitingOnAMigrationEntryIsWokenWhenItsPageIsReused() throws {
        let memory = try PhysicalMemory(ramBytes: 16 << 20, maxDevicePages: 4096, checked: .on)
        let device = try TestDevice(memory: memory, pageCount: 4)
        let mm = AddressSpace(memory: memory)
        let faulterCount = 4
        let length = faulterCount * pageSize
        let a = try mm.mmap(length: length)
        try mm.write(at: a, bytes: pattern(7, count: length))
        let notifier = try mm.notifiers.insert(start: a, length: UInt64(length), ops: NullMirror())
        let stop = Atomic<Bool>(false)
        // Back and forth: each trip frees the source pages and takes them again, locked, next trip.
        let migrator = TestThread {
            while !stop.load(ordering: .relaxed) {
                _ = try? device.migrateToDevice(mm, a, a + UInt64(length))
                _ = try? device.evictAll()
            }
        }
        // One faulter per page (a sleeper on one page is not woken by another's waits on
        // it), and more threads than cores: a faulter is often preempted inside its wait.
        let snapshots = NIOLockedValueBox([Int](repeating: 0, count: faulterCount))
        let faulters = (0..<faulterCount).map { f in
            TestThread {
                while !stop.load(ordering: .relaxed) {
                    _ = try? hmm(mm, notifier, a + UInt64(f * pageSize), pages: 1, request: .requestFault, owner: device.owner)
                    snapshots.withLockedValue { $0[f] += 1 }
                }
            }
        }
        // 2 s, or until a faulter makes no progress for 0.5 s (asleep for good).
        let start = ContinuousClock.now
        var seen = [Int](repeating: -1, count: faulterCount)
        var stalled = false
        while ContinuousClock.now - start < .seconds(2) && !stalled {
            usleep(500_000)
            let now = snapshots.withLockedValue { $0 }
            stalled = zip(now, seen).contains { $0 == $1 }
            seen = now
        }
        stop.store(true, ordering: .relaxed)
        #expect(migrator.join(seconds: 10))
        // Nothing migrates any more: a faulter still asleep lost its wakeup, and sleeps for
        // ever (left behind rather than waited for).
        let joined = faulters.allSatisfy { $0.join(seconds: 5) }
        #expect(joined, "a fault slept through the unlock of its migration entry's page (snapshots \(seen), stalled \(stalled))")
        #expect(!joined || seen.allSatisfy { $0 > 100 })
        #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations.prefix(3) ?? [])")
    }
}
