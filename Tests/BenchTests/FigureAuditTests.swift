import Foundation
import Testing
@testable import dmem_bench

/// Every reported figure recomputed from what a test can observe itself (trace spans, byte
/// counts, the link model's arithmetic) and from the record's other fields: a wrong
/// denominator, a double count or a unit slip shows up as a disagreement, whatever the
/// machine's speed. Bounds are consistency bounds, never speed targets.
@Suite struct FigureAuditTests {
    func number(_ r: RunRecord, _ key: String) throws -> Double {
        try #require(r[key]?.numeric, "\(key) missing")
    }

    func close(_ a: Double, _ b: Double, _ tolerance: Double = 1e-9) -> Bool {
        abs(a - b) <= tolerance * max(abs(a), abs(b))
    }

    func spans(_ events: [TraceEvent], _ name: String, tid: Int32? = nil) -> [TraceEvent] {
        events.filter { $0.phase == .complete && $0.name.description == name && (tid == nil || $0.tid == tid) }
    }

    // MARK: memcpy

    /// `seconds` is the sum of the timed batches (traced one span each), `gbps` is
    /// bytes / seconds in 10^9 bytes per second, one latency sample per batch in µs.
    @Test func memcpyFiguresAreTheTimedBatchesOfEachDirection() throws {
        let recorder = TraceRecorder(capacity: 4096)
        let scenario = MemcpyScenario()
        let parameters = try ScenarioParameters(for: scenario, overrides: [("total", "640K"), ("span", "4M"), ("batch", "32")])
        let records = try scenario.run(parameters, context: ScenarioContext(trace: recorder.process("memcpy")))
        let events = recorder.events()
        for (r, name) in zip(records, ["gather batch", "scatter batch"]) {
            let batches = spans(events, name)
            #expect(batches.count == 5 && r["batch_samples"] == .int(5), "160 pages in batches of 32")
            let traced = Double(batches.reduce(0) { $0 + $1.duration }) / 1e9
            let seconds = try number(r, "seconds")
            #expect(close(seconds, traced), "seconds \(seconds), traced batches \(traced)")
            #expect(close(try number(r, "gbps"), Double(640 << 10) / seconds / 1e9))
            let longest = Double(batches.map(\.duration).max() ?? 0) / 1e3
            let max = try number(r, "batch_max_us")
            #expect(abs(max - longest) <= 0.002 * longest + 0.001, "batch_max_us \(max), longest traced batch \(longest) µs")
        }
    }

    // MARK: copy

    /// With a modelled link every batch costs at least its bytes at the link's rate plus the
    /// latency, so the reported GB/s cannot exceed what the model allows and each batch's
    /// latency cannot be below it; and the record's figures agree with one another.
    @Test func copyFiguresRespectTheLinkModelAndAgreeWithEachOther() throws {
        let scenario = CopyBenchScenario()
        let parameters = try ScenarioParameters(for: scenario, overrides: [
            ("total", "256K"), ("span", "1M"), ("batch", "16"), ("passes", "3"), ("direction", "h2d"),
            ("backend", "memcpy"), ("inflight", "1"), ("link", "1,200us"),
        ])
        let r = try #require(try scenario.run(parameters, context: ScenarioContext()).first)
        let bytes = Double(256 << 10), pages = 64.0, batches = 4.0
        let perBatch = 65_536 / 1e9 + 200e-6   // 64 KiB at 1 GB/s, then 200 µs
        let seconds = try number(r, "seconds"), gbps = try number(r, "gbps"), memcpy = try number(r, "memcpy_gbps")
        #expect(close(gbps, bytes / seconds / 1e9))
        #expect(close(try number(r, "ratio"), gbps / memcpy))
        #expect(close(try number(r, "descriptors_per_s"), pages / seconds))
        #expect(seconds >= batches * perBatch * 0.99, "a pass of \(seconds) s beat the link model")
        #expect(gbps <= bytes / (batches * perBatch) / 1e9 * 1.01)
        #expect(try number(r, "batch_p50_us") >= perBatch * 1e6 * 0.99)
        #expect(r["batch_samples"] == .int(Int(batches) * 3), "one sample per batch of every pass")
        #expect(r["sqes"] == .int(0), "the memcpy backend issues no ring operations")
    }

    /// `channels` N means N threads submitting at once: every channel's batches are in
    /// flight while every other channel's are (checked on the trace's per-channel tracks).
    @Test func everyChannelSubmitsAtTheSameTimeAsTheOthers() throws {
        let recorder = TraceRecorder(capacity: 1 << 14)
        let scenario = CopyBenchScenario()
        let parameters = try ScenarioParameters(for: scenario, overrides: [
            ("total", "256K"), ("span", "1M"), ("batch", "4"), ("passes", "1"), ("direction", "h2d"),
            ("backend", "memcpy"), ("inflight", "1"), ("channels", "4"), ("link", "0.001,0"),
        ])
        let r = try #require(try scenario.run(parameters, context: ScenarioContext(trace: recorder.process("copy"))).first)
        #expect(r["verified"] == .bool(true) && r["channels"] == .int(4))
        let batches = spans(recorder.events(), "batch")
        #expect(batches.count == 16)
        let lanes = Dictionary(grouping: batches, by: \.tid)
        #expect(lanes.count == 4)
        let starts = lanes.values.map { $0.map(\.timestamp).min()! }
        let ends = lanes.values.map { $0.map { $0.timestamp + $0.duration }.max()! }
        // Each channel's 4 batches of 16 KiB take ≥ 65 ms on its 0.001 GB/s link: all four
        // run at once unless a channel waits for another to finish before it starts (at
        // 0.01 GB/s, 6.5 ms, a thread started late on a loaded 2-core machine once missed it).
        #expect(starts.max()! < ends.min()!, "a channel started only after another had finished")
    }

    // MARK: migrate

    /// Each phase's GB/s is the bytes it moved over the phase the trace shows, the ratios are
    /// the GB/s over `memcpy_gbps`, and every fault of the read-back is one latency sample.
    @Test(arguments: [1, 8])
    func migrateFiguresMatchTheirTracedPhases(faultAround: Int) throws {
        var o = MigrateOptions()
        o.totalBytes = 4 << 20
        o.batchPages = 128
        o.faultAround = faultAround
        o.backend = .memcpy
        let recorder = TraceRecorder(capacity: 1 << 16)
        let r = try MigrateRun.measure(o, trace: recorder.process("migrate"), progress: { _ in })
        #expect(recorder.droppedEvents == 0)
        let events = recorder.events()
        let gb = Double(o.totalBytes) / 1e9
        func phase(_ name: String) throws -> Double {
            Double(try #require(spans(events, name).first, "\(name) span").duration) / 1e9
        }
        // Timed around the span, so within the span's own cost of it.
        for (field, span) in [("to_device_gbps", "migrate to VRAM"), ("to_device_reused_gbps", "migrate B to reused VRAM"),
                              ("evict_gbps", "teardown")] {
            let traced = gb / (try phase(span))
            let reported = try number(r, field)
            #expect(abs(reported - traced) <= 0.05 * traced, "\(field) \(reported), bytes over the \(span) span \(traced)")
        }
        let memcpy = try number(r, "memcpy_gbps")
        for (ratio, field) in [("ratio_to_device", "to_device_gbps"), ("ratio_engine", "engine_gbps"),
                               ("ratio_to_ram_fault", "to_ram_fault_gbps"), ("ratio_evict", "evict_gbps"),
                               ("ratio_to_device_reused", "to_device_reused_gbps")] {
            #expect(close(try number(r, ratio), try number(r, field) / memcpy, 1e-6), "\(ratio)")
        }
        // The baseline and the engine alone are medians of three passes inside their spans.
        #expect(gb / memcpy <= (try phase("memcpy baseline")) / 2)
        #expect(gb / (try number(r, "engine_gbps")) <= (try phase("copy engine alone")) / 2)
        // Read-back: one fault per window, each a sample; the reads hold the faults.
        let pages = o.totalBytes / 4096
        #expect(r["faults"] == .int(pages / faultAround))
        #expect(r["fault_samples"] == r["faults"])
        let faultSpans = spans(events, "cpu fault")
        #expect(faultSpans.count == pages / faultAround)
        let readSeconds = gb / (try number(r, "to_ram_fault_gbps"))
        #expect(readSeconds >= Double(faultSpans.reduce(0) { $0 + $1.duration }) / 1e9)
        #expect(readSeconds <= (try phase("CPU read-back")))
        let longestFault = Double(faultSpans.map(\.duration).max() ?? 0) / 1e3
        #expect(try number(r, "fault_max_us") >= longestFault * 0.999, "a faulting read holds its fault")
        let p50 = try number(r, "fault_p50_us"), p99 = try number(r, "fault_p99_us"), max = try number(r, "fault_max_us")
        #expect(p50 > 0 && p50 <= p99 && p99 <= max)
    }
}

/// The derived figures of `mm` and `thrash`, and the files and table of a repeated run,
/// checked against the fields they are made of.
@Suite struct DerivedFigureTests {
    func number(_ r: RunRecord, _ key: String) throws -> Double {
        try #require(r[key]?.numeric, "\(key) missing")
    }

    @Test func mmControlPathIsTheSumOfItsSteps() throws {
        let r = try MMScenario.run(pages: 2048, batch: 256, faultSamples: 64)
        let steps = try ["setup_ns_per_page", "pages_ns_per_page", "finalize_ns_per_page"].map { try number(r, $0) }
        #expect(abs(try number(r, "control_ns_per_page") - steps.reduce(0, +)) <= 1e-9 * steps.reduce(0, +))
        #expect(r["cpu_fault_samples"] == .int(64))
    }

    /// `us_per_page` is the median round over the pages; `gbps` both sides' bytes over it.
    @Test func thrashPerPageAndThroughputComeFromTheMedianRound() throws {
        var o = ThrashOptions()
        o.pages = 256
        o.rounds = 3
        o.backend = .memcpy
        let r = try ThrashRun.measure(o, trace: nil, progress: { _ in })
        let round = try number(r, "round_us")
        #expect(abs(try number(r, "us_per_page") * 256 - round) <= 1e-9 * round)
        let gbps = try number(r, "gbps")
        #expect(abs(gbps - 2 * 256 * 4096 / (round * 1e3)) <= 1e-9 * gbps)
    }

    /// Under `--repeat` every figure of the JSON is the median of its samples with their min
    /// and max, the CSV holds the same numbers, the median's digits included.
    @Test func repeatedRunFilesAgreeWithTheSamples() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dmem-audit-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let json = dir.appendingPathComponent("r.json").path, csv = dir.appendingPathComponent("r.csv").path
        var command = try DmemBench.parseAsRoot([
            "run", "copy", "--set", "total=128K", "span=512K", "passes=1", "direction=h2d", "batch=8", "backend=memcpy",
            "--repeat", "3", "--quiet", "--json", json, "--csv", csv,
        ])
        try command.run()
        let document = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any])
        let run = try #require((document["runs"] as? [[String: Any]])?.first)
        let samples = try #require(run["samples"] as? [[String: Any]])
        #expect(samples.count == 3)
        for field in ["gbps", "memcpy_gbps", "ratio", "seconds", "batch_p50_us", "batch_max_us"] {
            let values = samples.compactMap { $0[field] as? Double }.sorted()
            #expect(values.count == 3)
            #expect(run[field] as? Double == values[1], "\(field) is the median")
            #expect(run["\(field)_min"] as? Double == values[0] && run["\(field)_max"] as? Double == values[2], "\(field) spread")
        }
        let lines = try String(contentsOfFile: csv, encoding: .utf8).split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        #expect(lines.count == 2)
        for field in ["gbps", "ratio", "batch_p99_us"] {
            let column = try #require(lines[0].firstIndex { $0 == field })
            // Foundation's JSON parser on Linux can be off in the last bit: compare within that.
            let cell = try #require(Double(lines[1][column])), value = try #require(run[field] as? Double)
            #expect(abs(cell - value) <= 1e-12 * abs(value), "CSV \(field) \(cell), JSON \(value)")
        }
    }
}
