import Testing
@testable import dmem_bench

/// The `migrate` record's per-batch breakdown describes range A's migration to VRAM, the
/// phase `to_device_gbps` times, and nothing else.
@Suite struct MigrateRecordTests {
    /// Each `<step>_us_per_batch` × A's batches is the sum of that step's spans inside the
    /// bench's "migrate to VRAM" span. Range B, migrated into the reused VRAM before the
    /// teardown, once landed in the same totals and doubled every figure.
    @Test(arguments: ["iouring", "memcpy"])
    func perBatchStepsCountRangeAOnly(backend: String) throws {
        var o = MigrateOptions()
        o.totalBytes = 8 << 20
        o.batchPages = 128
        o.backend = try #require(MigrateOptions.Backend(rawValue: backend))
        let recorder = TraceRecorder(capacity: 1 << 16)
        let r = try MigrateRun.measure(o, trace: recorder.process("migrate"), progress: { _ in })
        #expect(recorder.droppedEvents == 0)
        let events = recorder.events()
        let phase = try #require(events.first { $0.phase == .complete && $0.name.description == "migrate to VRAM" })
        let batches = Double(o.totalBytes / 4096 / o.batchPages)
        for (key, span) in [("setup", "setup"), ("pages", "migrate_vma_pages"), ("fence_wait", "fence wait"), ("finalize", "finalize")] {
            let inA = events.filter {
                $0.phase == .complete && $0.name.description == span
                    && $0.timestamp >= phase.timestamp && $0.timestamp + $0.duration <= phase.timestamp + phase.duration
            }
            #expect(Double(inA.count) == batches, "\(span) spans in A")
            let traced = Double(inA.reduce(0) { $0 + $1.duration }) / 1e3
            guard case .double(let perBatch)? = r["\(key)_us_per_batch"] else {
                Issue.record("\(key)_us_per_batch missing")
                continue
            }
            let reported = perBatch * batches
            #expect(abs(reported - traced) <= 0.05 * traced + 1, "\(key): reported \(reported) µs, traced \(traced) µs")
        }
    }

    /// The `mallocs_*` fields count the driver's allocations: a traced run leaves them out,
    /// since the trace observer's own bookkeeping (`TraceSlots`) allocates on the driver's
    /// threads inside the counting windows, per batch and per CPU fault, and the record
    /// reported them as the driver's (a debug build: 28 per fault traced, 15 untraced).
    @Test(.enabled(if: AllocationCounter.isAvailable))
    func aTracedRunReportsNoAllocationCounts() throws {
        var o = MigrateOptions()
        o.totalBytes = 2 << 20
        o.backend = .memcpy
        let plain = try MigrateRun.measure(o, trace: nil, progress: { _ in })
        for key in ["mallocs_per_page_to_device", "mallocs_per_fault", "mallocs_per_page_evict"] {
            #expect(plain[key] != nil, "\(key) missing from an untraced run")
        }
        let recorder = TraceRecorder(capacity: 1 << 16)
        let traced = try MigrateRun.measure(o, trace: recorder.process("migrate"), progress: { _ in })
        let counted = ["mallocs_per_page_to_device", "mallocs_per_batch_to_device", "mallocs_per_page_fault",
                       "mallocs_per_fault", "mallocs_per_page_evict"].filter { traced[$0] != nil }
        #expect(counted == [])
    }

    /// The copy engine alone runs the run's backend at the run's depth on cleared VRAM and
    /// is checked byte for byte (a pass that copied nothing would fail the run); its figures
    /// are in the record.
    @Test(arguments: [("iouring", 1), ("mapped", 2), ("memcpy", 3)])
    func theEngineAlonePassIsVerifiedAndReported(backend: String, pipeline: Int) throws {
        var o = MigrateOptions()
        o.totalBytes = 4 << 20
        o.batchPages = 64
        o.pipeline = pipeline
        o.backend = try #require(MigrateOptions.Backend(rawValue: backend))
        let recorder = TraceRecorder(capacity: 1 << 16)
        let r = try MigrateRun.measure(o, trace: recorder.process("migrate"), progress: { _ in })
        #expect(r["verified"] == .bool(true))
        #expect(recorder.events().contains { $0.phase == .complete && $0.name.description == "copy engine alone" })
        for key in ["engine_gbps", "ratio_engine"] {
            guard case .double(let v)? = r[key] else { Issue.record("\(key) missing"); continue }
            #expect(v.isFinite && v > 0, "\(key)")
        }
        // The driver's own time per batch holds its setup, migrate_vma_pages and finalize, which
        // run on the same thread outside the fence waits.
        var steps = 0.0
        for key in ["setup_us_per_batch", "pages_us_per_batch", "finalize_us_per_batch"] {
            guard case .double(let v)? = r[key] else { Issue.record("\(key) missing"); return }
            steps += v
        }
        guard case .double(let driver)? = r["driver_us_per_batch"] else {
            Issue.record("driver_us_per_batch missing")
            return
        }
        #expect(driver + 1 >= steps, "driver \(driver) µs per batch, its steps \(steps) µs")
    }
}

/// `prefetch=sequential`: the read-back (page by page, front to back) takes readahead-style
/// growing windows: 4 MiB = 1024 pages fault 11 times (1, 2, 4 … 256, 512, 1).
@Suite struct MigratePrefetchTests {
    @Test func sequentialPrefetchCutsTheReadBackFaults() throws {
        var o = MigrateOptions()
        o.totalBytes = 4 << 20
        o.backend = .memcpy
        o.prefetch = .sequential
        let r = try MigrateRun.measure(o, trace: nil, progress: { _ in })
        #expect(r["verified"] == .bool(true))
        #expect(r["faults"] == .int(11))
        #expect(r["prefetch"] == .string("sequential"))
        o.prefetch = .off
        #expect(try MigrateRun.measure(o, trace: nil, progress: { _ in })["faults"] == .int(1024))
    }

    @Test func prefetchAndFaultAroundExcludeEachOther() throws {
        #expect(throws: (any Error).self) { _ = try DmemBench.parseAsRoot(["migrate", "--prefetch", "sequential", "--fault-around", "4"]) }
        #expect(throws: (any Error).self) { _ = try DmemBench.parseAsRoot(["migrate", "--prefetch", "always"]) }
        #expect(throws: (any Error).self) { _ = try DmemBench.parseAsRoot(["thrash", "--prefetch", "sequential", "--fault-around", "2"]) }
        let command = try #require(try DmemBench.parseAsRoot(["migrate", "--prefetch", "sequential"]) as? MigrateCommand)
        #expect(try command.options.prefetch == .sequential)
        var t = ThrashOptions()
        t.prefetch = .sequential
        t.faultAround = 4
        #expect(t.problem == "fault-around and prefetch=sequential both size CPU faults: use one of them")
    }
}
