import DeviceEmu
import Foundation
import HostMM
import Testing
@testable import dmem_bench

// Shared by the race-matrix suites (RaceConfigurationTests, RaceFlowConfigurationTests).

/// `RaceMatrix.run` on a thread of its own, the test suspended meanwhile. A matrix runs for
/// seconds without suspending; run on Swift Testing's cooperative threads (one per core:
/// two here) two of them leave no thread to start other tests' bodies or to fire their
/// time limits, which then expire though the tests never ran (seen: five HostMM tests
/// "exceeded 60 s" at once). Off the pool nothing bounds how many run at once, so the race
/// suites are `.serialized`: one matrix per suite at a time.
func runMatrix(_ o: RaceOptions, sabotage: Bool = false) async throws -> RaceMatrix {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<RaceMatrix, any Error>) in
        Thread.detachNewThread {
            continuation.resume(with: Result { try RaceMatrix.run(o, sabotage: sabotage) })
        }
    }
}

/// Runs `flows` × every step × `actions` in configuration `c`; expects no failing cell
/// and the probe firing in each.
func raceMatrix(_ c: RaceConfiguration, flows: [RaceFlow], actions: [RaceAction],
                backend: MigrateOptions.Backend = .iouring, hole: Bool = false) async throws -> RaceMatrix {
    var o = RaceOptions()
    o.configuration = c
    o.targetHole = hole
    o.copyBackend = backend
    o.flows = flows
    o.actions = actions
    o.hold = .milliseconds(5)
    let m = try await runMatrix(o)
    #expect(m.failureLines.isEmpty, "\(m.failureLines.prefix(10).joined(separator: "\n"))")
    #expect(m.passed)
    let missed = m.cells.filter { !$0.fired }.map { "\($0.cell.flow.rawValue) \($0.cell.step) × \($0.cell.action.rawValue)" }
    #expect(missed.isEmpty, "the probe never fired at \(missed)")
    // The configuration is in the header and in every record.
    let fields = o.configurationFields
    #expect(m.text.hasPrefix("configuration: " + fields.map { "\($0.key)=\($0.value)" }.joined(separator: " ")))
    for (key, value) in fields { #expect(m.records.allSatisfy { $0[key] == .string(value) }, "\(key)") }
    return m
}

/// Prepares `flow` on a fresh world of `c` and runs it with nothing armed.
func raceDryWorld(_ c: RaceConfiguration, _ flow: RaceFlow, hole: Bool = false) throws -> (RaceWorld, RaceFlowResult) {
    var o = RaceOptions()
    o.configuration = c
    o.targetHole = hole
    let w = try RaceWorld(o)
    try flow.prepare(w)
    w.recorder.reset()
    w.squeezeRAM()   // `--ram`: the flow runs short of RAM, as in a cell
    let r = flow.run(w)
    w.releaseRAM()
    return (w, r)
}

func raceShutDown(_ w: RaceWorld) {
    try? w.mm.munmap(w.base, length: w.pages * pageSize)
    w.gpu.unbind(w.mm)
    w.mm.exit()
    try? w.gpu.shutdown()
    w.mirror?.close()
    w.dmirror?.shutdown()
}
