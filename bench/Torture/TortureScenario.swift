/// The `torture` scenario in the bench framework (`dmem-bench run torture --set seconds=60`):
/// the same run as `dmem-bench torture`, recorded with the machine's facts. It measures
/// no bandwidth; its record says whether the model lost or leaked anything.
///
/// Threads: `run` joins the workers it starts.
struct TortureScenario: BenchScenario {
    let name = "torture"
    let abstract = "Concurrent accesses, migrations, forks and injected copy faults against a shadow model of every page."
    let parameters: [ScenarioParameter] = [
        .init("seconds", .integer(1...86_400), default: "30", help: "seconds of random operations"),
        .init("threads", .integer(1...64), default: "4", help: "worker threads (each its own process)"),
        .init("seed", .integer(0...Int.max), default: "1", help: "seed of the operations and the fault injection"),
        .init("inject-permille", .integer(0...1000), default: "10", help: "injected faults per 1000 copy descriptors"),
        .init("residency-ms", .integer(0...1000), default: "0", help: "minimum residency in VRAM (0: off)"),
        .init("fault-copy", .choice(TortureOptions.FaultCopy.allCases.map(\.rawValue)), default: "cpu",
              help: "small faults copy on the faulting thread (cpu, the default) or every fault through the engine"),
        .init("backend", .choice(MigrateOptions.Backend.allCases.map(\.rawValue)), default: "iouring",
              help: "copy backend under the fault injector"),
    ]
    let quickParameters = ["seconds": "3"]
    let summaryFields = ["operations", "mismatches", "leaks", "protocol_violations", "passed"]
    let caseFields: [String] = []

    func run(_ parameters: ScenarioParameters, context: ScenarioContext) throws -> [RunRecord] {
        var o = TortureOptions()
        o.seconds = Double(try parameters.int("seconds"))
        o.threads = try parameters.int("threads")
        o.seed = UInt64(try parameters.int("seed"))
        o.injectRate = Double(try parameters.int("inject-permille")) / 1000
        o.minimumResidency = .milliseconds(try parameters.int("residency-ms"))
        o.faultCopy = TortureOptions.FaultCopy(rawValue: try parameters.string("fault-copy")) ?? .cpu
        o.copyBackend = MigrateOptions.Backend(rawValue: try parameters.string("backend")) ?? .iouring
        let record = try TortureRun.run(o, progress: context.progress)
        guard record["passed"] == .bool(true) else {
            throw ScenarioError(scenario: name, message: "torture found problems: \(record.json)")
        }
        return [record]
    }
}
