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

    /// A GPU entry for a system page survived the device's own migration of that page until
    /// the driver zapped the collected pages after setup: a GPU write in between changed a
    /// locked source after setup (checked mode: `source-modified-after-setup`; the copy,
    /// queued after the zap, still saw the new bytes). The own-migration invalidation now
    /// zaps the range's system-memory entries at once; the write faults, waits for the
    /// migration and lands in VRAM.
    @Test func gpuWriteRightAfterSetupOfItsOwnMigrationDoesNotTouchTheSource() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 17, checked: .on)
        var policy = MigrationPolicy()
        policy.gpuFault = .mapSystemMemory(pages: 1)
        let spaceBox = Late<GPUAddressSpace>()
        let base = Atomic<UInt64>(0)
        let wrote = Atomic<Bool>(false)
        let hook = StepHook(matches: { $0.kind == .setupEnd && $0.direction == .toDevice }) {
            _ = TestThread {
                guard let space = spaceBox.value else { return }
                if (try? space.write(at: base.load(ordering: .relaxed), bytes: [0xA5])) != nil {
                    wrote.store(true, ordering: .releasing)
                }
            }
            // Gives the write its chance (with the fix it waits for the migration instead).
            for _ in 0..<200 where !wrote.load(ordering: .acquiring) { usleep(5000) }
        }
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: hook)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        try mm.touch(a, length: 4 * pageSize, write: true)
        base.store(a, ordering: .relaxed)
        let space = try gpu.bind(mm)
        spaceBox.value = space
        try space.write(at: a, bytes: [0x11])                      // the GPU maps the system page
        #expect(space.entry(at: a).kind == .system)
        try gpu.migrateToDevice(mm, range: range(a, pages: 4))
        for _ in 0..<4000 where !wrote.load(ordering: .acquiring) { usleep(5000) }
        let didWrite = wrote.load(ordering: .acquiring)
        #expect(didWrite)
        #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations.prefix(3) ?? [])")
        #expect(try space.read(at: a, count: 1) == [0xA5] && (try mm.read(at: a, count: 1)) == [0xA5])
        #expect(gpu.checkInvariants().isEmpty)
    }

    /// With the migrate-to-VRAM GPU-fault policy, an atomic faulting on a page another
    /// thread's GPU fault was migrating found neither a VRAM entry nor a device-private CPU
    /// entry (a migration entry), so it took the page device-exclusive — which waited for
    /// the migration, then pulled the page straight back to RAM through a CPU fault. The
    /// fault now waits the migration out and maps the page in VRAM.
    @Test func atomicOnAPageBeingMigratedToVRAMDoesNotPullItBack() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.gpuFault = .migrateToVRAM(pages: 8)
        let gpuBox = Late<Device>()
        let mmBox = Late<AddressSpace>()
        let base = Atomic<UInt64>(0)
        let second = Late<TestThread>()
        let secondResult = Atomic<Int>(-1)
        let secondFaulted = DispatchSemaphore(value: 0)
        // The second atomic's own migration finds the window collected (setup collects 0)…
        let watcher = StepHook(matches: { $0.kind == .setupEnd && $0.direction == .toDevice && $0.pages == 0 }) {
            secondFaulted.signal()
        }
        // …while the first one waits for its copies.
        let hook = StepHook(matches: { $0.kind == .fenceWaitBegin && $0.direction == .toDevice }) {
            second.value = TestThread {
                guard let gpu = gpuBox.value, let mm = mmBox.value, let space = gpu.addressSpace(for: mm) else { return }
                do { secondResult.store(Int(try space.atomicAdd(at: base.load(ordering: .relaxed) + UInt64(pageSize), 1)),
                                        ordering: .relaxed) } catch {}
            }
            _ = secondFaulted.wait(timeout: .now() + 20)
            usleep(20_000)   // let it reach its fallback before this migration finishes
        }
        let both = Both(hook, watcher)
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: both)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 8 * pageSize)
        try mm.touch(a, length: 8 * pageSize, write: true)
        gpuBox.value = gpu
        mmBox.value = mm
        base.store(a, ordering: .relaxed)
        let space = try gpu.bind(mm)

        #expect(try space.atomicAdd(at: a, 1) == 0)
        #expect(second.value?.join(seconds: 20) == true)
        let previous = secondResult.load(ordering: .relaxed)
        #expect(previous == 0)
        #expect(gpu.counters[.cpuFaults] == 0, "a page went back to RAM")
        #expect(gpu.counters[.pagesToRAM] == 0)
        #expect(space.entry(at: a).kind == .vram && space.entry(at: a + UInt64(pageSize)).kind == .vram,
                "\(space.entry(at: a)) \(space.entry(at: a + UInt64(pageSize)))")
        #expect(gpu.residentPages(mm, a, pages: 8) == 8)
        #expect(try mm.read(at: a + UInt64(pageSize), count: 1) == [1])
    }

    /// `migrateVMAPages` inserts a migrated hole's device-private entry before the fence
    /// signals (the page stays locked until finalize). A GPU fault in between got that
    /// entry from `hmmRangeFault` (its own pages are reported, locked or not) and mapped the
    /// VRAM page before its clear landed: the GPU read what VRAM held before (poison here).
    @Test func gpuFaultOnAHoleWhoseClearIsInFlightReadsZeros() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 16
        policy.gpuFault = .mapSystemMemory(pages: 1)
        let delayed = CopyBackendKind.faultInjecting(
            FaultPlan(rules: [.init(.every(1), .delay(.milliseconds(100)))]), wrapping: .ioUring)
        let spaceBox = Late<GPUAddressSpace>()
        let base = Atomic<UInt64>(0)
        let seen = NIOLockedValueBox<[UInt8]?>(nil)
        let finished = Atomic<Bool>(false)
        let hook = StepHook(matches: { $0.kind == .fenceWaitBegin && $0.direction == .toDevice }) {
            _ = TestThread {
                guard let space = spaceBox.value else { return }
                let bytes = try? space.read(at: base.load(ordering: .relaxed) + UInt64(3 * pageSize), count: 64)
                seen.withLockedValue { $0 = bytes }
                finished.store(true, ordering: .relaxed)
            }
            // Without the fix the read is served at once; with it, it waits for finalize.
            let until = ContinuousClock.now + .milliseconds(300)
            while !finished.load(ordering: .relaxed) && ContinuousClock.now < until { usleep(1000) }
        }
        let gpu = try makeDevice(memory, vramMiB: 2, backend: delayed, policy: policy, observer: hook)
        defer { try? gpu.shutdown() }
        gpu.vram.pools[0].mapping.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * pageSize)
        base.store(a, ordering: .relaxed)
        spaceBox.value = try gpu.bind(mm)

        let r = try gpu.migrateToDevice(mm, range: range(a, pages: 16))
        #expect(r.migrated == 16 && r.holes == 16)
        let until = ContinuousClock.now + .seconds(20)
        while !finished.load(ordering: .relaxed) && ContinuousClock.now < until { usleep(1000) }
        #expect(seen.withLockedValue { $0 } == [UInt8](repeating: 0, count: 64))
    }

    /// `bind` checked for teardown before publishing the new view: a teardown in between
    /// unbound everything but the view, which then stayed bound to the dead device (its
    /// notifier in the address space, the device kept alive). A `suspend()` on a torn-down
    /// device also showed the gate as suspended for a moment, letting a bind through. The
    /// binder races `shutdown()` and then `suspend()` calls, bounded in rounds.
    @Test func bindingRacingTeardownLeavesNoViewBound() throws {
        let memory = try makeMemory(mib: 64)
        var leaked = 0, rounds = 0
        let deadline = ContinuousClock.now + .seconds(3)
        while rounds < 40 && leaked == 0 && ContinuousClock.now < deadline {
            rounds += 1
            let gpu = try makeDevice(memory, vramMiB: 2)
            let stop = Atomic<Bool>(false)
            let bound = Atomic<Int>(0)
            let spaces = NIOLockedValueBox<[AddressSpace]>([])
            let binder = TestThread {
                var n = 0
                while !stop.load(ordering: .relaxed) && n < 100_000 {
                    n += 1
                    let mm = AddressSpace(memory: memory)
                    spaces.withLockedValue { $0.append(mm) }
                    if (try? gpu.bind(mm)) != nil { bound.add(1, ordering: .relaxed) }
                }
            }
            while bound.load(ordering: .relaxed) < 4 { usleep(100) }
            try gpu.shutdown()
            for _ in 0..<300 { _ = try? gpu.suspend() }
            stop.store(true, ordering: .relaxed)
            #expect(binder.join(seconds: 20))
            leaked = spaces.withLockedValue { all in all.filter { gpu.addressSpace(for: $0) != nil }.count }
            for mm in spaces.withLockedValue({ $0 }) { gpu.unbind(mm) }
        }
        #expect(leaked == 0, "round \(rounds): \(leaked) view(s) bound to a torn-down device")
    }

    /// `resume()` racing `suspend()`: it reopened the device while the suspend was still
    /// evicting, so a migration started right after it ran in the middle of the eviction,
    /// which then evicted those pages too (or threw `.busy`). The three lifecycle calls are
    /// serialized now: the resume waits until the suspend has finished. The resuming
    /// thread starts at the suspend's first eviction batch.
    @Test func resumeRacingSuspendWaitsForTheEviction() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 16
        let gpuBox = Late<Device>()
        let (mm2, b, pattern2) = try makeProcess(memory, pages: 16, seed: 9)
        let migratedAfterResume = Atomic<Int>(-1)
        let resumer = NIOLockedValueBox<TestThread?>(nil)
        let hook = StepHook(matches: { $0.kind == .fenceWaitBegin && $0.direction == .evict }) {
            let thread = TestThread {
                guard let gpu = gpuBox.value else { return }
                do {
                    try gpu.resume()
                    migratedAfterResume.store(try gpu.migrateToDevice(mm2, range: range(b, pages: 16)).migrated,
                                              ordering: .relaxed)
                } catch {}
            }
            resumer.withLockedValue { $0 = thread }
            // Long enough for it to finish, had it not waited (not `join`: that is for the test).
            for _ in 0..<500 where migratedAfterResume.load(ordering: .relaxed) < 0 { usleep(1000) }
        }
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: hook)
        defer { try? gpu.shutdown() }
        gpuBox.value = gpu
        let (mm1, a, pattern1) = try makeProcess(memory, pages: 64, seed: 8)
        #expect(try gpu.migrateToDevice(mm1, range: range(a, pages: 64)).migrated == 64)

        #expect(throws: Never.self) { try gpu.suspend() }
        let thread = try #require(resumer.withLockedValue { $0 })
        #expect(thread.join(seconds: 20))
        #expect(!gpu.isSuspended)
        #expect(migratedAfterResume.load(ordering: .relaxed) == 16)
        #expect(gpu.residentPages(mm1, a, pages: 64) == 0, "the suspend evicted every page it found")
        #expect(gpu.residentPages(mm2, b, pages: 16) == 16, "the migration after the resume stays in VRAM")
        #expect(try pattern1.cpuMismatches(mm1, a, pages: 64) == [])
        #expect(try pattern2.cpuMismatches(mm2, b, pages: 16) == [])
        #expect(gpu.checkInvariants().isEmpty)
    }

    /// Two observers in one.
    final class Both: MigrationObserver, @unchecked Sendable {
        let first: any MigrationObserver, second: any MigrationObserver
        init(_ first: any MigrationObserver, _ second: any MigrationObserver) {
            self.first = first
            self.second = second
        }
        func observe(_ event: MigrationEvent) {
            first.observe(event)
            second.observe(event)
        }
    }
}
