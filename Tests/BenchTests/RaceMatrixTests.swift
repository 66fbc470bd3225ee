import DeviceEmu
import HostMM
import Testing
@testable import dmem_bench

/// `dmem-bench race`: the whole matrix passes on the model, every flow reaches every step
/// its dry run listed, the verification does fail on a corrupted page, and bad options
/// are refused with a clear message.
///
/// Three minutes per test (per flow for the default matrix): the default matrix (2093
/// cells since pin, mremap, mremap-dontunmap, cow-write, cow-write-child and
/// madvise-free joined) takes ~30 s alone in a debug build, but took 98 s in a loaded
/// BenchTests run on two shared cores, and 320 s with three other builds beside it — one
/// flow at a time, each under its own limit, as its cases run one after another.
@Suite(.serialized, .timeLimit(.minutes(3))) struct RaceMatrixTests {
    /// The default matrix (every flow × its steps × every action), one flow per case: no
    /// failing cell, and the probe fired at every cell's step. Held 5 ms per cell
    /// (`--quick`), as each `after` cell costs its hold.
    /// (`--driver mirror` has its own flows and actions: `RaceMirrorTests`.)
    @Test(arguments: RaceFlow.allCases.filter { $0.driver == .nouveau })
    func theDefaultMatrixPassesAndReachesEveryStep(flow: RaceFlow) async throws {
        var o = RaceOptions()
        o.hold = .milliseconds(5)
        o.flows = [flow]
        let m = try await runMatrix(o)
        #expect(m.failureLines.isEmpty, "\(m.failureLines.prefix(10).joined(separator: "\n"))")
        #expect(m.passed)
        #expect(m.flows.map(\.flow) == [flow])
        let f = try #require(m.flows.first)
        #expect(f.cells.count == f.steps.count * RaceAction.allCases.filter { $0.applies(to: .nouveau) }.count, "\(f.flow)")
        let missed = f.cells.filter { !$0.fired }.map { "\($0.cell.step) × \($0.cell.action.rawValue)" }
        #expect(missed.isEmpty, "\(f.flow): the probe never fired at \(missed)")
        // Every flow reports whole batches: setup through finalize.
        let kinds = Set(f.steps.map(\.kind))
        #expect(kinds.isSuperset(of: [.setupBegin, .setupEnd, .migratePagesBegin, .finalizeEnd]), "\(f.flow): \(f.steps)")
        switch flow {
        case .cpuFault:
            #expect(f.steps.first == RaceStep(kind: .cpuFaultBegin, direction: .toRAM))
        case .gpuFault, .gpuAtomic, .gpuWrite:
            #expect(f.steps.first == RaceStep(kind: .gpuFault, direction: .none), "\(flow)")
        case .migrateToRAM:
            // The explicit migration back and the suspend are batches of their own kinds.
            #expect(f.steps.first == RaceStep(kind: .setupBegin, direction: .toRAM))
        case .suspend:
            #expect(f.steps.first == RaceStep(kind: .setupBegin, direction: .evict))
            // The device gate is closed while suspend evicts: a GPU access that reaches it
            // while the flow is held fails with the documented `.suspended` (a note, not a
            // failure). One that returned only after the 5 ms hold may have reached the gate
            // after the flow's resume, and is then admitted: also the kernel's order.
            let heldReads = f.cells.filter { $0.cell.action == .gpuRead && $0.outcome == .held }
            #expect(!heldReads.isEmpty)
            #expect(heldReads.allSatisfy { $0.notes.contains { $0.contains("suspended") } }, "\(heldReads.filter { !$0.notes.contains { $0.contains("suspended") } }.map(\.cell.step))")
        case .toDevice:
            // What a held step blocks, for sure: a migration holds the mmap read lock from
            // setup to finalize, so an munmap (mmap write lock) can only finish after the hold.
            let munmapAtSetupEnd = f.cells.first { $0.cell.step == RaceStep(kind: .setupEnd, direction: .toDevice) && $0.cell.action == .munmap }
            #expect(munmapAtSetupEnd?.outcome == .after)
            #expect(m.records.first?["flow"] == .string("to-device") && m.records.first?["passed"] == .bool(true))
        case .evict:
            break
        case .mirrorToDevice, .mirrorCPUFault, .mirrorToSystem, .mirrorRelease, .mirrorRead, .mirrorWrite, .mirrorExclusive:
            Issue.record("\(flow.rawValue) is not a flow of the default (nouveau) matrix")
        }
        // One record per cell.
        #expect(m.records.count == m.cells.count)
        #expect(m.text.contains("0 failed"))
    }

    /// A page corrupted behind the model's back fails every cell, with the page named: the
    /// matrix is not a test that cannot fail.
    @Test func aCorruptedPageFailsEveryCell() async throws {
        var o = RaceOptions()
        o.flows = [.toDevice, .cpuFault, .gpuAtomic, .gpuWrite, .migrateToRAM, .suspend]
        o.actions = [.none, .cpuWrite, .gpuAtomic]
        o.hold = .milliseconds(5)
        let m = try await runMatrix(o, sabotage: true)
        #expect(!m.passed)
        #expect(!m.cells.isEmpty && m.cells.allSatisfy { $0.outcome == .fail })
        for c in m.cells {
            #expect(c.problems.contains { $0.hasPrefix("page 1 is not") }, "\(c.cell.step) × \(c.cell.action.rawValue): \(c.problems)")
        }
        #expect(m.text.contains("failures:"))
        #expect(m.records.allSatisfy { $0["passed"] == .bool(false) && $0["outcome"] == .string("FAIL") })
    }

    /// An error the shadow model does not expect fails the cell; a documented one does not.
    @Test func onlyDocumentedErrorsAreAccepted() {
        let t: UInt64 = 0x10_0000
        #expect(RaceExpectations.flowMayFail(.cpuFault, .munmap, HostMMError.segmentationFault(address: t, reason: .notMapped), at: t))
        #expect(!RaceExpectations.flowMayFail(.cpuFault, .munmap, HostMMError.segmentationFault(address: t + 4096, reason: .notMapped), at: t))
        #expect(!RaceExpectations.flowMayFail(.toDevice, .munmap, HostMMError.segmentationFault(address: t, reason: .notMapped), at: t))
        #expect(RaceExpectations.flowMayFail(.gpuFault, .unbind, DeviceError.shutDown, at: t))
        #expect(!RaceExpectations.flowMayFail(.gpuFault, .suspendResume, DeviceError.suspended, at: t))
        #expect(RaceExpectations.flowMayFail(.gpuAtomic, .mprotect, DeviceError.permissionDenied(address: t), at: t))
        #expect(!RaceExpectations.flowMayFail(.gpuAtomic, .mprotect, DeviceError.fault(address: t), at: t))
        #expect(!RaceExpectations.flowMayFail(.gpuFault, .mprotect, DeviceError.permissionDenied(address: t), at: t))
        #expect(RaceExpectations.flowMayFail(.suspend, .shutdown, DeviceError.shutDown, at: t))
        // A fault flow whose access came after mremap moved the range: the old address is unmapped.
        #expect(RaceExpectations.flowMayFail(.cpuFault, .mremap, HostMMError.segmentationFault(address: t, reason: .notMapped), at: t))
        #expect(RaceExpectations.flowMayFail(.gpuWrite, .mremap, DeviceError.fault(address: t), at: t))
        #expect(!RaceExpectations.flowMayFail(.gpuWrite, .mremapDontUnmap, DeviceError.fault(address: t), at: t))
        #expect(!RaceExpectations.flowMayFail(.toDevice, .mremap, HostMMError.fault, at: t))
        // EBUSY from a long-term pin only on device-coherent memory (migrate_device_coherent_folio).
        #expect(RaceExpectations.actionMayFail(.toDevice, .pin, HostMMError.busy, memory: .coherent))
        #expect(!RaceExpectations.actionMayFail(.toDevice, .pin, HostMMError.busy, memory: .private))
        #expect(!RaceExpectations.actionMayFail(.toDevice, .pin, HostMMError.fault, memory: .coherent))
        #expect(!RaceExpectations.actionMayFail(.toDevice, .cowWrite, HostMMError.busy, memory: .coherent))
        #expect(RaceExpectations.actionMayFail(.suspend, .gpuAtomic, DeviceError.suspended, memory: .private))
        #expect(!RaceExpectations.actionMayFail(.evict, .gpuAtomic, DeviceError.suspended, memory: .private))
        #expect(!RaceExpectations.actionMayFail(.suspend, .cpuRead, DeviceError.suspended, memory: .private))
        // EXCLUSIVE's read-back may miss the entry the CPU fault's replay restored (ENOENT),
        // and nothing else: the command itself never fails with EBUSY.
        #expect(RaceExpectations.actionMayFail(.mirrorCPUFault, .exclusive, MirrorError.noEntry, memory: .private))
        #expect(!RaceExpectations.actionMayFail(.mirrorCPUFault, .exclusive, MirrorError.busy, memory: .private))
        #expect(!RaceExpectations.actionMayFail(.mirrorRead, .exclusive, MirrorError.noEntry, memory: .private))
    }

    @Test func badOptionsAreRefused() {
        let flows = RaceFlow.allCases.map(\.rawValue).joined(separator: ", ")
        #expect(parseError(["race", "--flow", "to-gpu"]) == "unknown flow 'to-gpu': use all or a comma-separated list of \(flows)")
        #expect(parseError(["race", "--flow", "evict,"])?.hasPrefix("unknown flow '':") == true)
        // 'all' inside a list was reported as an unknown flow while the message said to use it.
        #expect(parseError(["race", "--flow", "all,evict"]) == "'all' cannot be combined with other names: use all or a comma-separated list of \(flows)")
        #expect(parseError(["race", "--action", "none,all"])?.hasPrefix("'all' cannot be combined with other names: use all or") == true)
        #expect(parseError(["race", "--step", "setupEnd,all"])?.hasPrefix("'all' cannot be combined with other names: use all or") == true)
        #expect(parseError(["race", "--action", "cpu-read,teleport"])?.hasPrefix("unknown action 'teleport':") == true)
        #expect(parseError(["race", "--hold", "0"]) == "--hold must be in 1...5000 ms")
        #expect(parseError(["race", "--hold", "5001"]) == "--hold must be in 1...5000 ms")
        #expect(parseError(["race", "--pages", "16"])?.hasPrefix("--pages must be in 17...512") == true)
        #expect(parseError(["race", "--target", "32"]) == "--target must be a page of the range: 0..<32")
        #expect(parseError(["race", "--backend", "dma"]) == "backend must be one of: iouring, memcpy, mapped")
        #expect(parseError(["race", "--flow", "evict,cpu-fault", "--action", "all", "--hold", "5", "--pages", "17"]) == nil)
        #expect((try? RaceCommand.parse(["--flow", "evict,evict", "--action", "fork"]).options())?.flows == [.evict])
        #expect(parseError(["run", "race", "--set", "flow=sideways"])?.contains("'sideways' is not a valid value for 'flow'") == true)
    }
}
