import DeviceEmu
import HostMM
import NIOConcurrencyHelpers
import Testing

/// Model bugs `MirrorRaceTests` found, each reduced to its smallest interleaving.
@Suite(.timeLimit(.minutes(1))) struct MirrorRaceRegressionTests {
    /// `close()` while the open's MIGRATE_TO_DEV was between its copies and its finalize:
    /// the release ran at once, so the command failed with `EINVAL` and its 16 pages stayed
    /// on the device after the close had "evicted everything". An ioctl holds the file, so
    /// in the kernel the release runs after the command, which completes normally.
    @Test func closeDuringAMigrationReleasesWhenTheCommandReturns() throws {
        let rig = try MirrorRaceRig()
        try rig.probe.arm(at: .init(.deviceMap, direction: .toDevice), hold: .milliseconds(20)) { rig.fd0.close() }
        #expect(try rig.fd0.migrateToDevice(rig.a, npages: MirrorRaceRig.pages).cpages == MirrorRaceRig.pages)
        #expect(rig.probe.waitForAction())
        #expect(!rig.fd0.isOpen)
        #expect(throws: MirrorError.invalidArgument) { try rig.fd0.migrateToSystem(rig.a, npages: 1) }
        #expect(rig.device.inUsePageCount == 0, "the release did not evict the command's pages")
        #expect(rig.patternMismatches().isEmpty)
        rig.teardown("close at deviceMap")
    }

    /// `shutdown()` while a migration held its new device pages locked (after
    /// `migrate_vma_pages`): the eviction skipped them, `retire` failed, and checked mode
    /// reported `device-page-leaked`. Shutdown now waits for migrations in flight.
    @Test func shutdownWaitsForAMigrationInFlight() throws {
        let rig = try MirrorRaceRig()
        try rig.probe.arm(at: .init(.migratePagesEnd, direction: .toDevice), hold: .milliseconds(20)) {
            rig.device.shutdown()
        }
        _ = try? rig.fd0.migrateToDevice(rig.a, npages: MirrorRaceRig.pages)
        #expect(rig.probe.waitForAction())
        #expect(rig.probe.outcome == .finishedAfterHold)
        #expect(rig.device.inUsePageCount == 0)
        #expect(rig.memory.checker?.violations.isEmpty == true, "\(rig.memory.checker?.violations.prefix(2) ?? [])")
        #expect(rig.patternMismatches().isEmpty)
        rig.teardown("shutdown at migratePagesEnd")
    }

    /// The same for a CPU fault reported done (`cpuFaultEnd`) but not yet returned: HostMM
    /// still held the device page locked and referenced.
    @Test func shutdownWaitsForACPUFaultToReturn() throws {
        let rig = try MirrorRaceRig()
        _ = try rig.fd0.migrateToDevice(rig.a, npages: MirrorRaceRig.pages)
        try rig.probe.arm(at: .init(.cpuFaultEnd, direction: .toRAM), hold: .milliseconds(20)) { rig.device.shutdown() }
        #expect(rig.cpuPage(MirrorRaceRig.hot) == rig.pattern.page(MirrorRaceRig.hot))
        #expect(rig.probe.waitForAction())
        #expect(rig.device.inUsePageCount == 0)
        #expect(rig.memory.checker?.violations.isEmpty == true, "\(rig.memory.checker?.violations.prefix(2) ?? [])")
        #expect(rig.patternMismatches().isEmpty)
        rig.teardown("shutdown at cpuFaultEnd")
    }

    /// EXCLUSIVE while a CPU fault was bringing the same device page back (held at
    /// `cpuFaultBegin`: the fault holds the page): `make_device_exclusive`'s GUP loop saw
    /// its own fault make no progress 16 times and gave up with `EBUSY`. GUP retries for as
    /// long as `faultin_page` returns 0 (`do_swap_page`'s trylock failing), so the command
    /// waits for the fault and takes the page (found by `dmem-bench race --driver mirror
    /// --flow mirror-cpu-fault --action exclusive`).
    @Test func exclusiveWaitsForACPUFaultOnTheSamePage() throws {
        let rig = try MirrorRaceRig()
        _ = try rig.fd0.migrateToDevice(rig.a, npages: MirrorRaceRig.pages)
        let hot = rig.address(MirrorRaceRig.hot)
        let result = NIOLockedValueBox<Result<MirrorResult, MirrorError>?>(nil)
        try rig.probe.arm(at: .init(.cpuFaultBegin, direction: .toRAM), hold: .milliseconds(20)) {
            let r: Result<MirrorResult, MirrorError>
            do throws(MirrorError) { r = .success(try rig.fd1.makeExclusive(hot, npages: 1)) } catch { r = .failure(error) }
            result.withLockedValue { $0 = r }
        }
        #expect(rig.cpuPage(MirrorRaceRig.hot) == rig.pattern.page(MirrorRaceRig.hot))
        #expect(rig.probe.waitForAction())
        #expect(result.withLockedValue { $0 } == .success(MirrorResult(cpages: 1, faults: 0)))
        // Two orders are right: the CPU read's replay came first and the page stays the
        // mirror's atomic entry; or EXCLUSIVE took the page between `migrate_to_ram` and
        // that replay, which then met the device-exclusive entry and restored it
        // (`remove_device_exclusive_entry`: MMU_NOTIFY_EXCLUSIVE drops the mirror's entry).
        // The second came once in a loaded full run.
        let entry = rig.fd1.entry(at: hot)?.tag
        let pte = rig.mm.pageTableEntry(hot).kind
        #expect((entry == .atomic && pte == .deviceExclusive) || (entry == nil && pte == .present),
                "mirror entry \(String(describing: entry)), CPU entry \(pte)")
        #expect(rig.patternMismatches().isEmpty)
        rig.teardown("exclusive at cpuFaultBegin")
    }
}
