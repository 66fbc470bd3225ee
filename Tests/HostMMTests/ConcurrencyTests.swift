import Foundation
import NIOConcurrencyHelpers
import Synchronization
import Testing
@testable import HostMM

/// Runs `body` on a new thread; `join()` waits for it.
final class TestThread: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    init(_ body: @escaping @Sendable () -> Void) {
        Thread.detachNewThread { [done] in
            body()
            done.signal()
        }
    }
    /// Waits up to `seconds`; false on timeout.
    @discardableResult func join(seconds: Double = 20) -> Bool { done.wait(timeout: .now() + seconds) == .success }
}

/// Polls `condition` for up to `seconds`.
func eventually(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(1000)
    }
    return condition()
}

@Suite(.timeLimit(.minutes(1))) struct ConcurrencyTests {
    @Test func cpuAccessBlocksOnMigrationEntryThenSeesNewData() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: pattern(1, count: pageSize))
        let result = NIOLockedValueBox<[UInt8]?>(nil)
        var reader: TestThread?
        try mm.mmapLock.withReadLock {
            try withBuffers(1) { src, dst in
                var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + UInt64(pageSize),
                                      src: src, dst: dst, pgmapOwner: device.owner, flags: .selectSystem)
                try migrateVMASetup(&args)
                #expect(mm.pageTableEntry(a).kind == .migration)
                reader = TestThread {
                    let bytes = try? mm.read(at: a, count: pageSize)
                    result.withLockedValue { $0 = bytes }
                }
                #expect(eventually { mm.faultCounters[.migrationWait] >= 1 })
                #expect(result.withLockedValue { $0 } == nil)       // still blocked on the page lock
                device.copyToDevice(src, dst, 1)
                device.bytes(dst[0].page!).copyMemory(from: pattern(2, count: pageSize), byteCount: pageSize)
                try migrateVMAPages(&args)
                migrateVMAFinalize(&args)
            }
        }
        #expect(reader!.join())
        #expect(result.withLockedValue { $0 } == pattern(2, count: pageSize))
        // The retried access hit the device entry; it may have refaulted while finalize still
        // held the destination's lock (collect only trylocks), as the kernel does.
        #expect(device.cpuFaults.load(ordering: .relaxed) >= 1)
    }

    /// `putPageAndWaitOnUnlocked` (`put_and_wait_on_page_locked`) on a page that is not
    /// locked drops the reference and returns; the last reference frees the page.
    @Test func putAndWaitOnAnUnlockedPageDropsTheReference() throws {
        let memory = try makeMemory()
        let free = memory.freeRAMPageCount
        let page = try #require(memory.allocPage())
        memory.getPage(page)
        memory.putPageAndWaitOnUnlocked(page)
        #expect(memory.refcount(page) == 1)
        memory.putPageAndWaitOnUnlocked(page)
        #expect(memory.refcount(page) == 0 && memory.freeRAMPageCount == free)
    }

    /// A sleeper on a locked page does not keep its reference while asleep (a migration
    /// checking the page's count does not see it), and the holder's unlock wakes it.
    @Test func putAndWaitSleepsWithoutItsReferenceUntilTheUnlock() throws {
        let memory = try makeMemory()
        let free = memory.freeRAMPageCount
        let page = try #require(memory.allocPage())
        memory.lockPage(page)
        memory.getPage(page)                                   // the waiter's
        let returned = Atomic<Bool>(false)
        let waiter = TestThread {
            memory.putPageAndWaitOnUnlocked(page)
            returned.store(true, ordering: .releasing)
        }
        #expect(eventually { memory.refcount(page) == 1 })     // dropped once queued
        usleep(20_000)
        let early = returned.load(ordering: .acquiring)
        #expect(!early)                                        // still asleep: the page is locked
        memory.unlockPage(page)
        memory.putPage(page)                                   // the last reference: freed
        #expect(waiter.join())
        #expect(memory.freeRAMPageCount == free && memory.diagnostics.refcountUnderflowCount == 0)
    }

    /// The unlock that wakes a page's sleepers clears `PG_waiters` (`folio_wake_bit`): a
    /// put-and-wait sleeper may not touch the page once woken, so nobody else would, and
    /// every later unlock of the page took the queue's mutex to wake no one.
    @Test func theWakingUnlockClearsThePageWaitersBit() throws {
        let memory = try makeMemory()
        let page = try #require(memory.allocPage())
        memory.lockPage(page)
        memory.getPage(page)                                   // the waiter's
        let waiter = TestThread { memory.putPageAndWaitOnUnlocked(page) }
        #expect(eventually { memory.flags(page).contains(.waiters) && memory.refcount(page) == 1 })
        memory.unlockPage(page)
        #expect(waiter.join())
        #expect(!memory.flags(page).contains(.waiters))
        // A sleeper still waiting sets it again: a second locker queued behind a third holder.
        memory.lockPage(page)
        let locker = TestThread { memory.lockPage(page); memory.unlockPage(page) }
        #expect(eventually { memory.flags(page).contains(.waiters) })
        memory.unlockPage(page)
        #expect(locker.join())
        #expect(!memory.flags(page).contains(.locked) && !memory.flags(page).contains(.waiters))
        memory.putPage(page)
    }

    /// A sleeper that takes the lock once woken holds it with `PG_waiters` clear when no
    /// one else waits: the waking unlock cleared it (`folio_wake_bit`) and the new holder
    /// must not leave it set again, or its own unlock takes the queue's mutex for no one.
    @Test func aWokenLockerHoldsThePageWithoutTheWaitersBit() throws {
        let memory = try makeMemory()
        let page = try #require(memory.allocPage())
        memory.lockPage(page)
        let held = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let locker = TestThread {
            memory.lockPage(page)
            held.signal()
            release.wait()
            memory.unlockPage(page)
        }
        #expect(eventually { memory.flags(page).contains(.waiters) })
        memory.unlockPage(page)
        #expect(held.wait(timeout: .now() + 20) == .success)
        #expect(memory.flags(page).contains(.locked) && !memory.flags(page).contains(.waiters))
        release.signal()
        #expect(locker.join())
        #expect(!memory.flags(page).contains(.locked) && memory.diagnostics.unlocksOfUnlockedPages == 0)
        memory.putPage(page)
    }

    /// `folio_wait_locked`: a sleeper woken by the unlock returns with `PG_waiters` clear
    /// when it was the page's last waiter, as `folio_wake_bit` leaves it.
    @Test func aWaiterForTheUnlockLeavesTheWaitersBitClear() throws {
        let memory = try makeMemory()
        let page = try #require(memory.allocPage())
        memory.lockPage(page)
        let waiter = TestThread { memory.waitOnPageUnlocked(page) }   // the test's reference is held throughout
        #expect(eventually { memory.flags(page).contains(.waiters) })
        memory.unlockPage(page)
        #expect(waiter.join())
        #expect(!memory.flags(page).contains(.locked) && !memory.flags(page).contains(.waiters))
        memory.putPage(page)
    }

    @Test func twoCPUsFaultingTheSameDevicePageBothSeeItsData() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: pattern(5, count: pageSize))
        try device.migrateToDevice(mm, a, a + UInt64(pageSize))
        let ok = Atomic<Int>(0)
        let threads = (0..<4).map { _ in
            TestThread { if (try? mm.read(at: a, count: pageSize)) == pattern(5, count: pageSize) { ok.add(1, ordering: .relaxed) } }
        }
        for t in threads { #expect(t.join()) }
        #expect(ok.load(ordering: .relaxed) == 4)
        #expect(mm.pageTableEntry(a).kind == .present)
        #expect(device.freePageCount == device.pageCount)
    }

    /// CPU threads keep writing and checking their own pages while another thread
    /// migrates the whole range to the device and evicts it back, over and over.
    @Test func cpuTrafficDuringRepeatedMigrationKeepsEveryByte() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 256)
        let mm = AddressSpace(memory: memory)
        let threads = 3, pagesPerThread = 16, rounds = 40
        let n = threads * pagesPerThread
        let a = try mm.mmap(length: n * pageSize)
        try mm.touch(a, length: n * pageSize, write: true)
        let mismatches = Atomic<Int>(0)
        let stop = Atomic<Bool>(false)
        let workers = (0..<threads).map { t in
            TestThread {
                var round = 0
                // Until the migrations are over (bounded: a lost stop still ends the thread).
                while !stop.load(ordering: .relaxed) && round < 1_000_000 {
                    for p in 0..<pagesPerThread {
                        let addr = a + UInt64((t * pagesPerThread + p) * pageSize)
                        let data = pattern(round &* 7 &+ t &* 131 &+ p, count: 64)
                        do {
                            try mm.write(at: addr + 128, bytes: data)
                            if try mm.read(at: addr + 128, count: 64) != data { mismatches.add(1, ordering: .relaxed) }
                        } catch { mismatches.add(1, ordering: .relaxed) }
                    }
                    round += 1
                    usleep(20)  // leave the migrating thread (and other suites) some of the 2 cores
                }
            }
        }
        var migrated = 0, evicted = 0
        for r in 0..<rounds {
            migrated += try device.migrateToDevice(mm, a, a + UInt64(n * pageSize), batch: 16)
            if r % 2 == 1 { evicted += try device.evictAll() }
        }
        // Workers that were not scheduled during those rounds (a loaded machine) have not met
        // a device page yet: leave the range in device memory until one does (bounded).
        migrated += try device.migrateToDevice(mm, a, a + UInt64(n * pageSize), batch: 16)
        let deadline = DispatchTime.now() + .seconds(20)
        while device.cpuFaults.load(ordering: .relaxed) == 0 && DispatchTime.now() < deadline { usleep(1000) }
        #expect(migrated > 0 && evicted > 0)
        #expect(device.cpuFaults.load(ordering: .relaxed) > 0)
        stop.store(true, ordering: .relaxed)
        for w in workers { #expect(w.join()) }
        #expect(mismatches.load(ordering: .relaxed) == 0)
        _ = try device.evictAll()
        try mm.munmap(a, length: n * pageSize)
        #expect(device.freePageCount == device.pageCount)
        #expect(memory.diagnostics.unlocksOfUnlockedPages == 0 && memory.diagnostics.refcountUnderflowCount == 0)
    }

    /// `make_device_exclusive` takes its reference to the page GUP found under the
    /// page-table lock (`follow_page_pte`): the page it locks and checks is the one mapped.
    /// A racing `MADV_DONTNEED` (mmap lock for read, like the exclusive) frees the page and
    /// another user allocates the frame at once; a reference taken after the walk lands on
    /// that user's page, which is not anonymous: EOPNOTSUPP for an anonymous mapping. And
    /// an entry zapped between the walk and the page lock starts it over for as long as it
    /// takes (`goto retry`), not 16 times then EBUSY: the kernel only ever retries.
    /// Bounded: 300 000 tries or 10 s (a TSan build), whichever comes first.
    @Test func exclusiveRacingDontneedNeverTakesTheFrameOfTheNextUser() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        let stop = Atomic<Bool>(false)
        let zapper = TestThread {
            while !stop.load(ordering: .relaxed) {
                try? mm.madvise(a, length: pageSize, advice: .dontNeed)
                // The freed frame is on top of the free stack: the next user gets it.
                if let p = memory.allocPage() {
                    for _ in 0..<5 where !stop.load(ordering: .relaxed) { sched_yield() }
                    memory.putPage(p)
                }
            }
        }
        var wrong: [HostMMError] = []
        let deadline = ContinuousClock.now + .seconds(10)
        for k in 0..<300_000 where wrong.isEmpty {
            if k % 1024 == 0 && ContinuousClock.now > deadline { break }
            do throws(HostMMError) { _ = try makeExclusive(mm, a) } catch { wrong.append(error) }
        }
        stop.store(true, ordering: .relaxed)
        #expect(zapper.join())
        #expect(wrong == [])
        try mm.munmap(a, length: pageSize)
        #expect(memory.checkInvariants(addressSpaces: [mm]) == [])
    }
}
