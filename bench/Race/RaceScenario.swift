import DeviceEmu

/// The `race` scenario in the bench framework (`dmem-bench run race --set flow=evict`): the
/// same matrix as `dmem-bench race`, one record per cell, recorded with the machine's
/// facts. It measures no bandwidth; its records say which step blocks which action and
/// whether any cell broke the model.
///
/// Threads: `run` joins each cell's action thread before the next.
struct RaceScenario: BenchScenario {
    let name = "race"
    let abstract = "Each racing action pinned at each step of each driver flow (a StepProbe), every page checked."
    let parameters: [ScenarioParameter] = [
        .init("flow", .choice(["all"] + RaceFlow.allCases.map(\.rawValue)), default: "all", help: "the driver flow (or all)"),
        .init("action", .choice(["all"] + RaceAction.allCases.map(\.rawValue)), default: "all",
              help: "the racing action (or all)"),
        .init("step", .text, default: "all",
              help: "the steps held at: all, or names as the table rows show them (fenceWaitBegin.toDevice; setupEnd: every direction), comma-separated"),
        .init("occurrence", .integer(RaceOptions.occurrenceRange), default: "1",
              help: "hold at the Nth report of each step (2: the second batch's)"),
        .init("hold-ms", .integer(1...5000), default: "20", help: "ms the driver is held at the step for the action"),
        .init("pages", .integer(RaceOptions.pageRange), default: "32", help: "pages of the process (batches of 16)"),
        .init("target", .integer(0...(RaceOptions.pageRange.upperBound - 1)), default: "1",
              help: "the page the actions aim at and the fault flows fault on (16 and above: the second batch)"),
        .init("backend", .choice(MigrateOptions.Backend.allCases.map(\.rawValue)), default: "iouring", help: "copy backend"),
        .init("hole", .flag, default: "off", help: "the target page starts as a hole (never written)"),
        .init("driver", .choice(RaceConfiguration.Driver.allCases.map(\.rawValue)), default: "nouveau",
              help: "nouveau (Device) or mirror (test_hmm's dmirror: the mirror-* flows)"),
        .init("api", .choice(["3step", "2017"]), default: "3step", help: "driver API of migrations by address (to VRAM, CPU faults)"),
        .init("pipeline", .integer(1...8), default: "1", help: "batches in flight (3step only)"),
        .init("fault-around", .integer(1...512), default: "1", help: "pages per CPU fault"),
        .init("prefetch", .choice(MigrateOptions.Prefetch.allCases.map(\.rawValue)), default: "off", help: "CPU-fault prefetch"),
        .init("gpu-fault", .choice(ThrashOptions.GPUFault.allCases.map(\.rawValue)), default: "migrate",
              help: "how a GPU fault is resolved"),
        .init("memory", .choice(RaceConfiguration.Memory.allCases.map(\.rawValue)), default: "private", help: "VRAM kind"),
        .init("all-or-nothing", .flag, default: "off", help: "migrate each batch whole or not at all"),
        .init("vram", .integer(RaceConfiguration.vramRange), default: "\(RaceConfiguration.defaultVRAMPages)",
              help: "VRAM pages (a multiple of 16; below pages: eviction under pressure)"),
    ]
    /// CI-sized: each `after` cell costs its hold, so a short hold halves the matrix's time
    /// (every cell is still judged; only `held` vs `after` is told apart less surely).
    let quickParameters = ["hold-ms": "5"]
    let summaryFields = ["outcome", "passed"]
    let caseFields = ["flow", "step", "action"]

    /// Rejects a point whose values do not fit together (a target beyond `pages`, a flow of the
    /// other driver, `pipeline` with the 2017 API, an unknown step name, VRAM not a multiple of
    /// 16 pages) before the first point of a sweep runs.
    func check(_ parameters: ScenarioParameters) throws(ParameterValueError) {
        if let problem = try options(parameters).problem { throw ParameterValueError(problem) }
    }

    /// The matrix's settings at one point (every key was validated by the framework).
    func options(_ parameters: ScenarioParameters) throws(ParameterValueError) -> RaceOptions {
        var o = RaceOptions()
        let (flows, actions, steps) = (try parameters.string("flow"), try parameters.string("action"), try parameters.string("step"))
        do throws(RaceOptionError) {
            o.flows = try RaceOptions.list(flows, of: RaceFlow.self, what: "flow")
            o.actions = try RaceOptions.list(actions, of: RaceAction.self, what: "action")
            o.steps = try RaceStepFilter.parse(steps)
        } catch {
            throw ParameterValueError(error.description)
        }
        o.occurrence = try parameters.int("occurrence")
        o.hold = .milliseconds(try parameters.int("hold-ms"))
        o.pages = try parameters.int("pages")
        o.target = try parameters.int("target")
        o.copyBackend = MigrateOptions.Backend(rawValue: try parameters.string("backend")) ?? .iouring
        o.targetHole = try parameters.flag("hole")
        var c = RaceConfiguration()
        c.driver = RaceConfiguration.Driver(rawValue: try parameters.string("driver")) ?? .nouveau
        c.api = MigrationPolicy.APIGeneration(name: try parameters.string("api")) ?? .threeStep
        c.pipeline = try parameters.int("pipeline")
        c.faultAround = try parameters.int("fault-around")
        c.prefetch = MigrateOptions.Prefetch(rawValue: try parameters.string("prefetch")) ?? .off
        c.gpuFault = ThrashOptions.GPUFault(rawValue: try parameters.string("gpu-fault")) ?? .migrate
        c.memory = RaceConfiguration.Memory(rawValue: try parameters.string("memory")) ?? .private
        c.allOrNothing = try parameters.flag("all-or-nothing")
        let vram = try parameters.int("vram")
        c.vramPages = vram == RaceConfiguration.defaultVRAMPages ? nil : vram
        o.configuration = c
        return o
    }

    func run(_ parameters: ScenarioParameters, context: ScenarioContext) throws -> [RunRecord] {
        let o: RaceOptions
        do { o = try options(parameters) } catch { throw ScenarioError(scenario: name, message: error.message) }
        if let problem = o.problem { throw ScenarioError(scenario: name, message: problem) }
        let m = try RaceMatrix.run(o, progress: context.progress)
        guard m.passed else {
            throw ScenarioError(scenario: name, message: "failing cells:\n" + m.failureLines.joined(separator: "\n"))
        }
        return m.records
    }
}
