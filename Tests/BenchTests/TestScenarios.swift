@testable import dmem_bench

/// The message ArgumentParser prints for `arguments`, or nil when they parse.
func parseError(_ arguments: [String]) -> String? {
    do {
        _ = try DmemBench.parseAsRoot(arguments)
        return nil
    } catch {
        return DmemBench.message(for: error)
    }
}

/// A scenario for framework tests: returns one record per direction whose numbers are
/// derived from the parameters and a repeat counter, so aggregates are predictable.
struct FakeScenario: BenchScenario {
    var name = "fake"
    var abstract = "test double"
    var parameters: [ScenarioParameter] = [
        .init("batch", .integer(1...4096), default: "512", help: "pages per batch"),
        .init("page-size", .size(4096...(1 << 21)), default: "4K", help: "page size"),
        .init("direction", .choice(["h2d", "d2h", "d2d"]), default: "h2d", help: "direction"),
        .init("coalesce", .flag, default: "on", help: "coalescing"),
        .init("label", .text, default: "x", help: "free text"),
    ]
    var quickParameters: [String: String] = ["batch": "8"]
    /// GB/s of each repeat in turn (cycled).
    var gbpsByRepeat: [Double] = [1, 3, 2]
    /// What every record reports as `verified` (false: the bytes did not survive).
    var verified = true
    /// The call (0-based) that throws instead of measuring, if any.
    var failingCall: Int? = nil
    let counter = Counter()

    final class Counter: @unchecked Sendable {
        // Tests run a scenario from one thread at a time.
        var calls = 0
    }

    func run(_ parameters: ScenarioParameters, context: ScenarioContext) throws -> [RunRecord] {
        let call = counter.calls
        counter.calls += 1
        if call == failingCall { throw ScenarioError(scenario: name, message: "injected failure") }
        var r = RunRecord()
        r.set("direction", try parameters.string("direction"))
        r.set("page_size", try parameters.size("page-size"))
        r.set("batch_pages", try parameters.int("batch"))
        r.set("coalesce", try parameters.flag("coalesce"))
        r.set("gbps", gbpsByRepeat[call % gbpsByRepeat.count])
        r.set("memcpy_gbps", 4.0)
        r.set("verified", verified)
        return [r]
    }
}
