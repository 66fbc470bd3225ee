import DMAEngine
import Testing
@testable import dmem_bench

/// The runs' byte checks against a copy engine that corrupts data silently
/// (`FaultPlan.Action.corrupt`: the descriptor reports success, one byte is flipped): only
/// a check of the bytes can see it, and each run must fail in the phase that moved it.
@Suite(.timeLimit(.minutes(2))) struct CorruptionTests {
    /// `error`'s message is "`phase`: page `page` differs at byte B" with B a word offset in the page.
    static func expectNamed(_ error: ScenarioError, scenario: String, _ prefix: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(error.scenario == scenario, sourceLocation: sourceLocation)
        let rest = error.message.hasPrefix(prefix) ? String(error.message.dropFirst(prefix.count)) : ""
        let byte = Int(rest.prefix { $0.isNumber })
        #expect(error.message.hasPrefix(prefix) && byte.map { $0 % 8 == 0 && $0 < 4096 } == true,
                "\(error.message)", sourceLocation: sourceLocation)
    }

    /// A 2 MiB migrate run (512 pages, one batch) on the memcpy backend with descriptor
    /// `nth` of each channel corrupted. Channels count their own descriptors: the copy
    /// engine alone's channel copies A three times (0 … 1535; only the last pass stays in
    /// VRAM); the driver's channel (memcpy: CPU faults too) moves A to VRAM (0 … 511),
    /// faults it back page by page (512 … 1023), moves B (1024 … 1535) and evicts it.
    static func migrate(corrupting nth: Int) -> MigrateOptions {
        var o = MigrateOptions()
        o.totalBytes = 2 << 20
        o.backend = .memcpy
        o.injectedFaults = FaultPlan(seed: 3, rules: [.init(.nth(nth), .corrupt)])
        return o
    }

    static func migrateError(corrupting nth: Int) throws -> ScenarioError {
        let o = migrate(corrupting: nth)
        do {
            let r = try MigrateRun.measure(o, trace: nil, progress: { _ in })
            Issue.record("a corrupted descriptor went unnoticed: \(r.json)")
            return ScenarioError(scenario: "", message: "")
        } catch let e as ScenarioError { return e }
    }

    /// Control: the same run with nothing injected passes, so the failures below are the corruption's.
    @Test func migrateWithoutCorruptionPasses() throws {
        var o = Self.migrate(corrupting: 0)
        o.injectedFaults = FaultPlan(rules: [])
        let r = try MigrateRun.measure(o, trace: nil, progress: { _ in })
        #expect(r["verified"] == .bool(true))
    }

    @Test func migrateCatchesCorruptionInTheEngineAlonePass() throws {
        Self.expectNamed(try Self.migrateError(corrupting: 1024 + 7), scenario: "migrate", "copy engine alone: page 7 differs at byte ")
    }

    @Test func migrateCatchesCorruptionOnTheWayToVRAMThroughGPUReads() throws {
        Self.expectNamed(try Self.migrateError(corrupting: 7), scenario: "migrate", "GPU read after migration: page 7 differs at byte ")
    }

    @Test func migrateCatchesCorruptionOfAFaultInTheCPUReadBack() throws {
        Self.expectNamed(try Self.migrateError(corrupting: 512 + 7), scenario: "migrate", "CPU read-back: page 7 differs at byte ")
    }

    @Test func migrateCatchesCorruptionOfTheEvictionAfterTeardown() throws {
        let e = try Self.migrateError(corrupting: 1536 + 7)
        #expect(e.scenario == "migrate" && e.message.hasPrefix("CPU read after teardown: page "), "\(e.message)")
    }

    /// One round of 64 pages on the memcpy backend: GPU faults move the pages to VRAM in
    /// windows of 16 (descriptors 0 … 63, then overwritten by the GPU's writes), the CPU
    /// reads fault them back one by one (64 … 127): descriptor 64 + 5 is page 5's.
    @Test func thrashCatchesACorruptedFaultInItsRoundCheck() throws {
        var o = ThrashOptions()
        o.pages = 64
        o.rounds = 2
        o.backend = .memcpy
        o.injectedFaults = FaultPlan(seed: 3, rules: [.init(.nth(64 + 5), .corrupt)])
        do {
            let r = try ThrashRun.measure(o, trace: nil, progress: { _ in })
            Issue.record("a corrupted descriptor went unnoticed: \(r.json)")
        } catch let e as ScenarioError {
            let prefix = "round 0: the CPU read page 5 differing at byte "
            let byte = e.message.hasPrefix(prefix) ? Int(e.message.dropFirst(prefix.count).prefix { $0.isNumber }) : nil
            #expect(e.scenario == "thrash" && byte.map { $0 % 8 == 0 && $0 < 4096 } == true
                    && e.message.hasSuffix(" from what the GPU wrote"), "\(e.message)")
        }
        o.injectedFaults = FaultPlan(rules: [])
        #expect(try ThrashRun.measure(o, trace: nil, progress: { _ in })["verified"] == .bool(true))
    }

    /// Torture with silent corruption and no other fault: the shadow model sees mismatches,
    /// and they alone fail the run.
    @Test func tortureFailsOnSilentCorruption() throws {
        var o = TortureTests.short(seconds: 1, seed: 11, injectRate: 0)
        o.threads = 2
        o.corruptRate = 0.02
        #expect(o.faultPlan.rules.first == .init(.rate(0.02), .corrupt))
        let r = try TortureRun.run(o)
        guard case .int(let mismatches)? = r["mismatches"] else {
            Issue.record("no mismatches in \(r.json)")
            return
        }
        #expect(mismatches > 0, "\(r.json)")
        #expect(r["passed"] == .bool(false), "\(r.json)")
        #expect(r["leaks"] == .int(0) && r["protocol_violations"] == .int(0) && r["invariant_violations"] == .int(0)
                && r["unexpected_errors"] == .int(0) && r["unverified"] == .int(0),
                "corruption is the only finding: \(r.json)")
    }
}
