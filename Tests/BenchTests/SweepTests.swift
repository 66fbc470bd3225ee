import Testing
import ArgumentParser
@testable import dmem_bench

@Suite struct SweepSpecTests {
    @Test func acceptsRepeatedAndSpaceSeparatedSpecs() throws {
        let repeated = try SweepSpec(parsing: ["batch=1,8", "page-size=4K,2M"])
        let oneString = try SweepSpec(parsing: ["batch=1,8 page-size=4K,2M"])
        #expect(repeated == oneString)
        #expect(repeated.axes.map(\.key) == ["batch", "page-size"])
        #expect(repeated.axes[0].values == ["1", "8"])
        #expect(repeated.axes[1].values == ["4K", "2M"])
    }

    /// A word with no `=` continues the value before it, spaces kept: a directory whose
    /// name has spaces can be given to `--set` (it used to be rejected as a spec of its own).
    @Test func aWordWithoutEqualsContinuesTheValueBeforeIt() throws {
        let spec = try SweepSpec(parsing: ["vram-dir=/mnt/my  vram disk batch=8", "page-size=4K"])
        #expect(spec.axes.map(\.key) == ["vram-dir", "batch", "page-size"])
        #expect(spec.axes[0].values == ["/mnt/my  vram disk"])
        #expect(spec.axes[1].values == ["8"])
        #expect(throws: ParameterValueError("bad sweep spec 'vram': expected KEY=VALUE[,VALUE...], e.g. batch=1,8,64")) {
            try SweepSpec(parsing: ["vram-dir=/mnt/my", "vram"])
        }
    }

    @Test(arguments: [
        ("batch", "bad sweep spec 'batch': expected KEY=VALUE[,VALUE...], e.g. batch=1,8,64"),
        ("=1,2", "bad sweep spec '=1,2': the parameter name before '=' is missing"),
        ("batch=", "sweep 'batch=' lists no values for 'batch'"),
        ("batch=1,,8", "sweep 'batch=1,,8' has an empty value for 'batch' (stray comma?)"),
        ("batch=1,", "sweep 'batch=1,' has an empty value for 'batch' (stray comma?)"),
    ])
    func rejectsMalformedSpecs(spec: String, message: String) {
        #expect(throws: ParameterValueError(message)) { try SweepSpec(parsing: [spec]) }
    }

    /// Joining a word with no `=` to the value before it must not accept a space around
    /// `=` or a comma: those inputs were errors when every word was a spec of its own
    /// (the values are trimmed later, so `batch=1, 8` would silently become `batch=1,8`).
    @Test(arguments: [
        ("batch= 8", "sweep 'batch=' lists no values for 'batch'"),
        ("batch=1, 8", "sweep 'batch=1,' has an empty value for 'batch' (stray comma?)"),
        ("batch=1 ,8", "bad sweep spec ',8': expected KEY=VALUE[,VALUE...], e.g. batch=1,8,64"),
        ("batch=1 , 8", "bad sweep spec ',': expected KEY=VALUE[,VALUE...], e.g. batch=1,8,64"),
    ])
    func aSpaceAroundASeparatorIsStillAnError(spec: String, message: String) {
        #expect(throws: ParameterValueError(message)) { try SweepSpec(parsing: [spec]) }
    }

    @Test func rejectsADuplicateKey() {
        #expect(throws: ParameterValueError("parameter 'batch' is given twice; list all its values in one spec (batch=A,B,C)")) {
            try SweepSpec(parsing: ["batch=1", "page-size=4K batch=8"])
        }
    }
}

@Suite struct SweepPlanTests {
    let scenario = FakeScenario()

    func plan(_ specs: String...) throws -> SweepPlan {
        try SweepPlan(scenario: scenario, spec: SweepSpec(parsing: specs))
    }

    @Test func expandsTheCartesianProductFirstAxisOutermost() throws {
        let points = try plan("batch=1,8,64", "page-size=4K,2M").points
        #expect(points.count == 6)
        #expect(points.map { $0["batch"]! } == ["1", "1", "8", "8", "64", "64"])
        #expect(points.map { $0["page-size"]! } == ["4K", "2M", "4K", "2M", "4K", "2M"])
        #expect(points.allSatisfy { $0.explicitKeys == ["batch", "page-size"] })
        #expect(points[3].label == "batch=8 page-size=2M")
    }

    @Test func fillsDefaultsAndCanonicalisesValues() throws {
        let point = try #require(plan("page-size=65536 coalesce=NO direction=D2H").points.first)
        #expect(point["page-size"] == "64K")
        #expect(point["coalesce"] == "off")
        #expect(point["direction"] == "d2h")
        #expect(point["batch"] == "512")
        #expect(try point.size("page-size") == 65536)
        #expect(try point.flag("coalesce") == false)
        #expect(try point.int("batch") == 512)
    }

    @Test func noAxesIsOnePointOfDefaults() throws {
        let points = try plan().points
        #expect(points.count == 1)
        #expect(points[0].label == "")
        #expect(points[0].values == ["batch": "512", "page-size": "4K", "direction": "h2d", "coalesce": "on", "label": "x"])
    }

    @Test func cartesianProductOfListsHasEveryCombination() {
        let product = SweepPlan.cartesianProduct([["a", "b"], ["1", "2", "3"], ["x"]])
        #expect(product.count == 6)
        #expect(product.first == ["a", "1", "x"])
        #expect(product.last == ["b", "3", "x"])
        #expect(Set(product.map { $0.joined() }).count == 6)
        #expect(SweepPlan.cartesianProduct([]) == [[]])
        #expect(SweepPlan.cartesianProduct([["a"], []]) == [])
    }

    @Test(arguments: [
        ("queue-depth=1,2", "unknown parameter 'queue-depth' for scenario 'fake' (known: batch, page-size, direction, coalesce, label)"),
        ("batch=1,x", "'x' is not a valid value for 'batch' (expected an integer)"),
        ("batch=0", "'0' is out of range for 'batch' (1...4096)"),
        ("page-size=4Q", "'4Q' is not a valid value for 'page-size': expected a size such as 4096, 4K, 2M or 1G (K/M/G/T are binary)"),
        ("page-size=1G", "'1G' is out of range for 'page-size' (4K...2M)"),
        ("direction=sideways", "'sideways' is not a valid value for 'direction' (expected one of: h2d, d2h, d2d)"),
        ("coalesce=maybe", "'maybe' is not a valid value for 'coalesce' (expected on or off)"),
        ("batch=8,8", "value '8' is listed twice for 'batch'"),
        ("page-size=4K,4096", "value '4096' is listed twice for 'page-size'"),
    ])
    func rejectsBadValuesBeforeRunning(spec: String, message: String) {
        #expect(throws: ParameterValueError(message)) { try plan(spec) }
    }
}

@Suite struct CommandLineTests {

    @Test func badSweepIsAValidationErrorWithTheReason() {
        #expect(parseError(["run", "memcpy", "--sweep", "batch=1,x"]) == "'x' is not a valid value for 'batch' (expected an integer)")
        #expect(parseError(["run", "memcpy", "--sweep", "bogus=1"])?.hasPrefix("unknown parameter 'bogus' for scenario 'memcpy'") == true)
        #expect(parseError(["run", "memcpy", "--sweep", "batch=1", "--sweep", "batch=2"])?.contains("given twice") == true)
        #expect(parseError(["run", "memcpy", "--set", "batch=1,2"]) == "--set batch=1,2 gives several values; use --sweep to run each")
        #expect(parseError(["run", "nosuch"]) == "unknown scenario 'nosuch' (known: \(ScenarioRegistry.standard.names.joined(separator: ", ")))")
        #expect(parseError(["run", "memcpy", "--repeat", "0"]) == "--repeat must be between 1 and 1000 (got 0)")
    }

    @Test func acceptsEveryDocumentedSweepForm() throws {
        let forms: [[String]] = [
            ["run", "memcpy", "--sweep", "batch=1,8", "--sweep", "page-size=4K,2M"],
            ["run", "memcpy", "--sweep", "batch=1,8", "page-size=4K,2M"],
            ["run", "memcpy", "--sweep", "batch=1,8 page-size=4K,2M"],
        ]
        for form in forms {
            let command = try #require(try DmemBench.parseAsRoot(form) as? RunCommand)
            let jobs = try command.jobs()
            #expect(jobs.count == 4, "\(form)")
            #expect(jobs.map(\.parameters.label) == [
                "batch=1 page-size=4K", "batch=1 page-size=2M", "batch=8 page-size=4K", "batch=8 page-size=2M",
            ])
        }
    }

    @Test func noArgumentsRunsTheSuite() throws {
        #expect(try DmemBench.parseAsRoot([]) is SuiteCommand)
        let quick = try #require(try DmemBench.parseAsRoot(["--quick", "--json", "x.json"]) as? SuiteCommand)
        #expect(quick.options.quick)
        #expect(quick.options.json == "x.json")
    }
}
