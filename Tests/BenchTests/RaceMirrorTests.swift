import DeviceEmu
import HostMM
import Testing
@testable import dmem_bench

/// `--driver mirror`: the race matrix drives lib/test_hmm.c's dmirror (`MirrorDevice`)
/// through the world's one open. A reduced matrix passes over every mirror flow and step;
/// the flows report the steps `MirrorDevice` documents; the selection keeps each driver's
/// flows and actions apart; the behaviours of test_hmm that break the shadow model are
/// notes citing the kernel, not failures, and nothing else is excused with them.
@Suite(.serialized, .timeLimit(.minutes(2))) struct RaceMirrorTests {
    private var mirror: RaceConfiguration {
        var c = RaceConfiguration()
        c.driver = .mirror
        return c
    }

    private let mirrorFlows = RaceFlow.allCases.filter { $0.driver == .mirror }

    /// Every mirror flow at every step, against the actions that write, zap, protect, take
    /// or move the target (about 4 s in debug). `exclusive` against `mirror-cpu-fault` once
    /// failed with `EBUSY` (`MirrorRaceRegressionTests.exclusiveWaitsForACPUFaultOnTheSamePage`).
    @Test func theMirrorMatrixPasses() async throws {
        let m = try await raceMatrix(mirror, flows: mirrorFlows,
                                     actions: [.none, .cpuWrite, .gpuWrite, .dontNeed, .mprotect, .migrateToRAM, .exclusive, .unbind])
        #expect(m.flows.map(\.flow) == mirrorFlows)
        #expect(m.flows.allSatisfy { !$0.steps.isEmpty })
        // The MADV_DONTNEED windows of dmirror_migrate_finalize_and_map and dmirror_atomic_map.
        let excused = m.cells.filter { $0.notes.contains { $0.hasPrefix("faithful to test_hmm") } }
        #expect(Set(excused.map(\.cell.flow)) == [.mirrorToDevice, .mirrorExclusive])
        #expect(excused.allSatisfy { $0.cell.action == .dontNeed })
    }

    /// The steps of MirrorDevice's doc comment, in order.
    @Test func theFlowsReportDmirrorsSteps() throws {
        var o = RaceOptions()
        o.configuration = mirror
        let d = MigrationEvent.Direction.self
        let batch: [MigrationEvent.Kind] = [.setupBegin, .setupEnd, .copiesSubmitted, .migratePagesBegin, .migratePagesEnd]
        let toDevice = batch.map { RaceStep(kind: $0, direction: d.toDevice) }
            + [.deviceMap, .finalizeBegin, .finalizeEnd].map { RaceStep(kind: $0, direction: d.toDevice) }
        let toRAM = (batch + [.finalizeBegin, .finalizeEnd]).map { RaceStep(kind: $0, direction: d.toRAM) }
        let evict = (batch + [.finalizeBegin, .finalizeEnd]).map { RaceStep(kind: $0, direction: d.evict) }
        let fault = [RaceStep(kind: .gpuFault, direction: .none), RaceStep(kind: .gpuFaultResolved, direction: .none)]
        let want: [RaceFlow: [RaceStep]] = [
            .mirrorToDevice: toDevice,
            .mirrorCPUFault: [RaceStep(kind: .cpuFaultBegin, direction: d.toRAM)] + toRAM + [RaceStep(kind: .cpuFaultEnd, direction: d.toRAM)],
            .mirrorToSystem: toRAM, .mirrorRelease: evict, .mirrorRead: fault, .mirrorWrite: fault,
            .mirrorExclusive: [RaceStep(kind: .deviceExclusive, direction: .none)],
        ]
        for flow in mirrorFlows {
            let dry = try raceDryRun(flow, o)
            #expect(dry.steps == want[flow], "\(flow.rawValue)")
            #expect(dry.problems.isEmpty, "\(flow.rawValue): \(dry.problems)")
        }
    }

    /// The flows' own results, nothing racing: what moved, what was read and written.
    @Test func theFlowsDoWhatTheCommandsDo() throws {
        for flow in mirrorFlows {
            var o = RaceOptions()
            o.configuration = mirror
            let w = try RaceWorld(o)
            defer { raceShutDown(w) }
            try flow.prepare(w)
            let r = flow.run(w)
            let t = w.address(w.target)
            switch (flow, r) {
            case (.mirrorToDevice, .migrated(let n)):
                #expect(n == w.pages && w.vramInUse == w.pages)
                #expect(w.mirror?.entry(at: t)?.tag == .write)
            case (.mirrorToSystem, .migrated(let n)), (.mirrorRelease, .migrated(let n)):
                #expect(n == w.pages && w.vramInUse == 0, "\(flow.rawValue)")
            case (.mirrorCPUFault, .read(let bytes)), (.mirrorRead, .read(let bytes)):
                #expect(bytes == RacePage.pattern.bytes(page: w.target), "\(flow.rawValue)")
            case (.mirrorExclusive, .read(let bytes)):
                #expect(bytes == RacePage.pattern.bytes(page: w.target))
                #expect(w.mirror?.entry(at: t)?.tag == .atomic && w.mm.pageTableEntry(t).kind == .deviceExclusive)
            case (.mirrorWrite, .wrote):
                #expect(try w.mm.read(at: t, count: pageSize) == RacePage.marker.bytes(page: w.target))
            default:
                Issue.record("\(flow.rawValue): \(r)")
            }
        }
    }

    /// `all` narrows to the driver's flows and actions; naming one of the other driver's,
    /// or a policy setting dmirror does not have, is refused before anything runs.
    @Test func theSelectionKeepsTheDriversApart() throws {
        var o = RaceOptions()
        o.configuration = mirror
        #expect(o.problem == nil)
        #expect(o.forDriver.flows == mirrorFlows)
        #expect(!o.forDriver.actions.contains(.gpuAtomic) && !o.forDriver.actions.contains(.suspendResume))
        #expect(o.forDriver.actions.contains(.exclusive))
        #expect(RaceOptions().forDriver.flows.allSatisfy { $0.driver == .nouveau })
        #expect(!RaceOptions().forDriver.actions.contains(.exclusive))
        o.flows = [.cpuFault]
        #expect(o.problem == "flow cpu-fault runs on --driver nouveau, not mirror")
        o.flows = [.mirrorRead]
        o.actions = [.gpuAtomic]
        #expect(o.problem == "action gpu-atomic does not exist on --driver mirror")
        o.actions = [.exclusive]
        #expect(o.problem == nil)
        #expect(o.rerunArguments(flow: .mirrorRead, step: RaceStep(kind: .gpuFault, direction: .none), action: .exclusive)
            == ["--flow", "mirror-read", "--step", "gpuFault", "--action", "exclusive", "--driver", "mirror"])
        o.configuration.api = .callbacks2017
        #expect(o.problem?.hasPrefix("--driver mirror takes --memory only") == true)
        let parsed = try RaceCommand.parse(["--driver", "mirror", "--memory", "coherent", "--flow", "mirror-write"]).options()
        #expect(parsed.configuration.driver == .mirror && parsed.configuration.memory == .coherent && parsed.problem == nil)
        #expect(throws: (any Error).self) { try RaceCommand.parse(["--driver", "amd"]).options() }
        var n = RaceOptions()
        n.actions = [.exclusive]
        #expect(n.problem == "action exclusive does not exist on --driver nouveau")
    }

    /// Coherent device memory: the CPU reads the mirror's pages in place (no fault, no
    /// step), and a WRITE through the open during its own MIGRATE_TO_SYS is test_hmm's
    /// window (its table keeps the entry until alloc_and_copy), a note; the data survives.
    @Test func coherentMemory() async throws {
        var c = mirror
        c.memory = .coherent
        let m = try await raceMatrix(c, flows: [.mirrorCPUFault, .mirrorToSystem, .mirrorWrite],
                                     actions: [.none, .cpuWrite, .gpuWrite, .fork])
        #expect(m.flows.first { $0.flow == .mirrorCPUFault }?.steps.isEmpty == true)
        let excused = m.cells.filter { $0.notes.contains { $0.hasPrefix("faithful to test_hmm") } }
        #expect(excused.allSatisfy { $0.cell.flow == .mirrorToSystem && $0.cell.action == .gpuWrite })
    }

    /// A quirk excuses only its own problems: any other problem of the cell still fails it.
    @Test func aQuirkExcusesOnlyItsOwnProblems() throws {
        let q = try #require(RaceQuirk.known(.mirrorToDevice, .dontNeed, target: 1))
        #expect(q.covers("mirror: page 1 is not zeros (it is the pattern)"))
        #expect(q.covers("protocol: protocol violation [device-pte-maps-freed-page] pfn:0x1201"))
        #expect(!q.covers("mirror: page 2 is not the pattern"))
        #expect(!q.covers("page 1 is not zeros (it is the pattern)"))
        #expect(!q.covers("leaked: VRAM pages 1, RAM frames 0, unfinished migrations 0"))
        #expect(RaceQuirk.known(.mirrorToDevice, .cpuWrite, target: 1) == nil)
        #expect(RaceQuirk.known(.toDevice, .dontNeed, target: 1) == nil)
    }
}
