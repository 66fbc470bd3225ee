import DMAEngine
import Foundation
import Glibc
import Testing
@testable import dmem_bench

/// The `copy` scenario (DMA engine vs same-run memcpy) in the framework and as `dmem-bench copy`.
@Suite struct CopyScenarioTests {
    let scenario = CopyBenchScenario()

    func run(_ overrides: [(key: String, value: String)], trace: TraceProcess? = nil) throws -> [RunRecord] {
        let parameters = try ScenarioParameters(for: scenario, overrides: overrides)
        return try scenario.run(parameters, context: ScenarioContext(trace: trace))
    }

    static let tiny: [(key: String, value: String)] = [("total", "256K"), ("span", "1M"), ("batch", "16"), ("passes", "1")]

    @Test func measuresEveryDirectionVerifiedWithTheFrameworksFields() throws {
        let records = try run(Self.tiny)
        #expect(records.map { $0["direction"] } == [.string("h2d"), .string("d2h"), .string("d2d")])
        for r in records {
            #expect(r["verified"] == .bool(true))
            #expect(r["bytes"] == .int(256 << 10) && r["page_size"] == .int(4096) && r["batch_pages"] == .int(16))
            #expect(r["coalesce"] == .bool(true) && r["backend"] == .string("iouring") && r["link"] == .string("none"))
            for field in ["gbps", "memcpy_gbps", "ratio", "descriptors_per_s", "batch_p50_us", "batch_max_us"] {
                #expect((r[field]?.numeric ?? 0) > 0, "\(field)")
            }
            #expect(r["batch_samples"] == .int(4), "one latency sample per batch")
            #expect(r["sqes"] == .int(4), "one vectored operation per 16-page batch")
        }
        #expect(SummaryTable.throughputFields(of: records[0]) == ["gbps"])
    }

    @Test func onePointIsOneDirectionAndOneCoalescingSetting() throws {
        let records = try run(Self.tiny + [("direction", "d2h"), ("coalesce", "off"), ("backend", "memcpy"), ("vram-files", "1")])
        #expect(records.count == 1)
        #expect(records[0]["direction"] == .string("d2h") && records[0]["coalesce"] == .bool(false))
        #expect(records[0]["backend"] == .string("memcpy") && records[0]["vram_files"] == .int(1))
        #expect(records[0]["verified"] == .bool(true))
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/shm"), "needs a tmpfs at /dev/shm"))
    func vramDirectoryIsUsedAndRecorded() throws {
        let records = try run(Self.tiny + [("direction", "h2d"), ("vram-dir", "/dev/shm")])
        #expect(records[0]["vram_dir"] == .string("/dev/shm") && records[0]["verified"] == .bool(true))
        #expect(records[0]["shmem_thp"] != nil)
        #expect(try run(Self.tiny + [("direction", "h2d")])[0]["vram_dir"] == .string("memfd"))
        #expect { try run(Self.tiny + [("direction", "h2d"), ("vram-dir", "/nonexistent/vram")]) } throws: { error in
            "\(error)".contains("vram-dir /nonexistent/vram does not exist")
        }
    }

    @Test func fixedBuffersAreUsedAndCounted() throws {
        let on = try run(Self.tiny + [("direction", "h2d"), ("fixed-buffers", "on")])[0]
        #expect(on["fixed_buffers"] == .bool(true) && on["verified"] == .bool(true))
        if on["fixed_buffers_failure"] == nil {  // nil unless the process may not pin (no CAP_IPC_LOCK, low ulimit -l)
            #expect(on["fixed_sqes"] == on["sqes"], "every h2d operation reads host memory in one buffer")
        } else {
            #expect(on["fixed_sqes"] == .int(0))
        }
        let off = try run(Self.tiny + [("direction", "h2d")])[0]
        #expect(off["fixed_buffers"] == .bool(false) && off["fixed_sqes"] == .int(0))
    }

    @Test func linkModelIsParsedAndRecorded() throws {
        let records = try run(Self.tiny + [("direction", "h2d"), ("link", "pcie4")])
        #expect(records[0]["link"] == .string("pcie4") && records[0]["backend"] == .string("link(iouring)"))
        #expect(records[0]["verified"] == .bool(true))
        #expect(try LinkSpec(parsing: "16,5us").model == .init(gigabytesPerSecond: 16, latency: .microseconds(5)))
        #expect(try LinkSpec(parsing: "0.5,800ns").model == .init(gigabytesPerSecond: 0.5, latency: .nanoseconds(800)))
        #expect(try LinkSpec(parsing: "8,2").model?.latency == .microseconds(2))
        // `--set`/`--sweep` split values at commas: there a custom link is written with '@'.
        #expect(try LinkSpec(parsing: "16@5us").model == .init(gigabytesPerSecond: 16, latency: .microseconds(5)))
        #expect(try LinkSpec(parsing: "NVLink").model == .nvlink)
        #expect(try LinkSpec(parsing: "none").model == nil)
        for bad in ["pcie9", "0,5", "-1,5", "16", "16,5s", "x,1", "16@5us@1", "16,@5"] {
            #expect(throws: ParameterValueError("'\(bad)' is not a valid link (expected \(LinkSpec.help))")) { try LinkSpec(parsing: bad) }
        }
        for huge in ["1e300,0", "1e-300,0", "0.0001,5us"] {
            #expect(throws: ParameterValueError("link bandwidth \(huge.split(separator: ",")[0]) GB/s in '\(huge)' is out of range (0.001...1000000)")) {
                try LinkSpec(parsing: huge)
            }
        }
        #expect(try LinkSpec(parsing: "0.001,0").model == .init(gigabytesPerSecond: 0.001, latency: .zero))
        #expect(throws: ScenarioError(scenario: "copy", message: "'fast' is not a valid link (expected \(LinkSpec.help))")) {
            try run(Self.tiny + [("link", "fast")])
        }
    }

    /// A backend that copies like memcpy and reports success, but flips the last byte of the
    /// very first descriptor it is given (first batch of the first pass, nothing after).
    final class CorruptOnceBackend: CopyBackend, @unchecked Sendable {
        private var corrupted = false
        var name: String { "corrupt-once" }
        func execute(_ batch: CopyBatch) -> Int {
            for i in batch.indices {
                let d = batch[i]
                switch d.operation {
                case .copy: memcpy(d.destination.pointer, d.source.pointer, d.length)
                case .fill: memset(d.destination.pointer, Int32(d.fillValue), d.length)
                }
                if !corrupted {
                    corrupted = true
                    let last = d.destination.pointer + d.length - 1
                    last.storeBytes(of: ~last.load(as: UInt8.self), as: UInt8.self)
                }
            }
            batch.complete(batch.indices)
            return 0
        }
        func shutdown(cancelInFlight: Bool) {}
    }

    /// One wrong byte from the engine in one pass of three leaves the record unverified: the
    /// engine's passes are checked, not only the memcpy baseline, and every pass counts.
    @Test func aCopyThatCorruptsOneByteInOnePassIsNotVerified() throws {
        var o = CopyOptions()
        o.directions = [.hostToDevice]
        o.coalesce = [false]
        o.totalBytes = 256 << 10
        o.hostBytes = 1 << 20
        o.batchPages = 16
        o.repeats = 3
        o.backend = .custom(name: "corrupt-once") { _ in CorruptOnceBackend() }
        o.backendName = "memcpy"
        let records = try CopyScenario.run(o)
        #expect(records.count == 1)
        #expect(records[0]["verified"] == .bool(false))
    }

    @Test func refusesATotalThatIsNotAMultipleOfThePage() {
        #expect(throws: ScenarioError(scenario: "copy", message: "total 256K must be a positive multiple of page-size 96K")) {
            try run(Self.tiny + [("page-size", "96K")])
        }
    }

    @Test func refusesAZeroPageAndHostMemorySmallerThanAPass() {
        var o = CopyOptions()
        o.pageSize = 0
        #expect(throws: ScenarioError(scenario: "copy", message: "page-size must be positive")) { try CopyScenario.validate(o) }
        o = CopyOptions()
        o.totalBytes = 1 << 20
        o.hostBytes = 1024
        #expect(throws: ScenarioError(scenario: "copy",
                                      message: "span 1K is smaller than total 1M: the frames of one pass must fit in it")) {
            try CopyScenario.validate(o)
        }
        o.hostBytes = 1 << 20
        #expect(throws: Never.self) { try CopyScenario.validate(o) }
    }

    @Test func tracesSetupPassesAndBatchesPerChannel() throws {
        let recorder = TraceRecorder(capacity: 4096)
        _ = try run(Self.tiny + [("direction", "h2d")], trace: recorder.process("copy"))
        let names = recorder.sortedEvents().map(\.name.description)
        #expect(names.first == "setup")
        #expect(names.filter { $0 == "batch" }.count == 4)
        #expect(names.filter { $0 == "engine pass" }.count == 1 && names.filter { $0 == "memcpy pass" }.count == 1)
    }

    @Test func sweepsRepeatsAndWritesJSONThroughTheRunCommand() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dmem-copy-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let json = dir.appendingPathComponent("r.json").path
        let csv = dir.appendingPathComponent("r.csv").path
        var command = try DmemBench.parseAsRoot([
            "run", "copy", "--set", "total=128K", "span=512K", "passes=1", "direction=h2d", "--sweep", "batch=1,8",
            "page-size=4K,64K", "--repeat", "2", "--quiet", "--json", json, "--csv", csv,
        ])
        try command.run()
        let document = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any])
        let runs = try #require(document["runs"] as? [[String: Any]])
        #expect(runs.map { $0["batch_pages"] as? Int } == [1, 1, 8, 8])
        #expect(runs.map { $0["page_size"] as? Int } == [4096, 65536, 4096, 65536])
        #expect(runs.allSatisfy { $0["verified"] as? Bool == true && $0["scenario"] as? String == "copy" })
        #expect(runs.allSatisfy { $0["gbps_min"] != nil && $0["memcpy_gbps"] != nil && $0["ratio"] != nil })
        let lines = try String(contentsOfFile: csv, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 5 && lines[0].contains("memcpy_gbps"))
    }

    @Test func copyCommandParsesItsFlagsIntoTheSharedOptions() throws {
        let command = try #require(try DmemBench.parseAsRoot([
            "copy", "--direction", "d2d", "--total", "1M", "--coalesce", "off", "--link", "pcie5", "--vram-files", "2",
        ]) as? CopyCommand)
        let o = try command.options()
        #expect(o.directions == [.deviceToDevice] && o.coalesce == [false] && o.totalBytes == 1 << 20)
        #expect(o.link.model == .pcie5 && o.vramLayout.files == 2 && o.repeats == 3)
        #expect(throws: (any Error).self) { try DmemBench.parseAsRoot(["copy", "--link", "warp"]) }
    }

    /// `dmem-bench copy --json`: stdout is exactly one JSON object with every field issue 3 promised.
    @Test func copyCommandJSONIsOneObjectWithEveryRunField() throws {
        let command = try #require(try DmemBench.parseAsRoot([
            "copy", "--total", "256K", "--host-memory", "1M", "--batch", "16", "--repeats", "1", "--json",
        ]) as? CopyCommand)
        let records = try CopyScenario.run(try command.options())
        let text = command.output(records)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        #expect(object.keys.sorted() == ["runs", "scenario"] && object["scenario"] as? String == "copy")
        let runs = try #require(object["runs"] as? [[String: Any]])
        #expect(runs.count == 6, "three directions, coalescing on and off")
        let fields = ["direction", "page_size", "batch_pages", "coalesce", "backend", "queue_depth", "channels", "bytes", "seconds",
                      "gbps", "memcpy_gbps", "ratio", "descriptors_per_s", "sqes", "verified"]
        for run in runs {
            #expect(fields.allSatisfy { run[$0] != nil }, "\(run.keys.sorted())")
            #expect(run["verified"] as? Bool == true)
        }
        #expect(!text.contains("\n"), "one line, nothing else")
    }
}
