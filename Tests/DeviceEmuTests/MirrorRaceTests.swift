import DeviceEmu
import HostMM
import NIOConcurrencyHelpers
import Testing

/// Pinned races against test_hmm's flows (migrate to device, migrate to system, the CPU
/// fault): each test holds the flow at every step it reports (`MirrorFlow.steps`, one fresh
/// machine per step) while an action runs — a CPU write, `munmap`, `MADV_DONTNEED`, `fork`,
/// `mprotect`, the other open of the same mm migrating or snapshotting, `RELEASE`,
/// `close()`, the device's `shutdown()` — and asserts what the kernel would do: the data
/// (a known pattern per page), HostMM's and the device's invariants, checked mode, and that
/// every device page comes back after teardown.
///
/// Locks decide the interleavings: the migrations and the fault hold the mmap lock for
/// read from setup to finalize, so `munmap`, `fork` and `mprotect` (write lock) run after
/// the flow; between setup and finalize the pages are locked behind migration entries, so
/// a CPU access to one sleeps until finalize; `MADV_DONTNEED` and the other open (read
/// lock, try-locks) run while the flow is held.
@Suite(.timeLimit(.minutes(1))) struct MirrorRaceTests {
    /// For actions that block on what the held flow holds: the flow goes on after it.
    static let hold: Duration = .milliseconds(40)
    /// For actions expected to finish while the flow is held: long enough never to run out
    /// (the flow waits only until the action returns), so `finishedWhileHeld` is no timing.
    static let longHold: Duration = .seconds(10)

    /// Runs `flow` held at each of its steps by `action`, then `check`, then the quiescent
    /// checks and the teardown.
    func pinEachStep(_ flow: MirrorFlow, kind: MemoryType = .devicePrivate, kernelQuirks: Set<ProtocolRule> = [],
                     hold: Duration = Self.hold, _ action: @escaping @Sendable (MirrorRaceRig) -> Void,
                     check: (MirrorRaceRig, MigrationEvent.Kind, MirrorFlow.Outcome, String) throws -> Void) throws {
        for step in flow.steps {
            let rig = try MirrorRaceRig(kind: kind)
            rig.kernelQuirks = kernelQuirks
            try flow.prepare(rig)
            try rig.probe.arm(at: .init(step, direction: flow.direction), hold: hold) { action(rig) }
            let outcome = flow.run(rig)
            let note = "\(flow) held at \(step)"
            rig.checkQuiescent(note)
            #expect(rig.probe.firedAt?.kind == step, "\(note): the step was never reported")
            try check(rig, step, outcome, note)
            rig.teardown(note)
        }
    }

    static let written = MirrorRaceRig.filled(0xAB)
    static let zeros = MirrorRaceRig.filled(0)

    /// The migration's read-back races whatever the action did after finalize: test_hmm
    /// returns `cpages == npages`, or `-ENOENT` when an entry was dropped first.
    static func readBackOrNoEntry(_ outcome: MirrorFlow.Outcome) -> Bool {
        outcome == .cpages(MirrorRaceRig.pages) || outcome == .error(.noEntry)
    }

    // MARK: The CPU

    /// No lost write: a CPU store to a page the flow holds sleeps on the migration entry
    /// until finalize, then faults the page back if it went to the device; the page ends
    /// with the store whatever the step.
    @Test(arguments: MirrorFlow.allCases)
    func aCPUWriteToAHeldPageIsNotLost(_ flow: MirrorFlow) throws {
        try pinEachStep(flow, { rig in
            try? rig.mm.write(at: rig.address(MirrorRaceRig.hot), bytes: Self.written)
        }) { rig, step, outcome, note in
            #expect(rig.cpuPage(MirrorRaceRig.hot) == Self.written, "\(note): the write was lost")
            #expect(rig.patternMismatches(except: [MirrorRaceRig.hot]).isEmpty, "\(note)")
            switch flow {
            case .migrateToDevice: #expect(Self.readBackOrNoEntry(outcome), "\(note): \(outcome)")
            case .migrateToSystem:
                #expect(outcome == .cpages(16) || outcome == .cpages(15), "\(note): \(outcome)")
            case .cpuFault:
                #expect(outcome == .bytes(rig.pattern.page(MirrorRaceRig.hot)) || outcome == .bytes(Self.written),
                        "\(note): \(outcome)")
            }
        }
    }

    /// The same for a coherent device, whose pages the CPU maps directly.
    @Test func aCPUWriteToAHeldCoherentPageIsNotLost() throws {
        for flow in [MirrorFlow.migrateToDevice, .migrateToSystem] {
            try pinEachStep(flow, kind: .deviceCoherent, { rig in
                try? rig.mm.write(at: rig.address(MirrorRaceRig.hot), bytes: Self.written)
            }) { rig, _, _, note in
                #expect(rig.cpuPage(MirrorRaceRig.hot) == Self.written, "\(note): the write was lost")
                #expect(rig.patternMismatches(except: [MirrorRaceRig.hot]).isEmpty, "\(note)")
            }
        }
    }

    // MARK: The address space

    /// `munmap` takes the mmap lock for write: it runs after the flow, and frees every
    /// device page of the range (no close needed).
    @Test(arguments: MirrorFlow.allCases)
    func munmapWaitsForTheFlowAndFreesItsPages(_ flow: MirrorFlow) throws {
        let failures = NIOLockedValueBox<[String]>([])
        try pinEachStep(flow, { rig in
            do { try rig.mm.munmap(rig.a, length: MirrorRaceRig.pages * pageSize) } catch {
                failures.withLockedValue { $0.append("\(error)") }
            }
        }) { rig, step, outcome, note in
            #expect(rig.probe.outcome == .finishedAfterHold, "\(note): munmap ran under the flow's mmap lock")
            #expect(rig.device.inUsePageCount == 0, "\(note): munmap left device pages")
            #expect(rig.mm.findVMA(rig.a) == nil)
            switch flow {
            case .migrateToDevice: #expect(Self.readBackOrNoEntry(outcome), "\(note): \(outcome)")
            case .migrateToSystem: #expect(outcome == .cpages(16), "\(note): \(outcome)")
            case .cpuFault:
                #expect(outcome == .bytes(rig.pattern.page(MirrorRaceRig.hot)) || outcome == .error(.fault),
                        "\(note): \(outcome)")
            }
        }
        #expect(failures.withLockedValue { $0 }.isEmpty)
    }

    /// `MADV_DONTNEED` in the middle of a flow: every page reads as zero afterwards and
    /// nothing leaks. (In the model the zap waits for the flow: see the next test, and the
    /// test_hmm quirk it shows, tolerated here at the range's pages only.)
    @Test(arguments: MirrorFlow.allCases)
    func madviseDontNeedDuringTheFlowLeavesZeros(_ flow: MirrorFlow) throws {
        let failures = NIOLockedValueBox<[String]>([])
        try pinEachStep(flow, kernelQuirks: Self.dontNeedQuirks(flow), { rig in
            do { try rig.mm.madvise(rig.a, length: MirrorRaceRig.pages * pageSize, advice: .dontNeed) } catch {
                failures.withLockedValue { $0.append("\(error)") }
            }
        }) { rig, step, outcome, note in
            for p in 0..<MirrorRaceRig.pages {
                #expect(rig.cpuPage(p) == Self.zeros, "\(note): page \(p) kept data after MADV_DONTNEED")
            }
            if flow == .cpuFault {
                #expect(outcome == .bytes(Self.zeros) || outcome == .bytes(rig.pattern.page(MirrorRaceRig.hot)),
                        "\(note): \(outcome)")
            }
        }
        #expect(failures.withLockedValue { $0 }.isEmpty)
    }

    /// The kernel's interleaving: `MADV_DONTNEED` takes the mmap lock for read
    /// (`madvise_need_mmap_write` is false for it), so it zaps the range — migration
    /// entries included — while the flow is held, and a faulting read retried after the
    /// zap reads zeros. Held between setup and finalize, MIGRATE_TO_DEV maps freed pages in
    /// the mirror (above) and its read-back copies their stale bytes: `cpages == npages`.
    /// A zap of MIGRATE_TO_DEV's migration entries leaves its new device pages unmapped,
    /// so finalize frees them; but test_hmm's finalize_and_map stores them in the mirror
    /// first, with no notifier-sequence check: the mirror keeps entries to freed pages (a
    /// dangling pointer in the kernel's test driver, to be reproduced faithfully like G7's;
    /// checked mode reports exactly that).
    @Test(arguments: MirrorFlow.allCases)
    func madviseDontNeedZapsTheRangeWhileTheFlowIsHeld(_ flow: MirrorFlow) throws {
        try pinEachStep(flow, kernelQuirks: Self.dontNeedQuirks(flow), hold: Self.longHold, { rig in
            try? rig.mm.madvise(rig.a, length: MirrorRaceRig.pages * pageSize, advice: .dontNeed)
        }) { rig, step, outcome, note in
            #expect(rig.probe.outcome == .finishedWhileHeld, "\(note): \(rig.probe.outcome)")
            if flow == .cpuFault { #expect(outcome == .bytes(Self.zeros), "\(note): \(outcome)") }
            let between: Set<MigrationEvent.Kind> = [.setupEnd, .copiesSubmitted, .migratePagesBegin, .migratePagesEnd]
            if flow == .migrateToDevice && between.contains(step) {
                #expect(outcome == .cpages(MirrorRaceRig.pages), "\(note): \(outcome)")
                let dangling = rig.memory.checker?.violations.filter { $0.rule == .devicePTEMapsFreedPage }.count ?? 0
                #expect(dangling == MirrorRaceRig.pages, "\(note): \(dangling) dangling entries")
            }
        }
    }

    /// What test_hmm itself gets wrong when `MADV_DONTNEED` meets a migration to the device.
    static func dontNeedQuirks(_ flow: MirrorFlow) -> Set<ProtocolRule> {
        flow == .migrateToDevice ? [.devicePTEMapsFreedPage] : []
    }

    /// `fork` takes the mmap lock for write: it runs after the flow; parent and child both
    /// read the pattern (device pages are shared copy-on-write, faulted back by either).
    @Test(arguments: MirrorFlow.allCases)
    func forkWaitsForTheFlowAndBothProcessesKeepTheData(_ flow: MirrorFlow) throws {
        try pinEachStep(flow, { rig in
            if let child = try? rig.mm.fork() { rig.children.withLockedValue { $0.append(child) } }
        }) { rig, _, _, note in
            #expect(rig.probe.outcome == .finishedAfterHold, "\(note)")
            let children = rig.children.withLockedValue { $0 }
            #expect(children.count == 1, "\(note): fork failed")
            for child in children { #expect(rig.patternMismatches(in: child).isEmpty, "\(note): child") }
            #expect(rig.patternMismatches().isEmpty, "\(note): parent")
        }
    }

    /// `mprotect(PROT_READ)` runs after the flow; the data stays and a device write through
    /// the mirror is then refused (`EPERM`), as hmm-tests' `mprotect` expects.
    @Test(arguments: MirrorFlow.allCases)
    func mprotectWaitsForTheFlowAndRevokesDeviceWrites(_ flow: MirrorFlow) throws {
        try pinEachStep(flow, { rig in
            try? rig.mm.mprotect(rig.a, length: MirrorRaceRig.pages * pageSize, protection: .read)
        }) { rig, _, _, note in
            #expect(rig.probe.outcome == .finishedAfterHold, "\(note)")
            #expect(rig.patternMismatches().isEmpty, "\(note)")
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: pageSize, alignment: pageSize)
            defer { buffer.deallocate() }
            #expect(throws: MirrorError.permissionDenied, "\(note)") {
                try rig.fd0.write(rig.address(0), npages: 1, from: UnsafeRawBufferPointer(buffer))
            }
        }
    }
}
