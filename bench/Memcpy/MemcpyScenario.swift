#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The baseline: plain `memcpy` of scattered pages into a contiguous buffer ("h2d", the
/// gather a migration to VRAM does) and back out to the scattered pages ("d2h"), in
/// timed batches, every byte verified. Its GB/s is the ceiling the copy engine and the
/// migration flow are compared with, measured in the same run on the same machine.
///
/// Threads: `run` uses only the calling thread.
struct MemcpyScenario: BenchScenario {
    let name = "memcpy"
    let abstract = "Plain memcpy of scattered pages to a contiguous buffer and back: the same-run ceiling."
    let parameters: [ScenarioParameter] = [
        .init("page-size", .size(64...(1 << 30)), default: "4K", help: "bytes per page (a multiple of 8)"),
        .init("total", .size(4096...(1 << 36)), default: "256M", help: "bytes copied each way (a multiple of page-size)"),
        .init("span", .size(4096...(1 << 40)), default: "1G", help: "address range the source pages are scattered over (≥ total)"),
        .init("batch", .integer(1...(1 << 24)), default: "512", help: "pages per timed batch (the latency sample)"),
        .init("seed", .integer(0...Int.max), default: "1", help: "seed of the page scatter and data pattern"),
    ]
    let quickParameters = ["total": "16M", "span": "64M"]

    func check(_ parameters: ScenarioParameters) throws(ParameterValueError) {
        if let problem = try Self.problem(parameters) { throw ParameterValueError(problem) }
    }

    /// Why this point cannot run, or nil: a page size the copy loop cannot take, a total below
    /// one page or not a whole number of pages, or a span given explicitly that cannot hold the pages.
    static func problem(_ parameters: ScenarioParameters) throws(ParameterValueError) -> String? {
        let pageSize = try parameters.size("page-size")
        let total = try parameters.size("total")
        let span = try parameters.size("span")
        if pageSize % 8 != 0 { return "page-size \(ByteCount(pageSize)) is not a multiple of 8" }
        if total < pageSize { return "total \(ByteCount(total)) is smaller than one page (\(ByteCount(pageSize)))" }
        if total % pageSize != 0 {
            // It would copy total / page-size whole pages while the label said total.
            return "total \(ByteCount(total)) is not a multiple of page-size \(ByteCount(pageSize))"
        }
        if parameters.explicitKeys.contains("span") && span < total {
            return "span \(ByteCount(span)) is smaller than total \(ByteCount(total)): the pages must fit in it"
        }
        return nil
    }

    func run(_ parameters: ScenarioParameters, context: ScenarioContext) throws -> [RunRecord] {
        let pageSize = try parameters.size("page-size")
        let total = try parameters.size("total")
        let span = max(try parameters.size("span"), total)   // a --quick span below an explicit total
        let batch = try parameters.int("batch")
        let seed = UInt64(try parameters.int("seed"))
        if let problem = try Self.problem(parameters) { throw error(problem) }

        let pages = total / pageSize
        var budget = MemoryBudget()
        budget.add("scattered pages", pages * pageSize)   // only the pages used of the span are touched
        budget.add("contiguous buffer", pages * pageSize)
        try budget.check("memcpy")
        let layout = ScatterLayout(pageSize: pageSize, count: pages, spanBytes: span - span % pageSize, seed: seed)
        let scattered = try AnonymousMapping(length: span)
        let contiguous = try AnonymousMapping(length: pages * pageSize)
        let track = context.trace?.track("memcpy")

        context.progress("filling \(ByteCount(pages * pageSize))")
        track.span("fill pattern") {
            for (i, offset) in layout.offsets.enumerated() {
                ScatterLayout.fill(scattered.base + offset, pageIndex: i, pageSize: pageSize, seed: seed)
            }
            memset(contiguous.base, 0, pages * pageSize)  // fault it in before timing
        }

        context.progress("h2d (gather)")
        var gather = copyBatches(layout, batch: batch, track: track, name: "gather batch") { i, offset in
            memcpy(contiguous.base + i * pageSize, scattered.base + offset, pageSize)
        }
        try track.span("verify") {
            try verify(pages: pages, pageSize: pageSize, seed: seed, direction: "h2d") { contiguous.base + $0 * pageSize }
        }
        for offset in layout.offsets { memset(scattered.base + offset, 0, pageSize) }

        context.progress("d2h (scatter)")
        var scatter = copyBatches(layout, batch: batch, track: track, name: "scatter batch") { i, offset in
            memcpy(scattered.base + offset, contiguous.base + i * pageSize, pageSize)
        }
        try track.span("verify") {
            try verify(pages: pages, pageSize: pageSize, seed: seed, direction: "d2h") { scattered.base + layout.offsets[$0] }
        }

        return [
            record(direction: "h2d", result: &gather, pages: pages, pageSize: pageSize, batch: batch, span: span),
            record(direction: "d2h", result: &scatter, pages: pages, pageSize: pageSize, batch: batch, span: span),
        ]
    }

    /// What one direction measured.
    struct BatchTiming {
        var nanoseconds: UInt64 = 0
        var latency = LatencyHistogram()
    }

    /// Copies every page in batches of `batch`, timing each batch; allocates nothing per page.
    private func copyBatches(_ layout: ScatterLayout, batch: Int, track: TraceTrack?, name: StaticString,
                             copy: (Int, Int) -> Void) -> BatchTiming {
        var timing = BatchTiming()
        var first = 0
        while first < layout.count {
            let end = min(first + batch, layout.count)
            let start = MonotonicClock.now()
            for i in first..<end { copy(i, layout.offsets[i]) }
            let stop = MonotonicClock.now()
            timing.nanoseconds &+= stop &- start
            timing.latency.record(nanoseconds: stop &- start)
            track?.complete(name, start: start, end: stop, args: TraceArgs("pages", Int64(end - first)))
            first = end
        }
        return timing
    }

    /// Checks pages `0 ..< pages` (at `page(i)`) hold their pattern; throws naming the first wrong one.
    func verify(pages: Int, pageSize: Int, seed: UInt64, direction: String,
                page: (Int) -> UnsafeMutableRawPointer) throws(ScenarioError) {
        for i in 0..<pages {
            if let word = ScatterLayout.firstMismatch(page(i), pageIndex: i, pageSize: pageSize, seed: seed) {
                throw error("\(direction): page \(i) differs at byte \(word * 8) after the copy")
            }
        }
    }

    private func record(direction: String, result: inout BatchTiming, pages: Int, pageSize: Int,
                        batch: Int, span: Int) -> RunRecord {
        var r = RunRecord()
        let bytes = pages * pageSize
        let seconds = Double(result.nanoseconds) / 1e9
        r.set("direction", direction)
        r.set("page_size", pageSize)
        r.set("batch_pages", batch)
        r.set("pages", pages)
        r.set("span", span)
        r.set("bytes", bytes)
        r.set("seconds", seconds)
        r.set("gbps", seconds > 0 ? Double(bytes) / seconds / 1e9 : 0)
        r.set("verified", true)
        result.latency.write(to: &r, prefix: "batch")
        return r
    }

    private func error(_ message: String) -> ScenarioError {
        ScenarioError(scenario: name, message: message)
    }
}
