import DeviceEmu
import Glibc
import HostMM
import NIOConcurrencyHelpers
import Testing

/// `suspend()` and `shutdown()` against work already in flight: they refuse new
/// migrations and GPU accesses but let those in flight finish before judging what is left
/// in VRAM — nouveau flushes its GPU fault work (`nouveau_svm_suspend`) before
/// `nouveau_dmem_suspend`, and `memunmap_pages` waits for the pgmap's last reference.
/// (Found by `dmem-bench race`.)
@Suite(.timeLimit(.minutes(1))) struct LifecycleRaceTests {
    /// A GPU read admitted before the suspend faulted, and its fault's migration entered
    /// the device gate a second time: the suspend had closed it, so the migration was
    /// refused and the read failed with `.suspended`, although the suspend was waiting for
    /// that very access to finish. The fault now migrates inside the access's admission.
    @Test func aGPUFaultInFlightWhenTheDeviceSuspendsCompletes() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.gpuFault = .migrateToVRAM(pages: 16)
        let probe = StepProbe()
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: probe)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 16, seed: 5)
        let space = try gpu.bind(mm)
        let suspender = NIOLockedValueBox<TestThread?>(nil)
        let suspendResult = NIOLockedValueBox<String>("not run")
        try probe.arm(at: .init(.gpuFault), hold: .seconds(20)) {
            suspender.withLockedValue {
                $0 = TestThread { suspendAndResume(gpu, reportingTo: suspendResult) }
            }
            // Hold the fault until the suspend has closed the gate: it then waits for this access.
            var polls = 0
            while !gpu.isSuspended && polls < 20_000 { usleep(100); polls += 1 }
        }
        let read: Result<[UInt8], DeviceError>
        do { read = .success(try space.read(at: a + UInt64(pageSize), count: pageSize)) } catch { read = .failure(error) }
        #expect(probe.waitForAction(timeout: .seconds(20)))
        #expect(probe.outcome == .finishedWhileHeld, "the suspend had not closed the gate while the fault was held")
        let joined = suspender.withLockedValue { $0 }?.join(seconds: 20)
        #expect(joined == true)
        #expect(suspendResult.withLockedValue { $0 } == "ok")
        #expect(try read.get() == pattern.page(1))
        // The fault's migration completed, then the suspend evicted it: everything is back in RAM.
        #expect(gpu.counters[.pagesToDevice] == 16 && gpu.counters[.pagesEvicted] == 16)
        #expect(gpu.vram.inUsePageCount == 0)
        #expect(try pattern.cpuMismatches(mm, a, pages: 16).isEmpty)
        #expect(gpu.checkInvariants().isEmpty)
    }

    /// A teardown while a CPU fault's `migrate_to_ram` (which passes no device gate) held
    /// its VRAM page locked: the teardown's eviction skipped the page for its few passes
    /// (about 20 ms), then threw `.busy` and checked mode reported `device-page-leaked`
    /// for a page the fault freed moments later. Teardown now waits for migrations in
    /// flight, as `memunmap_pages` waits for the pgmap's references to drop; a page a
    /// driver really leaked is still reported (`CheckedDeviceTests`). The fault is held at
    /// its first step for 200 ms here.
    @Test func aTeardownWaitsForACPUFaultInFlight() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 17, checked: .on)
        var policy = MigrationPolicy()
        policy.batchPages = 16
        let probe = StepProbe()
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: probe)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 32, seed: 11)
        try gpu.migrateToDevice(mm, range: range(a, pages: 32))
        let shutdownResult = NIOLockedValueBox<String>("not run")
        try probe.arm(at: .init(.cpuFaultBegin, direction: .toRAM), hold: .milliseconds(200)) {
            do {
                try gpu.shutdown()
                shutdownResult.withLockedValue { $0 = "ok" }
            } catch { shutdownResult.withLockedValue { $0 = "\(error)" } }
        }
        #expect(try mm.read(at: a + UInt64(pageSize), count: pageSize) == pattern.page(1))
        #expect(probe.waitForAction(timeout: .seconds(20)))
        #expect(shutdownResult.withLockedValue { $0 } == "ok")
        #expect(probe.outcome == .finishedAfterHold, "the teardown returned while the fault held its page")
        #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations.prefix(3) ?? [])")
        #expect(gpu.vram.inUsePageCount == 0)
        #expect(try pattern.cpuMismatches(mm, a, pages: 32).isEmpty)
    }

    /// The same for a suspend racing an eviction that holds its batch's pages locked (here
    /// after its setup, for 200 ms): the suspend threw `.busy` — documented for pinned
    /// pages — and left the device suspended, though the other eviction moved the pages out.
    @Test func aSuspendWaitsForAnEvictionInFlight() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.batchPages = 16
        let probe = StepProbe()
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: probe)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 32, seed: 9)
        try gpu.migrateToDevice(mm, range: range(a, pages: 32))
        let suspendResult = NIOLockedValueBox<String>("not run")
        try probe.arm(at: .init(.setupEnd, direction: .evict), hold: .milliseconds(200)) {
            suspendAndResume(gpu, reportingTo: suspendResult)
        }
        gpu.evictAll()
        #expect(probe.waitForAction(timeout: .seconds(20)))
        #expect(suspendResult.withLockedValue { $0 } == "ok")
        #expect(!gpu.isSuspended)
        #expect(probe.outcome == .finishedAfterHold, "the suspend returned while the other eviction held its pages")
        #expect(gpu.vram.inUsePageCount == 0)
        #expect(gpu.counters[.pagesEvicted] == 32, "\(gpu.counters.snapshot)")
        #expect(try pattern.cpuMismatches(mm, a, pages: 32).isEmpty)
        #expect(gpu.checkInvariants().isEmpty)
    }

    /// A page that has left VRAM but whose last reference is not dropped yet is unlocked
    /// and mapped nowhere: `migrate_device_range` takes it, and once the other reference is
    /// gone its migration succeeds again — stale VRAM copied into a RAM page nobody maps —
    /// and the eviction counted it a second time. The test above once saw `pagesEvicted`
    /// above 32: the suspend's pass met a page `evictAll`'s finalize had unlocked but not yet
    /// put. Here the window is the CPU fault's (`do_swap_page` puts the page after
    /// `migrate_to_ram` returns), pinned by two probes: the fault is held after its migration
    /// until the suspend's eviction has collected, and that eviction is held after its
    /// collection until the fault has returned.
    @Test func aSuspendDoesNotEvictAPageAFaultAlreadyMoved() throws {
        let memory = try makeMemory(mib: 64)
        let evictionProbe = StepProbe()
        let faultProbe = StepProbe(forwardingTo: evictionProbe)
        let gpu = try makeDevice(memory, vramMiB: 4, observer: faultProbe)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 16, seed: 13)
        try gpu.migrateToDevice(mm, range: range(a, pages: 16))
        let faultReturned = NIOLockedValueBox(false)
        let suspender = NIOLockedValueBox<TestThread?>(nil)
        let suspendResult = NIOLockedValueBox<String>("not run")
        // The eviction's one batch (512 pages: the whole chunk) holds the pages it collected
        // until the fault has dropped its reference on the page it moved.
        try evictionProbe.arm(at: .init(.setupEnd, direction: .evict), hold: .seconds(20)) {
            var polls = 0
            while !faultReturned.withLockedValue({ $0 }) && polls < 200_000 { usleep(100); polls += 1 }
        }
        // The fault, its page moved and unlocked but still referenced, waits for that collection.
        try faultProbe.arm(at: .init(.cpuFaultEnd, direction: .toRAM), hold: .seconds(20)) {
            suspender.withLockedValue {
                $0 = TestThread { suspendAndResume(gpu, reportingTo: suspendResult) }
            }
            var polls = 0
            while evictionProbe.firedAt == nil && polls < 200_000 { usleep(100); polls += 1 }
        }
        #expect(try mm.read(at: a + UInt64(pageSize), count: pageSize) == pattern.page(1))
        faultReturned.withLockedValue { $0 = true }
        #expect(faultProbe.waitForAction(timeout: .seconds(20)))
        #expect(evictionProbe.waitForAction(timeout: .seconds(20)))
        let joined = suspender.withLockedValue { $0 }?.join(seconds: 20)
        #expect(joined == true)
        #expect(suspendResult.withLockedValue { $0 } == "ok")
        #expect(faultProbe.outcome == .finishedWhileHeld, "the suspend's eviction had not collected while the fault was held")
        #expect(evictionProbe.outcome == .finishedWhileHeld)
        #expect(evictionProbe.firedAt?.pages == 15, "the page the fault moved was collected for eviction")
        #expect(gpu.counters[.pagesToRAM] == 1)
        #expect(gpu.counters[.pagesEvicted] == 15, "\(gpu.counters.snapshot)")
        #expect(gpu.vram.inUsePageCount == 0)
        #expect(try pattern.cpuMismatches(mm, a, pages: 16).isEmpty)
        #expect(gpu.checkInvariants().isEmpty)
    }
}

/// Suspends and resumes `gpu`, leaving "ok" or the error in `result`.
private func suspendAndResume(_ gpu: Device, reportingTo result: NIOLockedValueBox<String>) {
    do {
        try gpu.suspend()
        try gpu.resume()
        result.withLockedValue { $0 = "ok" }
    } catch { result.withLockedValue { $0 = "\(error)" } }
}
