import DeviceEmu
import HostMM
import Testing
@testable import dmem_bench

/// `dmem-bench race --step` / `--occurrence` and the `rerun:` line: narrowing the matrix to
/// the cells a driver author cares about, holding a later batch's steps, and running one
/// failing cell again with the same configuration.
@Suite(.serialized, .timeLimit(.minutes(2))) struct RaceSelectionTests {
    private static func step(_ kind: MigrationEvent.Kind, _ direction: MigrationEvent.Direction = .toDevice) -> RaceStep {
        RaceStep(kind: kind, direction: direction)
    }

    /// `--step` keeps only the named steps, in the order the flow reports them; a kind
    /// without a direction matches it in every direction.
    @Test func stepNamesSelectTheRows() async throws {
        var o = RaceOptions()
        o.flows = [.toDevice, .cpuFault]
        o.actions = [.none, .cpuWrite]
        o.steps = try RaceStepFilter.parse("fenceWaitBegin.toDevice,setupEnd")
        let m = try await runMatrix(o)
        #expect(m.passed, "\(m.failureLines)")
        #expect(m.flows.map(\.steps) == [[Self.step(.setupEnd), Self.step(.fenceWaitBegin)], [Self.step(.setupEnd, .toRAM)]])
        #expect(m.cells.count == 6 && m.cells.allSatisfy(\.fired))
        // The unfiltered steps are still known (the dry run's check of a silent flow uses them).
        #expect(m.flows.allSatisfy { $0.reportedSteps.count > $0.steps.count })
    }

    /// `--occurrence 2` holds the driver at the second report of a step: with two batches,
    /// the second batch's (its own batch number and first address), not the first's.
    @Test func occurrenceTwoHoldsTheSecondBatch() async throws {
        var o = RaceOptions()
        o.flows = [.toDevice]
        o.actions = [.none]
        o.steps = try RaceStepFilter.parse("setupBegin.toDevice,finalizeEnd.toDevice")
        o.target = 20
        let first = try await runMatrix(o)
        o.occurrence = 2
        let second = try await runMatrix(o)
        #expect(first.passed && second.passed, "\(first.failureLines + second.failureLines)")
        let a = first.cells.compactMap(\.event), b = second.cells.compactMap(\.event)
        #expect(a.count == 2 && b.count == 2)
        for (one, two) in zip(a, b) {
            #expect(two.batch == one.batch + 1, "\(one.kind): batch \(one.batch), then \(two.batch)")
            #expect(two.address == one.address + UInt64(RaceWorld.batchPages * pageSize), "\(one.kind)")
        }
        #expect(second.records.allSatisfy { $0["occurrence"] == .int(2) })
    }

    /// A second batch's step while the first is still in flight (pipeline 2): a CPU write to
    /// the second batch's page at each of its steps, every page judged.
    @Test func aPipelinedSecondBatchPassesEveryStep() async throws {
        var o = RaceOptions()
        o.flows = [.toDevice]
        o.actions = [.cpuWrite, .munmap]
        o.occurrence = 2
        o.target = 20
        o.configuration.pipeline = 2
        let m = try await runMatrix(o)
        #expect(m.passed, "\(m.failureLines.prefix(6))")
        #expect(m.flows[0].steps.count >= 8 && m.cells.allSatisfy(\.fired))
    }

    @Test func badSelectionsAreRefused() async throws {
        let bogus = parseError(["race", "--step", "bogus"])
        #expect(bogus?.hasPrefix("unknown step 'bogus': use all or a comma-separated list of steps") == true)
        #expect(bogus?.contains("kinds: setupBegin, setupEnd,") == true)
        #expect(bogus?.hasSuffix("directions: toDevice, toRAM, evict") == true)
        #expect(parseError(["race", "--step", "setupBegin.sideways"])?.hasPrefix("unknown step 'setupBegin.sideways'") == true)
        #expect(parseError(["race", "--step", "setupBegin.toDevice.x"])?.hasPrefix("unknown step 'setupBegin.toDevice.x'") == true)
        #expect(parseError(["race", "--step", "setupBegin,"])?.hasPrefix("unknown step '':") == true)
        #expect(parseError(["race", "--occurrence", "0"]) == "--occurrence must be in 1...64")
        #expect(parseError(["race", "--occurrence", "65"]) == "--occurrence must be in 1...64")
        #expect(parseError(["race", "--step", "gpuFault,fenceSignaled.toRAM", "--occurrence", "3"]) == nil)
        #expect(try RaceCommand.parse(["--step", "setupEnd,setupEnd"]).options().steps?.patterns.count == 1)

        // Names that parse but select nothing are refused before any cell runs, with what
        // the flows do report.
        var o = RaceOptions()
        o.flows = [.gpuFault]
        o.actions = [.none]
        o.steps = try RaceStepFilter.parse("cpuFaultBegin")
        let notReported = await #expect(throws: RaceFailure.self) { try await runMatrix(o) }
        #expect(notReported?.description.hasPrefix("step 'cpuFaultBegin' is not reported by gpu-fault in this configuration; they report: gpu-fault: gpuFault ") == true)
        o.flows = [.cpuFault]
        o.steps = nil
        o.occurrence = 2
        let once = await #expect(throws: RaceFailure.self) { try await runMatrix(o) }
        #expect(once?.description.hasPrefix("no step of cpu-fault is reported at least 2 times") == true)
    }

    /// The rerun arguments name the cell and every non-default setting, so that parsing
    /// them gives back the same options narrowed to that cell.
    @Test func rerunArgumentsRoundTrip() throws {
        var o = RaceOptions()
        o.hold = .milliseconds(35)
        o.pages = 48
        o.target = 33
        o.targetHole = true
        o.occurrence = 2
        o.copyBackend = .mapped
        o.configuration.api = .callbacks2017
        o.configuration.faultAround = 4
        o.configuration.gpuFault = .thrashing
        o.configuration.memory = .coherent
        o.configuration.allOrNothing = true
        o.configuration.vramPages = 32
        let step = Self.step(.fenceWaitEnd, .evict)
        let args = o.rerunArguments(flow: .evict, step: step, action: .gpuAtomic)
        var expected = o
        expected.flows = [.evict]
        expected.actions = [.gpuAtomic]
        expected.steps = RaceStepFilter(patterns: [.init(kind: .fenceWaitEnd, direction: .evict)])
        #expect(try RaceCommand.parse(args).options() == expected, "\(args)")

        var p = RaceOptions()
        p.configuration.pipeline = 3
        p.configuration.prefetch = .sequential
        #expect(p.rerunArguments(flow: .toDevice, step: Self.step(.gpuFault, .none), action: .fork)
                == ["--flow", "to-device", "--step", "gpuFault", "--action", "fork", "--pipeline", "3", "--prefetch", "sequential"])
        // The defaults add nothing.
        #expect(RaceOptions().rerunArguments(flow: .cpuFault, step: Self.step(.setupBegin, .toRAM), action: .none)
                == ["--flow", "cpu-fault", "--step", "setupBegin.toRAM", "--action", "none"])
    }

    /// A failing cell prints the command that runs it alone (text and JSON).
    @Test func aFailingCellSaysHowToRunItAgain() async throws {
        var o = RaceOptions()
        o.flows = [.cpuFault]
        o.actions = [.cpuRead]
        o.steps = try RaceStepFilter.parse("finalizeBegin")
        o.configuration.faultAround = 2
        let m = try await runMatrix(o, sabotage: true)
        #expect(!m.passed && m.cells.count == 1)
        let rerun = "dmem-bench race --flow cpu-fault --step finalizeBegin.toRAM --action cpu-read --fault-around 2"
        #expect(m.text.contains("\n    rerun: \(rerun)\n"), "\(m.text)")
        #expect(m.records.first?["rerun"] == .string(rerun))
    }

    /// `dmem-bench run race` takes the same selection as `--set` keys.
    @Test func theScenarioTakesTheSelection() throws {
        let scenario = RaceScenario()
        let parameters = try ScenarioParameters(for: scenario, overrides: [
            ("flow", "to-device"), ("action", "none"), ("step", "setupBegin"), ("occurrence", "2"), ("target", "20"),
        ])
        let records = try scenario.run(parameters, context: ScenarioContext())
        #expect(records.count == 1)
        #expect(records.first?["step"] == .string("setupBegin.toDevice") && records.first?["occurrence"] == .int(2))
        let bad = try ScenarioParameters(for: scenario, overrides: [("step", "setupBegin.up")])
        #expect(throws: ScenarioError.self) { try scenario.run(bad, context: ScenarioContext()) }
    }

    /// `run race --quick` holds 5 ms per cell (an `after` cell costs its hold), unless the
    /// job set its own hold.
    @Test func quickRunsHoldBriefly() throws {
        let scenario = RaceScenario()
        let selection = [("flow", "to-device"), ("action", "none"), ("step", "setupBegin")]
        let quick = try BenchRunner(quick: true).run([BenchJob(scenario: scenario,
            parameters: try ScenarioParameters(for: scenario, overrides: selection))])
        #expect(quick.map { $0.record["hold_ms"] } == [.double(5)])
        let explicit = try BenchRunner(quick: true).run([BenchJob(scenario: scenario,
            parameters: try ScenarioParameters(for: scenario, overrides: selection + [("hold-ms", "7")]))])
        #expect(explicit.map { $0.record["hold_ms"] } == [.double(7)])
    }
}
