import DeviceEmu
import HostMM
import Testing
@testable import dmem_bench

/// `dmem-bench race` over the driver's other configurations: per configuration, a reduced
/// matrix (the flows and actions the configuration changes, at every step) passes, and the
/// configuration was really applied — seen in what the driver does, not only in its policy.
@Suite(.serialized, .timeLimit(.minutes(2))) struct RaceConfigurationTests {
    private func matrix(_ c: RaceConfiguration, flows: [RaceFlow], actions: [RaceAction],
                        backend: MigrateOptions.Backend = .iouring, hole: Bool = false) async throws -> RaceMatrix {
        try await raceMatrix(c, flows: flows, actions: actions, backend: backend, hole: hole)
    }

    private func dryWorld(_ c: RaceConfiguration, _ flow: RaceFlow, hole: Bool = false) throws -> (RaceWorld, RaceFlowResult) {
        try raceDryWorld(c, flow, hole: hole)
    }

    private func shutDown(_ w: RaceWorld) { raceShutDown(w) }

    @Test func theCallbackAPIOf2017() async throws {
        var c = RaceConfiguration()
        c.api = .callbacks2017
        let m = try await matrix(c, flows: [.toDevice], actions: [.none, .cpuWrite, .munmap, .migrateToDevice, .otherDevice])
        // The 2017 flow reports its steps (alloc_and_copy, then finalize_and_map).
        let steps = try #require(m.flows.first?.steps)
        #expect(steps.first == RaceStep(kind: .setupBegin, direction: .toDevice) && steps.last == RaceStep(kind: .finalizeEnd, direction: .toDevice))
        let (w, r) = try dryWorld(c, .toDevice)
        defer { shutDown(w) }
        #expect(w.gpu.policy.apiGeneration == .callbacks2017)
        guard case .migrated(let n) = r else { Issue.record("to-device: \(r)"); return }
        #expect(n == w.pages)
    }

    @Test func pipelinedBatches() async throws {
        var c = RaceConfiguration()
        c.pipeline = 2
        _ = try await matrix(c, flows: [.toDevice], actions: [.none, .cpuWrite, .gpuAtomic, .munmap, .evictAll], backend: .mapped)
        // Applied: the second batch is set up before the first one's fence wait ends.
        let (w, _) = try dryWorld(c, .toDevice)
        defer { shutDown(w) }
        let events = w.recorder.events
        let first = try #require(events.first { $0.kind == .setupBegin }?.batch)
        let secondSetup = try #require(events.firstIndex { $0.kind == .setupBegin && $0.batch != first })
        let firstWaitEnd = try #require(events.firstIndex { $0.kind == .fenceWaitEnd && $0.batch == first })
        #expect(secondSetup < firstWaitEnd)
    }

    @Test func faultAroundWindows() async throws {
        var c = RaceConfiguration()
        c.faultAround = 16
        c.api = .callbacks2017
        _ = try await matrix(c, flows: [.cpuFault], actions: [.none, .cpuWrite, .munmap, .dontNeed, .fork, .migrateToRAM, .pin, .cowWrite, .mremap])
        // Applied: one CPU fault brought the target's 16-page window back.
        let (w, _) = try dryWorld(c, .cpuFault)
        defer { shutDown(w) }
        #expect(w.gpu.vram.inUsePageCount == w.pages - 16)
    }

    @Test func sequentialPrefetch() async throws {
        var c = RaceConfiguration()
        c.prefetch = .sequential
        _ = try await matrix(c, flows: [.cpuFault], actions: [.none, .cpuRead, .munmap, .evictAll])
        let (w, _) = try dryWorld(c, .cpuFault)
        defer { shutDown(w) }
        guard case .custom(let p) = w.gpu.policy.cpuFaultGranularity else { Issue.record("no prefetch policy"); return }
        #expect(p is SequentialPrefetchPolicy)
    }

    @Test func gpuFaultsMapSystemPages() async throws {
        for mode in [ThrashOptions.GPUFault.map, .thrashing] {
            var c = RaceConfiguration()
            c.gpuFault = mode
            let m = try await matrix(c, flows: [.gpuFault], actions: mode == .map ? RaceAction.allCases : [.none, .cpuWrite, .munmap, .unbind])
            let steps = try #require(m.flows.first?.steps)
            let (w, _) = try dryWorld(c, .gpuFault)
            defer { shutDown(w) }
            if mode == .map {
                // The fault maps the window's system pages: no migration step, nothing in VRAM.
                #expect(steps == [RaceStep(kind: .gpuFault, direction: .none), RaceStep(kind: .gpuFaultResolved, direction: .none)])
                #expect(w.gpu.vram.inUsePageCount == 0)
            } else {
                // Thrashing detection migrates a window that has not ping-ponged yet.
                #expect(steps.contains(RaceStep(kind: .setupBegin, direction: .toDevice)))
                #expect(w.gpu.vram.inUsePageCount == RaceWorld.batchPages)
            }
        }
    }

    @Test func coherentVRAM() async throws {
        var c = RaceConfiguration()
        c.memory = .coherent
        let m = try await matrix(c, flows: [.cpuFault, .toDevice],
                                 actions: [.none, .cpuRead, .cpuWrite, .gpuAtomic, .fork, .pin, .mremap, .cowWrite])
        // A CPU access to coherent VRAM does not fault: cpu-fault has no step and no cell,
        // and its read left the range in VRAM (the dry run checks both).
        let cpu = try #require(m.flows.first { $0.flow == .cpuFault })
        #expect(cpu.steps.isEmpty && cpu.cells.isEmpty && cpu.dryRunProblems.isEmpty)
        #expect(m.text.contains("no step in this configuration"))
        let (w, r) = try dryWorld(c, .cpuFault)
        defer { shutDown(w) }
        guard case .read(let bytes) = r else { Issue.record("cpu-fault: \(r)"); return }
        #expect(bytes == RacePage.pattern.bytes(page: w.target))
        #expect(w.gpu.vram.inUsePageCount == w.pages && w.recorder.steps.isEmpty)
    }

    /// A target page that is a hole, migrated through the 2017 API to coherent VRAM: the
    /// hole is CPU-mapped by the pages step, so its clear must have landed by then
    /// (`CoherentLegacyRaceTests`; checked mode's `hole-mapped-with-copy-in-flight`).
    @Test func aHoleInCoherentVRAMThroughThe2017API() async throws {
        var c = RaceConfiguration()
        c.api = .callbacks2017
        c.memory = .coherent
        let m = try await matrix(c, flows: [.toDevice], actions: [.none, .cpuRead, .gpuAtomic, .dontNeed, .fork], hole: true)
        #expect(m.records.allSatisfy { $0["target_hole"] == .string("on") })
        // Applied: the migration populated exactly one hole.
        let (w, _) = try dryWorld(c, .toDevice, hole: true)
        defer { shutDown(w) }
        #expect(w.targetBase == .zeros && w.gpu.counters[.holesPopulated] == 1)
    }

    @Test func coherentVRAMWithMappedGPUFaults() async throws {
        var c = RaceConfiguration()
        c.memory = .coherent
        c.gpuFault = .map
        _ = try await matrix(c, flows: [.gpuFault, .evict], actions: [.none, .cpuWrite, .gpuWrite, .mprotect, .suspendResume])
    }

    @Test func allOrNothingBatches() async throws {
        var c = RaceConfiguration()
        c.allOrNothing = true
        _ = try await matrix(c, flows: [.toDevice], actions: [.none, .cpuWrite, .munmap, .dontNeed, .migrateToDevice, .otherDevice])
        let (w, _) = try dryWorld(c, .toDevice)
        defer { shutDown(w) }
        #expect(w.gpu.policy.rangeMigration == .allOrNothing)
    }

    /// VRAM of one batch for a range of two: every migration to VRAM evicts inside the flow.
    @Test func vramPressure() async throws {
        var c = RaceConfiguration()
        c.vramPages = 16
        let m = try await matrix(c, flows: [.toDevice, .gpuFault, .evict],
                                 actions: [.none, .cpuRead, .munmap, .otherDevice, .pin, .mremapDontUnmap, .cowWriteChild])
        for flow in [RaceFlow.toDevice, .gpuFault] {
            let steps = try #require(m.flows.first { $0.flow == flow }?.steps)
            #expect(steps.contains(RaceStep(kind: .setupBegin, direction: .evict)), "\(flow): no eviction in \(steps)")
        }
        // evict moves only what fit, including the target's batch.
        let (w, r) = try dryWorld(c, .evict)
        defer { shutDown(w) }
        guard case .migrated(let n) = r else { Issue.record("evict: \(r)"); return }
        #expect(n == 16 && w.residentAtStart == 16)
    }

    /// Pipelined batches under VRAM pressure: the batch in flight holds the only VRAM, so
    /// the next one waits for it rather than staying in RAM (`PipelinePressureTests`).
    @Test func pipelinedBatchesUnderVRAMPressure() async throws {
        var c = RaceConfiguration()
        c.pipeline = 2
        c.vramPages = 16
        let m = try await matrix(c, flows: [.toDevice], actions: [.none, .cpuWrite, .munmap, .evictAll])
        #expect(m.flows.first?.steps.contains(RaceStep(kind: .setupBegin, direction: .evict)) == true)
    }

    /// The `other-device` action's device is another pgmap owner: it takes the system pages
    /// of the range, never this device's (MIGRATE_VMA_SELECT_SYSTEM), and this device's
    /// migration then leaves its pages alone in turn.
    @Test func aSecondDeviceTakesOnlySystemPages() throws {
        let (w, r) = try dryWorld(RaceConfiguration(), .evict)   // the range in this device's VRAM, then evicted
        defer { shutDown(w) }
        guard case .migrated(let evicted) = r else { Issue.record("evict: \(r)"); return }
        #expect(evicted == w.pages)
        try w.gpu.migrateToDevice(w.mm, range: w.window)             // the target's batch back in this device's VRAM
        guard case .done = RaceAction.otherDevice.perform(w) else { Issue.record("other-device failed"); return }
        let other = try #require(w.otherDeviceIfMade)
        #expect(other.vram.inUsePageCount == w.pages - RaceWorld.batchPages)
        #expect(w.gpu.vram.inUsePageCount == RaceWorld.batchPages)
        #expect(try w.gpu.migrateToDevice(w.mm, range: w.range).migrated == 0)
        for p in 0..<w.pages { #expect(try w.mm.read(at: w.address(p), count: pageSize) == RacePage.pattern.bytes(page: p)) }
        try other.shutdown()
    }

    /// System RAM for two pages while the range goes back: evict, migrate-to-ram and
    /// suspend move what fits and leave the rest in VRAM with its data; the CPU fault, a COW
    /// and suspend or teardown meet ENOMEM (documented notes, not failures), and every frame
    /// and device page comes back at teardown.
    @Test func ramPressure() async throws {
        var c = RaceConfiguration()
        c.ramPages = 2
        let m = try await matrix(c, flows: [.cpuFault, .evict, .migrateToRAM, .suspend],
                                 actions: [.none, .cpuWrite, .cowWriteChild, .pin, .suspendResume, .shutdown])
        let notes = m.cells.flatMap(\.notes)
        #expect(notes.contains { $0.contains("out of memory") }, "no cell met ENOMEM: \(notes.prefix(5))")
        let (w, r) = try dryWorld(c, .migrateToRAM)
        defer { shutDown(w) }
        guard case .migrated(let n) = r else { Issue.record("migrate-to-ram: \(r)"); return }
        #expect(n == 2 && w.gpu.vram.inUsePageCount == w.pages - 2)
    }

    @Test func badConfigurationsAreRefused() {
        #expect(parseError(["race", "--api", "2019"]) == "api must be 3step or 2017")
        #expect(parseError(["race", "--pipeline", "0"]) == "--pipeline must be in 1...8 (got 0)")
        #expect(parseError(["race", "--pipeline", "2", "--api", "2017"])?.hasPrefix("--pipeline applies to the three-step API only") == true)
        #expect(parseError(["race", "--fault-around", "513"]) == "--fault-around must be in 1...512 (got 513)")
        #expect(parseError(["race", "--prefetch", "random"]) == "prefetch must be off or sequential")
        #expect(parseError(["race", "--prefetch", "sequential", "--fault-around", "16"])?.hasPrefix("--fault-around and --prefetch sequential") == true)
        #expect(parseError(["race", "--gpu-fault", "evict"]) == "gpu-fault must be one of: migrate, map, thrashing")
        #expect(parseError(["race", "--memory", "shared"]) == "memory must be one of: private, coherent")
        #expect(parseError(["race", "--vram", "24"]) == "--vram must be a multiple of 16 pages in 16...1024 (got 24)")
        #expect(parseError(["race", "--vram", "2048"]) == "--vram must be a multiple of 16 pages in 16...1024 (got 2048)")
        #expect(parseError(["race", "--ram", "-1"]) == "--ram must be in 0...4096 pages (got -1)")
        #expect((try? RaceCommand.parse(["--ram", "0"]).options())?.configuration.ramPages == 0)
        #expect(parseError(["race", "--api", "2017", "--fault-around", "16", "--memory", "coherent", "--gpu-fault", "map",
                            "--all-or-nothing", "--vram", "16", "--hole"]) == nil)
        let o = try? RaceCommand.parse(["--memory", "coherent", "--gpu-fault", "thrashing", "--vram", "32", "--all-or-nothing"]).options()
        #expect(o?.configuration.memory == .coherent && o?.configuration.gpuFault == .thrashing)
        #expect(o?.configuration.vramPages == 32 && o?.configuration.allOrNothing == true)
        #expect(parseError(["run", "race", "--set", "memory=shared"])?.contains("'shared' is not a valid value for 'memory'") == true)
    }
}
