import Dispatch
import Foundation
import NIOConcurrencyHelpers
import Testing
@testable import HostMM

/// Records every invalidation; like a driver mirror, it bumps the sequence and can
/// ignore its own migrations by owner.
final class RecordingMirror: MMUIntervalNotifierOps, @unchecked Sendable {
    let events = NIOLockedValueBox<[(MMUNotifyEvent, PgmapOwner?)]>([])
    let acted = NIOLockedValueBox<Int>(0)
    let myOwner: PgmapOwner?

    init(owner: PgmapOwner? = nil) { myOwner = owner }

    func invalidate(_ notifier: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool {
        events.withLockedValue { $0.append((range.event, range.owner)) }
        // nouveau/test_hmm: skip invalidations caused by our own migrations.
        if range.event == .migrate && range.owner != nil && range.owner == myOwner { return true }
        notifier.setSequence(currentSequence)
        acted.withLockedValue { $0 += 1 }
        return true
    }

    var kinds: [MMUNotifyEvent] { events.withLockedValue { $0.map(\.0) } }
}

@Suite struct MMUNotifierTests {
    @Test func notifierSeesEachEventKindWithItsOwner() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let mirror = RecordingMirror()
        _ = try mm.notifiers.insert(start: a, length: UInt64(4 * pageSize), ops: mirror)
        try mm.write(at: a, bytes: [1])                           // new page: no invalidation
        #expect(mirror.kinds.isEmpty)
        _ = try mm.read(at: a + UInt64(pageSize), count: 1)        // zero page
        try mm.write(at: a + UInt64(pageSize), bytes: [1])        // COW of the zero page
        #expect(mirror.kinds == [.clear])
        try device.migrateToDevice(mm, a, a + UInt64(pageSize))
        #expect(mirror.kinds.last == .migrate)
        #expect(mirror.events.withLockedValue { $0.last!.1 } == device.owner)
        try mm.mprotect(a, length: pageSize, protection: .read)
        #expect(mirror.kinds.last == .protectionVMA)
        let child = try mm.fork()
        #expect(mirror.kinds.last == .protectionPage)
        try mm.munmap(a + UInt64(3 * pageSize), length: pageSize)
        #expect(mirror.kinds.last == .unmap)
        mm.exit()
        #expect(mirror.kinds.suffix(2) == [.release, .unmap])
        child.exit()
    }

    @Test func notifierOutsideTheRangeIsNotCalled() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let mirror = RecordingMirror()
        _ = try mm.notifiers.insert(start: a + UInt64(2 * pageSize), length: UInt64(pageSize), ops: mirror)
        try mm.munmap(a, length: 2 * pageSize)
        #expect(mirror.kinds.isEmpty)
        try mm.munmap(a + UInt64(2 * pageSize), length: pageSize)
        #expect(mirror.kinds == [.unmap])
    }

    @Test func driverSkipsItsOwnMigrationsByOwner() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let other = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        let mirror = RecordingMirror(owner: device.owner)
        let notifier = try mm.notifiers.insert(start: a, length: UInt64(2 * pageSize), ops: mirror)
        let seq = notifier.readBegin()
        try device.migrateToDevice(mm, a, a + UInt64(pageSize))
        #expect(mirror.acted.withLockedValue { $0 } == 0)
        #expect(!notifier.readRetry(seq))
        try other.migrateToDevice(mm, a + UInt64(pageSize), a + UInt64(2 * pageSize))
        #expect(mirror.acted.withLockedValue { $0 } >= 1)
        #expect(notifier.readRetry(seq))
    }

    /// `mmu_interval_notifier_remove` of an interval an invalidation is calling waits for
    /// that invalidation to end; the subscriptions call their hits without holding a reference,
    /// so returning early would let the caller free a notifier in use.
    @Test func removeWaitsForTheInvalidationCallingIt() throws {
        final class Blocking: MMUIntervalNotifierOps, @unchecked Sendable {
            let entered = DispatchSemaphore(value: 0)
            let release = DispatchSemaphore(value: 0)
            let finished = NIOLockedValueBox(false)
            func invalidate(_ notifier: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool {
                entered.signal()
                _ = release.wait(timeout: .now() + 10)   // bounded: a broken remove() fails, never hangs
                notifier.setSequence(currentSequence)
                finished.withLockedValue { $0 = true }
                return true
            }
        }
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: 4 * pageSize)
        try mm.touch(a, length: 4 * pageSize, write: true)
        let ops = Blocking()
        let n = try mm.notifiers.insert(start: a, length: UInt64(4 * pageSize), ops: ops)
        let unmapper = Thread { try? mm.munmap(a, length: 4 * pageSize) }
        unmapper.start()
        guard ops.entered.wait(timeout: .now() + 10) == .success else {
            Issue.record("munmap did not invalidate the notifier")
            return
        }
        let removed = NIOLockedValueBox(false)
        let remover = Thread {
            n.remove()
            removed.withLockedValue { $0 = true }
        }
        remover.start()
        usleep(20_000)
        #expect(!removed.withLockedValue { $0 }, "remove returned while the invalidation was calling its notifier")
        ops.release.signal()
        let deadline = ContinuousClock.now + .seconds(10)
        while (!remover.isFinished || !unmapper.isFinished) && ContinuousClock.now < deadline { usleep(1000) }
        #expect(remover.isFinished && unmapper.isFinished, "remove or munmap hung")
        #expect(removed.withLockedValue { $0 } && ops.finished.withLockedValue { $0 })
    }

    @Test func removedNotifierIsNotCalledAgain() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize)
        let mirror = RecordingMirror()
        let n = try mm.notifiers.insert(start: a, length: UInt64(pageSize), ops: mirror)
        n.remove()
        try mm.munmap(a, length: pageSize)
        #expect(mirror.kinds.isEmpty)
        #expect(throws: HostMMError.invalidArgument) { try mm.notifiers.insert(start: a, length: 0, ops: mirror) }
    }
}
