import DeviceEmu
import HostMM
import Testing
@testable import dmem_bench

/// `dmem-bench race`: the whole matrix passes on the model, every flow reaches every step
/// its dry run listed, the verification does fail on a corrupted page, and bad options
/// are refused with a clear message.
@Suite(.serialized, .timeLimit(.minutes(2))) struct RaceMatrixTests {
    /// The default matrix (every flow × its steps × every action): no failing cell, and
    /// the probe fired at every cell's step. Held 5 ms per cell (`--quick`), as each
    /// `after` cell costs its hold: the eight flows' matrix then takes what the first four
    /// took at the default 20 ms.
    @Test func theDefaultMatrixPassesAndReachesEveryStep() async throws {
        var o = RaceOptions()
        o.hold = .milliseconds(5)
        let m = try await runMatrix(o)
        #expect(m.failureLines.isEmpty, "\(m.failureLines.prefix(10).joined(separator: "\n"))")
        #expect(m.passed)
        // `all`: the nouveau driver's flows and actions (`--driver mirror` has its own: RaceMirrorTests).
        #expect(m.flows.map(\.flow) == RaceFlow.allCases.filter { $0.driver == .nouveau })
        for f in m.flows {
            #expect(f.cells.count == f.steps.count * RaceAction.allCases.filter { $0.applies(to: .nouveau) }.count, "\(f.flow)")
            let missed = f.cells.filter { !$0.fired }.map { "\($0.cell.step) × \($0.cell.action.rawValue)" }
            #expect(missed.isEmpty, "\(f.flow): the probe never fired at \(missed)")
            // Every flow reports whole batches: setup through finalize.
            let kinds = Set(f.steps.map(\.kind))
            #expect(kinds.isSuperset(of: [.setupBegin, .setupEnd, .migratePagesBegin, .finalizeEnd]), "\(f.flow): \(f.steps)")
        }
        #expect(m.flows.first { $0.flow == .cpuFault }?.steps.first == RaceStep(kind: .cpuFaultBegin, direction: .toRAM))
        for flow in [RaceFlow.gpuFault, .gpuAtomic, .gpuWrite] {
            #expect(m.flows.first { $0.flow == flow }?.steps.first == RaceStep(kind: .gpuFault, direction: .none), "\(flow)")
        }
        // The explicit migration back and the suspend are batches of their own kinds.
        #expect(m.flows.first { $0.flow == .migrateToRAM }?.steps.first == RaceStep(kind: .setupBegin, direction: .toRAM))
        #expect(m.flows.first { $0.flow == .suspend }?.steps.first == RaceStep(kind: .setupBegin, direction: .evict))
        // The device gate is closed while suspend evicts: a GPU access racing it fails with
        // the documented `.suspended` (a note, not a failure).
        let suspend = try #require(m.flows.first { $0.flow == .suspend })
        #expect(suspend.cells.filter { $0.cell.action == .gpuRead }.allSatisfy { $0.notes.contains { $0.contains("suspended") } })
        // What a held step blocks, for sure: a migration holds the mmap read lock from setup
        // to finalize, so an munmap (mmap write lock) can only finish after the hold.
        let toDevice = try #require(m.flows.first { $0.flow == .toDevice })
        let munmapAtSetupEnd = toDevice.cells.first { $0.cell.step == RaceStep(kind: .setupEnd, direction: .toDevice) && $0.cell.action == .munmap }
        #expect(munmapAtSetupEnd?.outcome == .after)
        // One record per cell.
        #expect(m.records.count == m.cells.count)
        #expect(m.records.first?["flow"] == .string("to-device") && m.records.first?["passed"] == .bool(true))
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
        #expect(RaceExpectations.actionMayFail(.suspend, .gpuAtomic, DeviceError.suspended))
        #expect(!RaceExpectations.actionMayFail(.evict, .gpuAtomic, DeviceError.suspended))
        #expect(!RaceExpectations.actionMayFail(.suspend, .cpuRead, DeviceError.suspended))
    }

    @Test func badOptionsAreRefused() {
        let flows = RaceFlow.allCases.map(\.rawValue).joined(separator: ", ")
        #expect(parseError(["race", "--flow", "to-gpu"]) == "unknown flow 'to-gpu': use all or a comma-separated list of \(flows)")
        #expect(parseError(["race", "--flow", "evict,"])?.hasPrefix("unknown flow '':") == true)
        #expect(parseError(["race", "--action", "cpu-read,teleport"])?.hasPrefix("unknown action 'teleport':") == true)
        #expect(parseError(["race", "--hold", "0"]) == "hold must be in 1...5000 ms")
        #expect(parseError(["race", "--hold", "5001"]) == "hold must be in 1...5000 ms")
        #expect(parseError(["race", "--pages", "16"])?.hasPrefix("pages must be in 17...512") == true)
        #expect(parseError(["race", "--target", "32"]) == "target must be a page of the range: 0..<32")
        #expect(parseError(["race", "--backend", "dma"]) == "backend must be one of: iouring, memcpy, mapped")
        #expect(parseError(["race", "--flow", "evict,cpu-fault", "--action", "all", "--hold", "5", "--pages", "17"]) == nil)
        #expect((try? RaceCommand.parse(["--flow", "evict,evict", "--action", "fork"]).options())?.flows == [.evict])
        #expect(parseError(["run", "race", "--set", "flow=sideways"])?.contains("'sideways' is not a valid value for 'flow'") == true)
    }
}
