import DMAEngine
import DeviceEmu
import Foundation
import HostMM
import NIOConcurrencyHelpers
import Synchronization
import Testing

/// Races between a migration, GPU faults, binding and unmapping, each pinned to its
/// interleaving by an observer that runs the other side at the step where it matters.
@Suite(.timeLimit(.minutes(1))) struct RaceRegressionTests {
    /// Runs `action` once, on the thread reporting the first event that `matches`.
    final class StepHook: MigrationObserver, @unchecked Sendable {
        private let lock = NIOLock()
        private var fired = false
        let matches: @Sendable (MigrationEvent) -> Bool
        let action: @Sendable () -> Void
        init(matches: @escaping @Sendable (MigrationEvent) -> Bool, action: @escaping @Sendable () -> Void) {
            self.matches = matches
            self.action = action
        }
        func observe(_ event: MigrationEvent) {
            guard matches(event) else { return }
            let first = lock.withLock { () -> Bool in
                defer { fired = true }
                return !fired
            }
            if first { action() }
        }
    }

    /// A late binding of the device, set once the device exists.
    final class Late<T: AnyObject>: @unchecked Sendable {
        private let box = NIOLockedValueBox<T?>(nil)
        var value: T? {
            get { box.withLockedValue { $0 } }
            set { box.withLockedValue { $0 = newValue } }
        }
    }

    /// `migrateToDevice` looked its device page table up once, before its first batch: an
    /// address space bound while the migration ran could map (through a GPU fault) a page
    /// of a later batch, which then migrated without its device entry being zapped — the
    /// notifier skips the device's own migrations — so the GPU kept mapping the freed RAM
    /// page. Here the second batch's page is GPU-mapped while the first batch's fence is waited.
    @Test func bindingDuringAMigrationLeavesNoEntryToAMigratedPage() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 16
        policy.gpuFault = .mapSystemMemory(pages: 1)
        let gpuBox = Late<Device>()
        let mmBox = Late<AddressSpace>()
        let base = Atomic<UInt64>(0)
        let gpuReadFailed = Atomic<Bool>(false)
        let hook = StepHook(matches: { $0.kind == .fenceWaitBegin && $0.direction == .toDevice }) {
            // Another thread binds the address space and reads a page of the next batch.
            let other = TestThread {
                guard let gpu = gpuBox.value, let mm = mmBox.value else { return }
                do {
                    let space = try gpu.bind(mm)
                    _ = try space.read(at: base.load(ordering: .relaxed) + UInt64(20 * pageSize), count: 8)
                } catch { gpuReadFailed.store(true, ordering: .relaxed) }
            }
            _ = other.join(seconds: 20)
        }
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: hook)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 32, seed: 7)
        gpuBox.value = gpu
        mmBox.value = mm
        base.store(a, ordering: .relaxed)

        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 32)).migrated == 32)
        let readFailed = gpuReadFailed.load(ordering: .relaxed)
        #expect(!readFailed)
        let page = a + UInt64(20 * pageSize)
        let cpu = mm.pageTableEntry(page)
        #expect(cpu.kind == .devicePrivate)
        let space = try #require(gpu.addressSpace(for: mm))
        let e = space.entry(at: page)
        #expect(e.kind == .none || (e.kind == .vram && e.pfn == cpu.pfn), "device entry \(e), CPU entry \(cpu)")
        // Whatever it maps, the GPU reads the page's data.
        #expect(try space.read(at: page, count: pageSize) == pattern.page(20))
        #expect(gpu.checkInvariants().isEmpty)
    }

    /// A GPU atomic taking a page device-exclusive dropped the mmap lock before installing
    /// the device entry: an munmap in between zapped the CPU entry and raised its
    /// invalidation before the entry existed, and the GPU then mapped the page after it was
    /// unmapped (and freed once the fault path dropped its reference). The munmap runs at
    /// `.deviceExclusive`, the step between the two.
    @Test func munmapWhileAnAtomicTakesThePageExclusiveLeavesNoEntry() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.gpuFault = .mapSystemMemory(pages: 1)
        let mmBox = Late<AddressSpace>()
        let base = Atomic<UInt64>(0)
        let unmapped = Atomic<Bool>(false)
        let hook = StepHook(matches: { $0.kind == .deviceExclusive }) {
            let unmapper = TestThread {
                guard let mm = mmBox.value else { return }
                do {
                    try mm.munmap(base.load(ordering: .relaxed), length: pageSize)
                    unmapped.store(true, ordering: .relaxed)
                } catch {}
            }
            // While the fault holds the mmap lock the munmap cannot finish: wait a little,
            // then let the fault go on (it completes after the fault either way).
            _ = unmapper.join(seconds: 0.2)
        }
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: hook)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        mmBox.value = mm
        let a = try mm.mmap(length: pageSize)
        base.store(a, ordering: .relaxed)
        try mm.write(at: a, bytes: [UInt8](repeating: 1, count: 8))
        let space = try gpu.bind(mm)

        let atomic: Result<UInt64, DeviceError>
        do { atomic = .success(try space.atomicAdd(at: a, 1)) } catch { atomic = .failure(error) }
        let deadline = ContinuousClock.now + .seconds(20)
        while !unmapped.load(ordering: .relaxed) && ContinuousClock.now < deadline { usleep(1000) }
        let didUnmap = unmapped.load(ordering: .relaxed)
        #expect(didUnmap)
        #expect(space.entry(at: a) == .none, "the GPU still maps the unmapped page: \(space.entry(at: a)); atomic \(atomic)")
        #expect(space.mappedPageCount == 0)
        #expect(gpu.checkInvariants().isEmpty)
    }

}
