import DeviceEmu
import Glibc
@testable import HostMM
import NIOConcurrencyHelpers
import Testing

/// A CPU fault on a device-private page holds a page reference from before the driver's
/// `migrateToRAM` until after it returns (`do_swap_page`'s `get_page` … `put_page`). The
/// pgmap counts such faults (`DevicePagemap.faultsInFlight`), and an eviction that finds
/// pages busy waits for them, as `memunmap_pages` waits for the pgmap's references —
/// instead of calling a page pinned because its fault thread was descheduled for a moment
/// after the driver returned.
@Suite(.timeLimit(.minutes(1))) struct FaultReferenceTests {
    /// Inside the driver's `migrateToRAM` the fault is counted on the page's pgmap; once the
    /// access returned, it is not.
    @Test func aCPUFaultIsCountedOnItsPagemapWhileItHoldsThePage() throws {
        let memory = try makeMemory(mib: 64)
        let probe = StepProbe()
        let gpu = try makeDevice(memory, vramMiB: 4, observer: probe)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 4, seed: 3)
        try gpu.migrateToDevice(mm, range: range(a, pages: 4))
        let pagemap = try #require(memory.pagemap(of: mm.pageTableEntry(a).pfn))
        #expect(pagemap.faultsInFlight == 0 && gpu.vram.faultsInFlight == 0)
        let seen = NIOLockedValueBox<(Int, Int)?>(nil)
        for kind in [MigrationEvent.Kind.cpuFaultBegin, .finalizeEnd, .cpuFaultEnd] {
            seen.withLockedValue { $0 = nil }
            let page = [MigrationEvent.Kind.cpuFaultBegin: 0, .finalizeEnd: 1, .cpuFaultEnd: 2][kind]!
            try probe.arm(at: .init(kind, direction: .toRAM), hold: .seconds(5)) {
                seen.withLockedValue { $0 = (pagemap.faultsInFlight, gpu.vram.faultsInFlight) }
            }
            var buffer = [UInt8](repeating: 0, count: pageSize)
            try buffer.withUnsafeMutableBytes { try mm.read(at: a + UInt64(page * pageSize), into: $0) }
            #expect(probe.waitForAction())
            #expect(seen.withLockedValue { $0 }.map { [$0.0, $0.1] } == [1, 1], "at \(kind)")
            #expect(pattern.matches(page, buffer))
            #expect(pagemap.faultsInFlight == 0 && gpu.vram.faultsInFlight == 0, "after the fault at \(kind)")
        }
    }

    /// A suspend meets a page a CPU fault still holds after the driver returned (here the
    /// test holds the page's reference and the pgmap's fault count for 100 ms, as a fault
    /// thread descheduled between `migrateToRAM`'s return and its `put_page` would). It
    /// waits, then evicts the page. Before the count, the suspend spent its 20 passes of
    /// 1 ms, called the page pinned and threw `.busy`, leaving the device suspended.
    @Test(arguments: [false, true]) func aSuspendWaitsForAFaultStillHoldingItsPage(shutdown: Bool) throws {
        let memory = try makeMemory(mib: 64)
        let gpu = try makeDevice(memory, vramMiB: 4)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 8, seed: 5)
        try gpu.migrateToDevice(mm, range: range(a, pages: 8))
        let pfn = mm.pageTableEntry(a + UInt64(3 * pageSize)).pfn
        let pagemap = try #require(memory.pagemap(of: pfn))
        pagemap.faultReferences.add(1, ordering: .sequentiallyConsistent)
        memory.getPage(pfn)
        let release = TestThread {
            usleep(100_000)
            memory.putPage(pfn)
            pagemap.faultReferences.subtract(1, ordering: .sequentiallyConsistent)
        }
        if shutdown {
            try gpu.shutdown()
        } else {
            try gpu.suspend()
            #expect(gpu.isSuspended)
            try gpu.resume()
        }
        #expect(gpu.vram.inUsePageCount == 0 && gpu.counters[.pagesEvicted] == 8)
        #expect(entryKinds(mm, a, pages: 8) == [.present: 8])
        #expect(try pattern.cpuMismatches(mm, a, pages: 8).isEmpty)
        #expect(release.join())
        #expect(pagemap.faultsInFlight == 0)
    }

    /// The same for the test_hmm model: `MirrorDevice.shutdown()` waits for a fault still
    /// holding its page, then evicts it (before: the page stayed on the device and checked
    /// mode reported it leaked at teardown).
    @Test func aMirrorShutdownWaitsForAFaultStillHoldingItsPage() throws {
        let rig = try MirrorRaceRig()
        _ = try rig.fd0.migrateToDevice(rig.a, npages: MirrorRaceRig.pages)
        let pfn = rig.mm.pageTableEntry(rig.address(MirrorRaceRig.hot)).pfn
        let pagemap = try #require(rig.memory.pagemap(of: pfn))
        pagemap.faultReferences.add(1, ordering: .sequentiallyConsistent)
        rig.memory.getPage(pfn)
        let release = TestThread {
            usleep(100_000)
            rig.memory.putPage(pfn)
            pagemap.faultReferences.subtract(1, ordering: .sequentiallyConsistent)
        }
        rig.device.shutdown()
        #expect(release.join())
        #expect(rig.device.inUsePageCount == 0)
        #expect(rig.patternMismatches().isEmpty)
        rig.teardown("shutdown while a fault held a page")
    }
}
