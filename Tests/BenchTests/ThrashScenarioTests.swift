import Testing
@testable import dmem_bench

/// The `thrash` scenario: GPU writes then CPU reads of one working set per round. Its
/// counts follow from the policies exactly, and every round's bytes are verified.
@Suite struct ThrashScenarioTests {
    let scenario = ThrashScenario()

    func run(_ overrides: [(key: String, value: String)]) throws -> RunRecord {
        let parameters = try ScenarioParameters(for: scenario, overrides: [("backend", "memcpy")] + overrides)
        let records = try scenario.run(parameters, context: ScenarioContext())
        try #require(records.count == 1)
        #expect(records[0]["verified"] == .bool(true))
        return records[0]
    }

    /// Migrating windows: each round one GPU fault per window moves the whole set to VRAM,
    /// and one CPU fault per page (or per fault-around window) brings it back.
    @Test func migrationPolicyCountsFollowTheWindows() throws {
        let r = try run([("pages", "256"), ("rounds", "3"), ("window", "16")])
        #expect(r["gpu_faults"] == .int(3 * 16))
        #expect(r["cpu_faults"] == .int(3 * 256))
        #expect(r["pages_to_device"] == .int(3 * 256) && r["pages_to_ram"] == .int(3 * 256))
        #expect(r["residency_waits"] == .int(0))
        let around = try run([("pages", "256"), ("rounds", "3"), ("window", "16"), ("fault-around", "16")])
        #expect(around["cpu_faults"] == .int(3 * 16))
        #expect(around["pages_to_ram"] == .int(3 * 256))
    }

    /// Mapping system memory: only the first round faults (one per window); nothing moves.
    @Test func mappingPolicyFaultsOnceAndMovesNothing() throws {
        let r = try run([("pages", "256"), ("rounds", "3"), ("window", "16"), ("gpu-fault", "map")])
        #expect(r["gpu_faults"] == .int(16))
        #expect(r["cpu_faults"] == .int(0))
        #expect(r["pages_to_device"] == .int(0) && r["pages_to_ram"] == .int(0))
    }

    /// Thrashing mitigation: rounds 1 and 2 migrate; the second CPU phase is each window's
    /// third change of direction, which pins it in RAM; round 3's GPU faults map it, and
    /// nothing faults or moves after that. A lapse of a minute makes it independent of speed.
    @Test func thrashingPolicyPinsEveryWindowAfterTwoRounds() throws {
        let r = try run([("pages", "256"), ("rounds", "5"), ("window", "16"), ("gpu-fault", "thrashing"),
                         ("thrash-lapse-ms", "60000"), ("thrash-pin-ms", "60000")])
        #expect(r["gpu_faults"] == .int(3 * 16))
        #expect(r["cpu_faults"] == .int(2 * 256))
        #expect(r["pages_to_device"] == .int(2 * 256) && r["pages_to_ram"] == .int(2 * 256))
        #expect(r["thrashing_pins"] == .int(16) && r["pinned_faults"] == .int(16))
        #expect(r["thrash_threshold"] == .int(3) && r["thrash_lapse_ms"] == .int(60000))
        // A threshold no run of 5 rounds reaches: it migrates every round, as `migrate` does.
        let never = try run([("pages", "256"), ("rounds", "5"), ("gpu-fault", "thrashing"), ("thrash-threshold", "100"),
                             ("thrash-lapse-ms", "60000")])
        #expect(never["cpu_faults"] == .int(5 * 256) && never["thrashing_pins"] == .int(0))
        // Other policies report no thrashing fields.
        #expect(try run([("pages", "64"), ("rounds", "1")])["thrashing_pins"] == nil)
    }

    /// A remote-access link is recorded, and a bad one is refused before anything runs.
    @Test func aRemoteLinkIsRecordedAndABadOneRefused() throws {
        let r = try run([("pages", "64"), ("rounds", "2"), ("gpu-fault", "map"), ("remote-link", "nvlink")])
        #expect(r["remote_link"] == .string("nvlink") && r["gpu_faults"] == .int(4))
        #expect(throws: ScenarioError.self) { _ = try run([("pages", "64"), ("rounds", "1"), ("remote-link", "fast")]) }
        let command = try #require(try DmemBench.parseAsRoot(["thrash", "--remote-link", "16,5us"]) as? ThrashCommand)
        #expect(try command.options.remoteLink.text == "16,5us")
        #expect(throws: (any Error).self) { _ = try DmemBench.parseAsRoot(["thrash", "--remote-link", "0,1us"]) }
    }

    /// With a minimum residency longer than a round, the CPU meets pages the GPU just
    /// brought in and waits for them (Xe's timeslice), and the data still verifies.
    @Test func minimumResidencyMakesTheCPUWait() throws {
        let r = try run([("pages", "64"), ("rounds", "1"), ("window", "16"), ("residency-ms", "300")])
        guard case .int(let waits)? = r["residency_waits"] else {
            Issue.record("no residency_waits")
            return
        }
        #expect(waits >= 1)
        #expect(r["cpu_faults"] == .int(64))
    }

    /// With `--trace`, the driver's own work is on the timeline: one "gpu fault" event per
    /// GPU fault counted, and each round's two phases.
    @Test func theTraceShowsEveryGPUFaultAndEachPhase() throws {
        var o = ThrashOptions()
        o.pages = 128
        o.rounds = 2
        o.backend = .memcpy
        let recorder = TraceRecorder(capacity: 1 << 16)
        let r = try ThrashRun.measure(o, trace: recorder.process("thrash"), progress: { _ in })
        #expect(recorder.droppedEvents == 0)
        let names = recorder.events().map(\.name.description)
        #expect(r["gpu_faults"] == .int(names.filter { $0 == "gpu fault" }.count))
        #expect(names.filter { $0 == "GPU writes" }.count == 2 && names.filter { $0 == "CPU reads" }.count == 2)
    }

    @Test func badOptionsAreRefusedBeforeAnythingRuns() {
        var o = ThrashOptions()
        o.pages = 10
        #expect(throws: ScenarioError(scenario: "thrash", message: "pages must be in 64...262144 (got 10)")) {
            _ = try ThrashRun.measure(o, trace: nil, progress: { _ in })
        }
        #expect(throws: ParameterValueError.self) { _ = try ScenarioParameters(for: scenario, overrides: [("window", "0")]) }
    }

    @Test func theThrashCommandParsesItsFlagsIntoTheSameOptions() throws {
        let command = try #require(try DmemBench.parseAsRoot([
            "thrash", "--pages", "128", "--rounds", "2", "--gpu-fault", "map", "--window", "8", "--fault-around", "4",
            "--residency", "3", "--backend", "memcpy", "--checked",
        ]) as? ThrashCommand)
        let o = try command.options
        #expect(o.pages == 128 && o.rounds == 2 && o.gpuFault == .map && o.window == 8 && o.faultAround == 4)
        #expect(o.residencyMilliseconds == 3 && o.backend == .memcpy && o.checked)
        #expect(throws: (any Error).self) { _ = try DmemBench.parseAsRoot(["thrash", "--gpu-fault", "evict"]) }
        let thrashing = try #require(try DmemBench.parseAsRoot([
            "thrash", "--gpu-fault", "thrashing", "--thrash-threshold", "4", "--thrash-lapse", "50", "--thrash-pin", "0",
        ]) as? ThrashCommand)
        let t = try thrashing.options
        #expect(t.gpuFault == .thrashing && t.thrashThreshold == 4 && t.thrashLapseMilliseconds == 50 && t.thrashPinMilliseconds == 0)
        #expect(throws: (any Error).self) { _ = try DmemBench.parseAsRoot(["thrash", "--gpu-fault", "thrashing", "--thrash-lapse", "0"]) }
        #expect(throws: (any Error).self) { _ = try DmemBench.parseAsRoot(["thrash", "--gpu-fault", "thrashing", "--thrash-threshold", "0"]) }
        // Tuning a policy that is not selected is a mistake, not a no-op.
        #expect(throws: (any Error).self) { _ = try DmemBench.parseAsRoot(["thrash", "--thrash-pin", "10"]) }
        #expect(try (DmemBench.parseAsRoot(["thrash", "--gpu-fault", "thrashing"]) as? ThrashCommand)?.options.thrashPinMilliseconds == 300)
        #expect(throws: (any Error).self) { _ = try DmemBench.parseAsRoot(["thrash", "--pages", "3"]) }
    }

    @Test func isInTheRegistry() throws {
        #expect(try ScenarioRegistry.standard.scenario(named: "thrash").name == "thrash")
    }
}
