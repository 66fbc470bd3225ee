import DeviceEmu
import HostMM
import NIOConcurrencyHelpers
import Testing

/// The device's side of `MirrorRaceTests`: another open of the same mm migrating or
/// snapshotting the range, `RELEASE`, `close()` of the flow's open and `shutdown()` of
/// the device, each pinned at every step of each flow.
extension MirrorRaceTests {
    /// Another open's migration to the device: while the flow holds the pages (migration
    /// entries, page locks) it collects none of them; the pattern survives either way.
    @Test(arguments: MirrorFlow.allCases)
    func theOtherOpenMigratingToTheDevice(_ flow: MirrorFlow) throws {
        let results = NIOLockedValueBox<[String]>([])
        try pinEachStep(flow, hold: Self.longHold, { rig in
            do throws(MirrorError) { _ = try rig.fd1.migrateToDevice(rig.a, npages: MirrorRaceRig.pages) } catch {
                if error != .noEntry { results.withLockedValue { $0.append("\(error)") } }
            }
        }) { rig, _, outcome, note in
            #expect(rig.probe.outcome == .finishedWhileHeld, "\(note): \(rig.probe.outcome)")
            #expect(rig.patternMismatches().isEmpty, "\(note)")
            if flow == .cpuFault { #expect(outcome == .bytes(rig.pattern.page(MirrorRaceRig.hot)), "\(note)") }
        }
        #expect(results.withLockedValue { $0 }.isEmpty, "the other open failed otherwise than ENOENT")
    }

    /// Another open's migration back to system memory: the pages the flow holds are
    /// skipped; the pattern survives. The pages it does move were migrated by the flow's
    /// open, whose entries test_hmm leaves naming them (it erases the issuing open's only,
    /// and the shared owner filters the invalidation): checked mode reports exactly that.
    @Test(arguments: MirrorFlow.allCases)
    func theOtherOpenMigratingToSystem(_ flow: MirrorFlow) throws {
        let results = NIOLockedValueBox<[String]>([])
        try pinEachStep(flow, kernelQuirks: [.devicePTEMapsMigratedPage], hold: Self.longHold, { rig in
            do { _ = try rig.fd1.migrateToSystem(rig.a, npages: MirrorRaceRig.pages) } catch {
                results.withLockedValue { $0.append("\(error)") }
            }
        }) { rig, _, outcome, note in
            #expect(rig.probe.outcome == .finishedWhileHeld, "\(note): \(rig.probe.outcome)")
            #expect(rig.patternMismatches().isEmpty, "\(note)")
            if flow == .cpuFault { #expect(outcome == .bytes(rig.pattern.page(MirrorRaceRig.hot)), "\(note)") }
        }
        #expect(results.withLockedValue { $0 }.isEmpty)
    }

    /// A snapshot through the other open: it faults nothing and never fails; a page under
    /// migration shows as not valid (`HMM_DMIRROR_PROT_NONE`), every other byte is a code a
    /// page of this test can have.
    @Test(arguments: MirrorFlow.allCases)
    func aSnapshotDuringTheFlow(_ flow: MirrorFlow) throws {
        let snapshots = NIOLockedValueBox<[Result<[MirrorProtection], MirrorError>]>([])
        try pinEachStep(flow, hold: Self.longHold, { rig in
            let r: Result<[MirrorProtection], MirrorError>
            do throws(MirrorError) { r = .success(try rig.fd1.snapshot(rig.a, npages: MirrorRaceRig.pages)) } catch { r = .failure(error) }
            snapshots.withLockedValue { $0.append(r) }
        }) { rig, _, _, note in
            #expect(rig.probe.outcome == .finishedWhileHeld, "\(note): \(rig.probe.outcome)")
            #expect(rig.patternMismatches().isEmpty, "\(note)")
        }
        let allowed: Set<MirrorProtection> = [.none, .read, .write, .devicePrivateLocal | .write, .devicePrivateLocal | .read]
        for r in snapshots.withLockedValue({ $0 }) {
            guard case .success(let bytes) = r else { Issue.record("snapshot failed: \(r)"); continue }
            #expect(bytes.count == MirrorRaceRig.pages && bytes.allSatisfy { allowed.contains($0) }, "\(bytes)")
        }
    }

    /// `RELEASE` (evict every device page) during the flow: pages the flow holds locked are
    /// skipped, as `migrate_device_range`'s try-lock skips them; the pattern survives.
    @Test(arguments: MirrorFlow.allCases)
    func releaseDuringTheFlow(_ flow: MirrorFlow) throws {
        try pinEachStep(flow, hold: Self.longHold, { rig in
            _ = try? rig.fd1.release(rig.a, npages: 1)
        }) { rig, _, outcome, note in
            #expect(rig.probe.outcome == .finishedWhileHeld, "\(note): \(rig.probe.outcome)")
            #expect(rig.patternMismatches().isEmpty, "\(note)")
            switch flow {
            case .migrateToDevice: #expect(Self.readBackOrNoEntry(outcome), "\(note): \(outcome)")
            case .migrateToSystem:
                guard case .cpages(let n) = outcome else { Issue.record("\(note): \(outcome)"); return }
                #expect(n <= MirrorRaceRig.pages, "\(note)")
            case .cpuFault: #expect(outcome == .bytes(rig.pattern.page(MirrorRaceRig.hot)), "\(note)")
            }
        }
    }

    /// `close()` of the flow's open while its command runs: in the kernel the ioctl holds a
    /// reference to the file, so `dmirror_fops_release` runs when the command returns — the
    /// command completes as if nothing happened, then every device page is evicted.
    @Test(arguments: MirrorFlow.allCases)
    func closeOfTheOpenDuringItsCommand(_ flow: MirrorFlow) throws {
        try pinEachStep(flow, { rig in
            rig.fd0.close()
        }) { rig, _, outcome, note in
            #expect(!rig.fd0.isOpen)
            #expect(rig.device.inUsePageCount == 0, "\(note): \(rig.device.inUsePageCount) pages left on the device")
            #expect(rig.patternMismatches().isEmpty, "\(note)")
            switch flow {
            case .migrateToDevice: #expect(outcome == .cpages(MirrorRaceRig.pages), "\(note): \(outcome)")
            case .migrateToSystem: #expect(outcome == .cpages(MirrorRaceRig.pages), "\(note): \(outcome)")
            case .cpuFault: #expect(outcome == .bytes(rig.pattern.page(MirrorRaceRig.hot)), "\(note)")
            }
        }
    }

    /// `shutdown()` of the device during a flow: every device page comes back, none is
    /// left behind a flow that held it, and the data survives.
    @Test(arguments: MirrorFlow.allCases)
    func shutdownOfTheDeviceDuringTheFlow(_ flow: MirrorFlow) throws {
        try pinEachStep(flow, { rig in
            rig.device.shutdown()
        }) { rig, _, _, note in
            #expect(rig.device.inUsePageCount == 0, "\(note): \(rig.device.inUsePageCount) pages left on the device")
            #expect(rig.patternMismatches().isEmpty, "\(note)")
        }
    }
}
