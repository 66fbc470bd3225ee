import Testing
@testable import dmem_bench

/// `--checked` in the bench tools: the benchmark drivers run clean in checked mode, and
/// the records say which mode they measured (so `--sweep checked=off,on` shows its cost).
@Suite struct CheckedBenchTests {
    @Test func theMMControlPathRunsCleanInCheckedMode() throws {
        let on = try MMScenario.run(pages: 2048, batch: 512, faultSamples: 256, checked: true)
        #expect(on["checked"] == .bool(true) && on["protocol_violations"] == .int(0))
        let off = try MMScenario.run(pages: 2048, batch: 512, faultSamples: 256)
        #expect(off["checked"] == .bool(false) && off["protocol_violations"] == nil)
    }

    @Test(arguments: ["iouring", "memcpy"])
    func theMigrateFlowRunsCleanInCheckedMode(backend: String) throws {
        var o = MigrateOptions()
        o.totalBytes = 16 << 20
        o.backend = try #require(MigrateOptions.Backend(rawValue: backend))
        o.pipeline = 2
        o.checked = true
        let r = try MigrateRun.measure(o, trace: nil, progress: { _ in })
        #expect(r["checked"] == .bool(true) && r["protocol_violations"] == .int(0))
        #expect(r["verified"] == .bool(true))
    }

    @Test func theScenariosTakeACheckedParameter() throws {
        for name in ["mm", "migrate"] {
            let scenario = try ScenarioRegistry.standard.scenario(named: name)
            #expect(scenario.parameter("checked")?.defaultValue == "off")
        }
    }
}
