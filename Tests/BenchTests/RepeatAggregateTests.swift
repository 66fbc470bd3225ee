import Testing
@testable import dmem_bench

@Suite struct RepeatAggregateTests {
    func record(_ fields: [(String, RunRecord.Value)]) -> RunRecord {
        var r = RunRecord()
        for (name, value) in fields { r.set(name, value) }
        return r
    }

    @Test func medianOfOddAndEvenCounts() {
        #expect(RepeatAggregate.median([3, 1, 2]) == 2)
        #expect(RepeatAggregate.median([4, 1, 3, 2]) == 2.5)
        #expect(RepeatAggregate.median([7]) == 7)
        #expect(RepeatAggregate.median([]).isNaN)
    }

    @Test func doublesBecomeMedianWithMinAndMax() {
        let samples = [5.0, 1.0, 9.0, 4.0, 6.0].map { record([("gbps", .double($0))]) }
        let out = RepeatAggregate.aggregate(samples)
        #expect(out["gbps"] == .double(5))
        #expect(out["gbps_min"] == .double(1))
        #expect(out["gbps_max"] == .double(9))
        #expect(out.fields.map(\.name) == ["gbps", "gbps_min", "gbps_max"])
    }

    /// A single slow repeat moves a mean but not the median the record promises.
    @Test func anOutlierRepeatDoesNotMoveTheMedian() {
        let samples = [1.0, 30.0, 2.0].map { record([("gbps", .double($0))]) }
        let out = RepeatAggregate.aggregate(samples)
        #expect(out["gbps"] == .double(2))
        #expect(out["gbps_min"] == .double(1) && out["gbps_max"] == .double(30))
    }

    /// A repeat with no figure (NaN, `null` in JSON) is left out of the spread as it is of the
    /// median: a first repeat's NaN must not become the minimum and maximum of the others.
    @Test func aRepeatWithoutAFigureIsLeftOutOfTheSpread() {
        let samples = [Double.nan, 1.0, 3.0].map { record([("gbps", .double($0))]) }
        let out = RepeatAggregate.aggregate(samples)
        #expect(out["gbps"] == .double(2))
        #expect(out["gbps_min"] == .double(1))
        #expect(out["gbps_max"] == .double(3))
    }

    /// Repeats that returned different numbers of records cannot be matched by position.
    @Test func repeatsWithDifferentRecordCountsAreRefused() throws {
        let parameters = try ScenarioParameters(for: FakeScenario())
        let one = [record([("gbps", .double(1))])]
        #expect(throws: ScenarioError.self) {
            try BenchRunner.aggregate([one, one + one], scenario: "fake", parameters: parameters)
        }
        #expect(try BenchRunner.aggregate([one, one], scenario: "fake", parameters: parameters).count == 1)
    }

    @Test func constantIntegersStayAsTheyAreAndVaryingOnesGetSpread() {
        let samples = [10, 30, 20].map { record([("page_size", .int(4096)), ("faults", .int($0))]) }
        let out = RepeatAggregate.aggregate(samples)
        #expect(out["page_size"] == .int(4096))
        #expect(out["page_size_min"] == nil)
        #expect(out["faults"] == .int(20))
        #expect(out["faults_min"] == .int(10))
        #expect(out["faults_max"] == .int(30))
        let even = RepeatAggregate.aggregate([1, 2].map { record([("n", .int($0))]) })
        #expect(even["n"] == .double(1.5))
    }

    @Test func booleansMustHoldInEveryRepeatAndStringsThatDifferAreJoined() {
        let samples = [
            record([("verified", .bool(true)), ("direction", .string("h2d")), ("backend", .string("iouring"))]),
            record([("verified", .bool(false)), ("direction", .string("h2d")), ("backend", .string("memcpy"))]),
        ]
        let out = RepeatAggregate.aggregate(samples)
        #expect(out["verified"] == .bool(false))
        #expect(out["direction"] == .string("h2d"))
        #expect(out["backend"] == .string("iouring|memcpy"))
    }

    @Test func oneSampleIsReturnedUnchanged() {
        let single = record([("gbps", .double(3)), ("verified", .bool(true))])
        #expect(RepeatAggregate.aggregate([single]) == single)
    }

    @Test func runnerRepeatsEachPointAndAggregatesByPosition() throws {
        let scenario = FakeScenario(gbpsByRepeat: [1, 3, 2])
        let plan = try SweepPlan(scenario: scenario, spec: SweepSpec(parsing: ["batch=1,8"]))
        let jobs = plan.points.map { BenchJob(scenario: scenario, parameters: $0) }
        let results = try BenchRunner(repeats: 3).run(jobs)
        #expect(scenario.counter.calls == 6)
        #expect(results.count == 2)
        for result in results {
            #expect(result.repeats == 3)
            #expect(result.samples.count == 3)
            #expect(result.record["gbps"] == .double(2))
            #expect(result.record["gbps_min"] == .double(1))
            #expect(result.record["gbps_max"] == .double(3))
        }
        #expect(results.map { $0.record["batch_pages"] } == [.int(1), .int(8)])
    }

    @Test func quickOverridesOnlyKeysTheUserDidNotSet() throws {
        let scenario = FakeScenario()
        let defaults = try ScenarioParameters(for: scenario)
        let set = try ScenarioParameters(for: scenario, overrides: [("batch", "64")])
        let runner = BenchRunner(quick: true)
        let results = try runner.run([BenchJob(scenario: scenario, parameters: defaults), BenchJob(scenario: scenario, parameters: set)])
        #expect(results.map { $0.record["batch_pages"] } == [.int(8), .int(64)])
    }
}
