/// Runs jobs one after the other, each `repeats` times, and aggregates them into results.
///
/// Threads: one thread calls `run`; scenarios may use more inside their `run`.
struct BenchRunner {
    var repeats: Int = 1
    /// Apply each scenario's `quickParameters` to keys the job did not set (CI-sized runs).
    var quick: Bool = false
    var trace: TraceRecorder?
    var progress: ProgressLine = ProgressLine(mode: .silent)

    /// Runs every job; on a failure throws `BenchRunError` carrying the results so far.
    func run(_ jobs: [BenchJob]) throws(BenchRunError) -> [BenchResult] {
        var results: [BenchResult] = []
        let width = String(jobs.count).count
        for (index, job) in jobs.enumerated() {
            let parameters = Self.parameters(of: job, quick: quick)
            let name = [job.scenario.name, parameters.label].filter { !$0.isEmpty }.joined(separator: " ")
            let counter = "[\(String(repeating: " ", count: width - String(index + 1).count))\(index + 1)/\(jobs.count)]"
            var samples: [[RunRecord]] = []
            let started = MonotonicClock.now()
            for rep in 0..<max(repeats, 1) {
                progress.begin(repeats > 1 ? "\(counter) \(name) (\(rep + 1)/\(repeats))" : "\(counter) \(name)")
                let process = trace?.process(repeats > 1 ? "\(name) #\(rep + 1)" : name)
                let line = progress
                let context = ScenarioContext(trace: process, quick: quick, progress: { line.update($0) })
                do {
                    samples.append(try job.scenario.run(parameters, context: context))
                } catch {
                    progress.finish("failed")
                    throw BenchRunError(job: name, underlying: error, completed: results)
                }
            }
            let point: [BenchResult]
            do {
                point = try Self.aggregate(samples, scenario: job.scenario.name, parameters: parameters)
            } catch {
                throw BenchRunError(job: name, underlying: error, completed: results)
            }
            results += point
            progress.finish(Self.outcome(point, seconds: MonotonicClock.seconds(since: started)))
        }
        return results
    }

    /// The parameters `run` gives `job`'s scenario: with `--quick`, its quick values for keys the job did not set.
    static func parameters(of job: BenchJob, quick: Bool) -> ScenarioParameters {
        quick ? job.parameters.merging(defaults: quickValues(of: job.scenario)) : job.parameters
    }

    /// Checks every point as it will run (`BenchScenario.check`), so that a sweep fails
    /// before its first measurement rather than at the point that cannot run.
    static func check(_ jobs: [BenchJob], quick: Bool) throws(ParameterValueError) {
        for job in jobs {
            let parameters = Self.parameters(of: job, quick: quick)
            do {
                try job.scenario.check(parameters)
            } catch {
                let label = parameters.label.isEmpty ? "" : " (\(parameters.label))"
                throw ParameterValueError("\(job.scenario.name)\(label): \(error.message)")
            }
        }
    }

    /// The scenario's quick overrides, canonicalised like user input.
    static func quickValues(of scenario: any BenchScenario) -> [String: String] {
        var values: [String: String] = [:]
        for (key, raw) in scenario.quickParameters {
            values[key] = (try? scenario.parameter(key)?.canonical(raw).get()) ?? raw
        }
        return values
    }

    /// Matches the records of each repeat by position and folds them (median and spread).
    static func aggregate(_ samples: [[RunRecord]], scenario: String,
                          parameters: ScenarioParameters) throws(ScenarioError) -> [BenchResult] {
        guard let count = samples.first?.count else { return [] }
        guard samples.allSatisfy({ $0.count == count }) else {
            throw ScenarioError(scenario: scenario, message: "repeats returned different numbers of records (\(samples.map(\.count)))")
        }
        return (0..<count).map { position in
            let records = samples.map { $0[position] }
            return BenchResult(scenario: scenario, parameters: parameters, repeats: samples.count,
                               record: RepeatAggregate.aggregate(records), samples: records.count > 1 ? records : [])
        }
    }

    /// "5.12 GB/s h2d, 4.80 GB/s d2h (1.3 s)" — the headline of a finished point.
    static func outcome(_ results: [BenchResult], seconds: Double) -> String {
        let figures = results.flatMap { result in
            SummaryTable.throughputFields(of: result.record).map { field in
                let tag = (result.record["direction"].map { $0.formatted() }).map { " \($0)" } ?? ""
                let stem = field == "gbps" ? "" : " \(field.dropLast("_gbps".count))"
                return "\(result.record[field]?.formatted() ?? "-") GB/s\(tag)\(stem)"
            }
        }
        let time = "(\(RunRecord.Value.double(seconds).formatted(digits: 1)) s)"
        return (figures.isEmpty ? "done" : figures.joined(separator: ", ")) + " " + time
    }
}
