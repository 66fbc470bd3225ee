import DeviceEmu
import HostMM
import NIOConcurrencyHelpers
import Testing

/// Races against the mirror's own accesses: `dmirror_fault` (READ/WRITE) and
/// `dmirror_exclusive` (EXCLUSIVE), pinned at the steps they report.
extension MirrorRaceTests {
    /// `munmap` between a READ's fault and its copy (`gpuFaultResolved`): nothing is locked
    /// there, so the unmap runs while the read is held and its invalidation erases the
    /// entries just stored; the read's next pass finds no VMA: `EFAULT`, buffer untouched.
    @Test func munmapBetweenAReadsFaultAndItsCopy() throws {
        let rig = try MirrorRaceRig()
        try rig.probe.arm(at: .init(.gpuFaultResolved, direction: MigrationEvent.Direction.none), hold: Self.longHold) {
            try? rig.mm.munmap(rig.a, length: MirrorRaceRig.pages * pageSize)
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: MirrorRaceRig.pages * pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0x5A)
        #expect(throws: MirrorError.fault) { try rig.fd0.read(rig.a, npages: MirrorRaceRig.pages, into: buffer) }
        #expect(buffer.allSatisfy { $0 == 0x5A }, "a failed READ wrote the caller's buffer")
        #expect(rig.probe.outcome == .finishedWhileHeld)
        #expect(rig.fd0.mappedPageCount == 0)
        rig.checkQuiescent("munmap at gpuFaultResolved")
        rig.teardown("munmap at gpuFaultResolved")
    }

    /// A CPU store to a page a WRITE has just faulted in (held at `gpuFaultResolved`, before
    /// its copy through the entries): the entry stays valid (same page, writable), and the
    /// device's write, which comes later, is what the page holds.
    @Test func aCPUWriteBetweenAWritesFaultAndItsCopy() throws {
        let rig = try MirrorRaceRig()
        try rig.probe.arm(at: .init(.gpuFaultResolved, direction: MigrationEvent.Direction.none), hold: Self.longHold) {
            try? rig.mm.write(at: rig.address(MirrorRaceRig.hot), bytes: Self.written)
        }
        let device = MirrorRaceRig.filled(0xC3)
        let r = try device.withUnsafeBytes { b in try rig.fd0.write(rig.address(MirrorRaceRig.hot), npages: 1, from: b) }
        #expect(r.cpages == 1 && r.faults == 1)
        #expect(rig.probe.outcome == .finishedWhileHeld)
        #expect(rig.cpuPage(MirrorRaceRig.hot) == device)
        #expect(rig.patternMismatches(except: [MirrorRaceRig.hot]).isEmpty)
        rig.checkQuiescent("CPU write at gpuFaultResolved")
        rig.teardown("CPU write at gpuFaultResolved")
    }

    /// A CPU store while EXCLUSIVE holds a page it just made device-exclusive (locked, not
    /// yet in the mirror): the CPU fault that restores the entry waits for the page lock,
    /// so the mirror maps the page atomic first and the restore's invalidation then erases
    /// that entry. Never a stale atomic entry over a CPU-writable page; the store lands.
    @Test func aCPUWriteWhileAPageIsBeingTakenExclusive() throws {
        let rig = try MirrorRaceRig()
        try rig.probe.arm(at: .init(.deviceExclusive), hold: Self.hold) {
            try? rig.mm.write(at: rig.address(MirrorRaceRig.hot), bytes: Self.written)
        }
        let outcome: Result<Int, MirrorError>
        do throws(MirrorError) { outcome = .success(try rig.fd0.makeExclusive(rig.address(MirrorRaceRig.hot), npages: 1).cpages) } catch {
            outcome = .failure(error)
        }
        #expect(rig.probe.waitForAction())
        #expect(rig.probe.outcome == .finishedAfterHold, "the CPU restored the entry under the held page lock")
        // The read-back races the restore: cpages 1, or ENOENT once the entry is erased.
        #expect(outcome == .success(1) || outcome == .failure(.noEntry), "\(outcome)")
        #expect(rig.cpuPage(MirrorRaceRig.hot) == Self.written)
        #expect(rig.fd0.entry(at: rig.address(MirrorRaceRig.hot)) == nil, "a stale atomic entry survived the CPU's store")
        #expect(throws: Never.self) { try rig.fd0.checkExclusive(rig.address(MirrorRaceRig.hot), npages: 1) }
        #expect(rig.mm.pageTableEntry(rig.address(MirrorRaceRig.hot)).kind == .present)
        rig.checkQuiescent("CPU write at deviceExclusive")
        rig.teardown("CPU write at deviceExclusive")
    }

    /// The other open's MIGRATE_TO_DEV while EXCLUSIVE holds its page: the page is locked
    /// and its entry device-exclusive, so the migration skips it (`migrate_vma_collect`
    /// skips exclusive entries) and the other open reads back `ENOENT`; the atomic mapping
    /// stands, and the data is intact.
    @Test func theOtherOpenMigratingAPageBeingTakenExclusive() throws {
        let rig = try MirrorRaceRig()
        let migrated = NIOLockedValueBox<String>("not run")
        try rig.probe.arm(at: .init(.deviceExclusive), hold: Self.hold) {
            do throws(MirrorError) {
                _ = try rig.fd1.migrateToDevice(rig.address(MirrorRaceRig.hot), npages: 1)
                migrated.withLockedValue { $0 = "ok" }
            } catch { migrated.withLockedValue { $0 = "\(error)" } }
        }
        #expect(try rig.fd0.makeExclusive(rig.address(MirrorRaceRig.hot), npages: 1).cpages == 1)
        #expect(rig.probe.waitForAction())
        #expect(migrated.withLockedValue { $0 } == "\(MirrorError.noEntry)")
        #expect(rig.fd0.entry(at: rig.address(MirrorRaceRig.hot))?.tag == .atomic)
        #expect(throws: MirrorError.permissionDenied) { try rig.fd0.checkExclusive(rig.address(MirrorRaceRig.hot), npages: 1) }
        rig.checkQuiescent("other open's migration at deviceExclusive")
        #expect(rig.patternMismatches().isEmpty)
        rig.teardown("other open's migration at deviceExclusive")
    }
}
