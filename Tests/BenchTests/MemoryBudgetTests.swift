import Testing
import DMAEngine
@testable import dmem_bench

/// Runs larger than the machine's memory stop with an error before allocating, instead of
/// being OOM-killed (or getting another process killed) half-way.
@Suite struct MemoryBudgetTests {
    @Test func theBudgetComparesWithNinetyPercentOfWhatIsAvailable() throws {
        var budget = MemoryBudget()
        budget.add("VRAM", 1 << 30)
        budget.add("RAM", 2 << 30)
        try budget.check("x", available: 4 << 30)
        try budget.check("x", available: nil)   // unknown: not refused
        #expect(throws: ScenarioError.self) { try budget.check("x", available: 3 << 30) }
        do {
            try budget.check("migrate", available: 2 << 30)
            Issue.record("3 GiB passed a 2 GiB machine")
        } catch {
            #expect(error.scenario == "migrate")
            #expect(error.message.contains("VRAM 1 GiB + RAM 2 GiB") && error.message.contains("MemAvailable"), "\(error.message)")
        }
    }

    @Test func sizesReadAsHumansWriteThem() {
        #expect(MemoryBudget.approximate(512) == "512 B")
        #expect(MemoryBudget.approximate(512 << 20) == "512 MiB")
        #expect(MemoryBudget.approximate(24_163_040 * 1024) == "23.0 GiB")
        #expect(MemoryBudget.approximate(3 << 40) == "3 TiB")
        #expect(MemoryBudget.approximate((64 << 20) + 3 * 4096 * 4096) == "112 MiB")
    }

    @Test func aMigrateRunBeyondTheMachineIsRefusedBeforeItStarts() throws {
        var o = MigrateOptions()
        o.totalBytes = 1 << 40
        #expect {
            _ = try MigrateRun.measure(o, trace: nil, progress: { _ in })
        } throws: { error in
            (error as? ScenarioError)?.message.contains("MemAvailable") == true
        }
    }

    /// 64 GiB each way is the scenario's largest `total`: only a machine with under ~140 GiB
    /// available can be too small for it.
    @Test(.enabled(if: SystemMemory.available().map { 2 * (64 << 30) > SystemMemory.usable(of: $0) } ?? false,
                   "needs a machine with less than ~140 GiB available"))
    func aMemcpyRunBeyondTheMachineIsRefusedBeforeItStarts() throws {
        let scenario = MemcpyScenario()
        let parameters = try ScenarioParameters(for: scenario, overrides: [("total", "64G"), ("span", "64G")])
        #expect {
            _ = try scenario.run(parameters, context: ScenarioContext())
        } throws: { error in
            (error as? ScenarioError)?.message.contains("MemAvailable") == true
        }
    }

    @Test func aCopyRunBeyondTheMachineIsRefusedBeforeItStarts() throws {
        var o = CopyOptions()
        o.totalBytes = 1 << 40
        #expect {
            _ = try CopyScenario.run(o)
        } throws: { error in
            (error as? ScenarioError)?.message.contains("MemAvailable") == true
        }
    }
}
