import DeviceEmu
import Dispatch
import HostMM
import Synchronization
import Testing

/// A foreign invalidation whose callback already ran when a batch took its mark, but
/// whose zap had not: `mmu_interval_read_begin` waits for an invalidation in progress
/// to end, because the callback runs at `invalidate_range_start`, before the page
/// tables change. A mark taken in that window saw the `MADV_DONTNEED` as over, setup
/// then collected the page, the zap removed its migration entry, and the batch mapped
/// on the GPU a VRAM page finalize freed.
extension ForeignInvalidationRaceTests {
    /// A second interval notifier (inserted after the device's view, so called after it)
    /// that holds a `.clear` invalidation between its callbacks and its zap until
    /// released, or for `limit` at most; the first one only.
    final class InvalidationBlocker: MMUIntervalNotifierOps, @unchecked Sendable {
        private let armed = Atomic<Bool>(true)
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let limit: DispatchTimeInterval

        init(limit: DispatchTimeInterval) { self.limit = limit }

        func invalidate(_ notifier: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool {
            notifier.setSequence(currentSequence)
            guard range.event == .clear, armed.exchange(false, ordering: .relaxed) else { return true }
            entered.signal()
            _ = release.wait(timeout: .now() + limit)
            return true
        }
    }

    @Test(arguments: [MigrationPolicy.APIGeneration.threeStep, .callbacks2017])
    func aDontNeedStillZappingWhenTheBatchBeginsKeepsThePageOffTheGPU(api: MigrationPolicy.APIGeneration) throws {
        let w = try World(api: api)
        // Without the wait, the probe releases the zap at once; with it, the batch waits
        // for the blocker's limit before its setup begins.
        let blocker = InvalidationBlocker(limit: .seconds(1))
        let watcher = try w.mm.notifiers.insert(start: 0, length: 1 << 47, ops: blocker)
        defer { watcher.remove() }
        let zapped = DispatchSemaphore(value: 0)
        let (mm, target) = (w.mm, w.address(1))
        DispatchQueue.global().async {
            try? mm.madvise(target, length: pageSize, advice: .dontNeed)
            zapped.signal()
        }
        // The device's view has seen the DONTNEED; its zap has not run.
        blocker.entered.wait()
        try w.probe.arm(at: .init(.setupEnd, direction: .toDevice), hold: .seconds(20)) {
            blocker.release.signal()
            zapped.wait()
            zapped.signal()
        }
        #expect(try w.gpu.migrateToDevice(w.mm, range: w.base ..< w.address(32)).migrated >= 31)
        zapped.wait()
        try w.expectPage1Dropped()
    }
}
