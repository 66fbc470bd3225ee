import Foundation
import NIOConcurrencyHelpers
import Testing
@testable import HostMM

/// Behaviours of `mm/migrate_device.c` (seed 004) pinned by a fidelity audit: some the
/// model got wrong (fixed with these tests), some it got right that no test held.
@Suite struct MigrateFidelityTests {
    /// `migrate_vma_setup` clears `src` for the range only (its `memset` covers
    /// `nr_pages` entries, the walk writes one `src`/`dst` pair per page): a caller's
    /// larger buffer keeps whatever it holds past the range.
    @Test func setupWritesNoEntryPastTheRange() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 8 * pageSize)
        try mm.touch(a, length: 8 * pageSize, write: true)
        let sentinel = MigratePFN(rawValue: 0xdead << MigratePFN.shift)   // no .valid: never a page
        try mm.mmapLock.withReadLock {
            try withBuffers(8) { src, dst in
                src.update(repeating: sentinel)
                dst.update(repeating: sentinel)
                var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + UInt64(2 * pageSize),
                                      src: src, dst: dst, flags: .selectSystem)
                try migrateVMASetup(&args)
                #expect(args.npages == 2 && args.cpages == 2)
                #expect(src[0].contains(.migrate) && src[1].contains(.migrate))
                #expect(dst[0] == [] && dst[1] == [])
                #expect(src[2...].allSatisfy { $0 == sentinel })
                #expect(dst[2...].allSatisfy { $0 == sentinel })
                migrateVMAFinalize(&args)
            }
        }
        #expect(mm.pageTableEntry(a).isPresent && mm.pageTableEntry(a + UInt64(pageSize)).isPresent)
    }
    /// `migrate_device_coherent_folio` takes the page lock with `folio_lock` (it sleeps)
    /// and keeps the caller's reference as the migration's: a long-term pin of a coherent
    /// page that another thread has locked waits for it, then moves the page to RAM,
    /// instead of failing with EBUSY.
    @Test(.timeLimit(.minutes(1)))
    func longtermPinWaitsForALockedCoherentPage() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16, type: .deviceCoherent)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.write(at: a, bytes: pattern(6, count: pageSize))
        try device.migrateToDevice(mm, a, a + UInt64(pageSize))
        let coherent = mm.pageTableEntry(a).pfn
        #expect(memory.isDeviceCoherent(coherent))
        memory.lockPage(coherent)                        // a racing migration holds it
        let result = NIOLockedValueBox<Result<[PFN], HostMMError>?>(nil)
        let pinner = TestThread {
            do throws(HostMMError) {
                let pins = try mm.pinUserPages(a, count: 1, write: true, longterm: true)
                result.withLockedValue { $0 = .success(pins) }
            } catch {
                result.withLockedValue { $0 = .failure(error) }
            }
        }
        // Let go once the pinner sleeps on the lock (or has already given up).
        let slept = eventually { memory.flags(coherent).contains(.waiters) || result.withLockedValue { $0 != nil } }
        memory.unlockPage(coherent)
        #expect(pinner.join())
        #expect(slept)
        let pins = try #require(try result.withLockedValue { $0 }?.get())
        #expect(pins.count == 1 && memory.isRAM(pins[0]) && mm.pageTableEntry(a).pfn == pins[0])
        #expect(device.freePageCount == 16)              // the coherent page was freed
        memory.unpinUserPages(pins)
        #expect(try mm.read(at: a, count: pageSize) == pattern(6, count: pageSize))
    }
    /// The invalidations a migration sends (`migrate_vma_collect`, `__migrate_device_pages`,
    /// `try_to_migrate_one`): collect covers the whole range as `MIGRATE` with the owner;
    /// the pages step covers from the first hole it populates to the end, again as
    /// `MIGRATE` with the owner; eviction by PFN unmaps each page as `CLEAR`, no owner.
    @Test func migrationInvalidatesTheKernelsRangesWithItsEvents() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        try mm.write(at: a, bytes: [1])                                  // page 0 present, 1-3 holes
        let recorder = RangeRecorder()
        _ = try mm.notifiers.insert(start: a, length: UInt64(4 * pageSize), ops: recorder)
        let p = UInt64(pageSize)
        #expect(try device.migrateToDevice(mm, a, a + 4 * p) == 4)
        #expect(recorder.take() == [.init(.migrate, a, a + 4 * p, device.owner),
                                    .init(.migrate, a + p, a + 4 * p, device.owner)])
        #expect(try device.evictAll() == 4)
        #expect(recorder.take() == (0..<4).map { .init(.clear, a + UInt64($0) * p, a + UInt64($0 + 1) * p, nil) })
    }

    /// A RAM page the driver gives a hole is added to the LRU (`folio_add_lru_vma` in
    /// `migrate_vma_insert_page`), so a later migration can isolate it.
    @Test func ramPageInsertedForAHoleCanMigrateAgain() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try withMigrateSetup(mm, a, pages: 1, owner: device.owner, flags: .selectSystem) { args, src, dst in
            #expect(src[0] == .migrate && args.cpages == 1)
            let ram = try #require(memory.allocPage(zeroed: true))
            memory.lockPage(ram)
            dst[0] = MigratePFN(pfn: ram)
            try migrateVMAPages(&args)
            #expect(src[0] == .migrate)
            migrateVMAFinalize(&args)
        }
        let page = mm.pageTableEntry(a).pfn
        #expect(memory.isRAM(page) && memory.flags(page).contains(.lru) && memory.refcount(page) == 1)
        #expect(try device.migrateToDevice(mm, a, a + UInt64(pageSize)) == 1)
        #expect(mm.pageTableEntry(a).kind == .devicePrivate)
    }
}

/// Records each invalidation's event, range and owner.
final class RangeRecorder: MMUIntervalNotifierOps, @unchecked Sendable {
    struct Seen: Equatable {
        let event: MMUNotifyEvent, start: UInt64, end: UInt64, owner: PgmapOwner?
        init(_ event: MMUNotifyEvent, _ start: UInt64, _ end: UInt64, _ owner: PgmapOwner?) {
            (self.event, self.start, self.end, self.owner) = (event, start, end, owner)
        }
    }
    private let seen = NIOLockedValueBox<[Seen]>([])

    func invalidate(_ notifier: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool {
        seen.withLockedValue { $0.append(Seen(range.event, range.start, range.end, range.owner)) }
        notifier.setSequence(currentSequence)
        return true
    }

    /// The invalidations recorded since the last call.
    func take() -> [Seen] { seen.withLockedValue { v in defer { v = [] }; return v } }
}
