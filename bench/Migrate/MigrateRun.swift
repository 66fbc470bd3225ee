#if canImport(Glibc)
import Glibc
#endif
import DMAEngine
import DeviceEmu
import HostMM

/// One `migrate` measurement, the nouveau flow end to end on a fresh machine:
///
/// 1. range A (`total` bytes of anonymous memory, every page stamped) is copied with a
///    plain memcpy into VRAM's CPU mapping — the same-run ceiling (`memcpy_gbps`);
/// 2. A migrates to VRAM (`to_device_gbps`), checked through GPU reads;
/// 3. A is read back by the CPU page by page, each device page faulting to RAM
///    (`to_ram_fault_gbps`; each faulting read is a latency sample: `fault_p50_us` …);
/// 4. range B is stamped, migrated, and evicted by device teardown (`evict_gbps`).
///
/// Every byte is verified after each phase. RAM is prefaulted and VRAM touched before
/// timing: a real machine's memory is there already, so host page faults of the
/// emulation are kept out of the figures.
///
/// Threads: the calling thread (plus the copy engine's own threads).
enum MigrateRun {
    static func measure(_ o: MigrateOptions, trace: TraceProcess?, progress: (String) -> Void) throws -> RunRecord {
        if let problem = o.problem { throw failure(problem) }
        let pages = o.pages
        let memory: PhysicalMemory
        do {
            memory = try PhysicalMemory(ramBytes: 2 * o.totalBytes + (64 << 20),
                                        maxDevicePages: pages + 4096, prefault: true)
        } catch { throw failure("cannot create \(ByteCount(2 * o.totalBytes)) of emulated RAM: \(error)") }
        let observer = MigrateObserver(trace: trace)
        var config = Device.Configuration(name: "bench", vramSize: o.totalBytes, backend: o.backend.kind, policy: o.policy)
        config.observer = observer
        config.faultBackend = o.faultBackend?.kind
        let gpu: Device
        do { gpu = try Device(memory: memory, configuration: config) } catch {
            throw failure("cannot create the device: \(error)\(o.backend == .iouring ? " (try backend memcpy)" : "")")
        }
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let bytes = UInt64(o.totalBytes)
        let a: UInt64, b: UInt64
        do {
            a = try mm.mmap(length: o.totalBytes)
            b = try mm.mmap(length: o.totalBytes)
        } catch { throw failure("mmap: \(error)") }
        let pattern = Pattern(seed: o.seed)
        let track = trace?.track("bench")

        progress("stamping \(ByteCount(o.totalBytes))")
        try track.span("stamp A") { () throws in try pattern.fill(mm, a, pages: pages, first: 0) }
        progress("memcpy baseline")
        let memcpySeconds = track.span("memcpy baseline") { baseline(mm, a, pages: pages, into: gpu.vram.pools) }

        progress("migrating \(ByteCount(o.totalBytes)) to VRAM")
        let space: GPUAddressSpace
        do { space = try gpu.bind(mm) } catch { throw failure("bind: \(error)") }
        let t0 = MonotonicClock.now()
        let moved: MigrationResult
        do {
            moved = try track.span("migrate to VRAM") { () throws in
                try gpu.migrateToDevice(mm, range: a ..< a + bytes)
            }
        } catch { throw failure("migrateToDevice: \(error)") }
        let toDeviceSeconds = MonotonicClock.seconds(since: t0)
        guard moved.migrated == pages else { throw failure("only \(moved.migrated) of \(pages) pages migrated") }
        progress("verifying through GPU reads")
        try track.span("verify (GPU)") { () throws in
            try pattern.verify(pages: pages, first: 0, what: "GPU read after migration") { p, buffer throws in
                do { try space.read(at: a + UInt64(p * 4096), into: buffer) } catch { throw failure("GPU read: \(error)") }
            }
        }

        progress("CPU read-back through faults")
        var faults = LatencyHistogram()
        let faultsBefore = gpu.counters[.cpuFaults]
        let readNanos = try track.span("CPU read-back") { () throws -> UInt64 in
            try readBack(mm, a, pages: pages, pattern: pattern, gpu: gpu, latency: &faults)
        }
        let faultCount = gpu.counters[.cpuFaults] - faultsBefore
        guard gpu.vram.inUsePageCount == 0 else { throw failure("\(gpu.vram.inUsePageCount) pages still in VRAM after read-back") }

        progress("evicting \(ByteCount(o.totalBytes)) by teardown")
        try track.span("stamp B") { () throws in try pattern.fill(mm, b, pages: pages, first: pages) }
        do { try gpu.migrateToDevice(mm, range: b ..< b + bytes) } catch { throw failure("migrateToDevice (B): \(error)") }
        let resident = gpu.vram.inUsePageCount
        let t1 = MonotonicClock.now()
        do { try track.span("teardown") { () throws in try gpu.shutdown() } } catch {
            throw failure("teardown: \(error)")
        }
        let evictSeconds = MonotonicClock.seconds(since: t1)
        try track.span("verify B") { () throws in
            try pattern.verify(pages: pages, first: pages, what: "CPU read after teardown") { p, buffer throws in
                do { try mm.read(at: b + UInt64(p * 4096), into: buffer) } catch { throw failure("CPU read: \(error)") }
            }
        }

        var r = RunRecord()
        let gb = Double(o.totalBytes) / 1e9
        r.set("bytes", o.totalBytes)
        r.set("pages", pages)
        r.set("batch_pages", o.batchPages)
        r.set("fault_around", o.faultAround)
        r.set("pipeline", o.pipeline)
        r.set("backend", o.backend.rawValue)
        r.set("fault_backend", (o.faultBackend ?? o.backend).rawValue)
        r.set("api", o.api.name)
        r.set("to_device_gbps", gb / toDeviceSeconds)
        r.set("to_ram_fault_gbps", gb / (Double(readNanos) / 1e9))
        r.set("evict_gbps", Double(resident) * 4096 / 1e9 / evictSeconds)
        r.set("memcpy_gbps", gb / memcpySeconds)
        r.set("ratio_to_device", memcpySeconds / toDeviceSeconds)
        r.set("ratio_to_ram_fault", memcpySeconds / (Double(readNanos) / 1e9))
        r.set("ratio_evict", (Double(resident) * 4096 / 1e9 / evictSeconds) / (gb / memcpySeconds))
        r.set("faults", faultCount)
        faults.write(to: &r, prefix: "fault")
        let batches = max(moved.batches, 1)
        for (name, kind) in [("setup", MigrationEvent.Kind.setupEnd), ("pages", .migratePagesEnd),
                             ("fence_wait", .fenceWaitEnd), ("finalize", .finalizeEnd)] {
            r.set("\(name)_us_per_batch", Double(observer.total(kind, .toDevice)) / 1e3 / Double(batches))
        }
        r.set("channels", gpu.channelCount)
        r.set("verified", true)
        return r
    }

    /// memcpy of A's frames, in page order, into VRAM's CPU mapping; returns seconds.
    private static func baseline(_ mm: AddressSpace, _ a: UInt64, pages: Int, into pools: [VRAMPool]) -> Double {
        let memory = mm.memory
        var sources: [UnsafeMutableRawPointer] = []
        sources.reserveCapacity(pages)
        for p in 0..<pages {
            sources.append(memory.bytes(mm.pageTableEntry(a + UInt64(p * 4096)).pfn)!)
        }
        let poolSize = pools[0].size
        for pool in pools { memset(pool.mapping.baseAddress!, 0, pool.size) }   // VRAM is there already
        let t = MonotonicClock.now()
        for p in 0..<pages {
            let offset = p * 4096
            memcpy(pools[offset / poolSize].mapping.baseAddress! + offset % poolSize, sources[p], 4096)
        }
        return MonotonicClock.seconds(since: t)
    }

    /// Reads A page by page with the CPU; a read that faulted is a latency sample.
    /// Returns the nanoseconds spent in reads (verification excluded).
    private static func readBack(_ mm: AddressSpace, _ a: UInt64, pages: Int, pattern: Pattern, gpu: Device,
                                 latency: inout LatencyHistogram) throws -> UInt64 {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        var nanos: UInt64 = 0
        for p in 0..<pages {
            let before = gpu.counters[.cpuFaults]
            let t = MonotonicClock.now()
            do { try mm.read(at: a + UInt64(p * 4096), into: buffer) } catch { throw failure("CPU read of page \(p): \(error)") }
            let d = MonotonicClock.now() &- t
            nanos &+= d
            if gpu.counters[.cpuFaults] != before { latency.record(nanoseconds: d) }
            if let w = ScatterLayout.firstMismatch(buffer.baseAddress!, pageIndex: p, pageSize: 4096, seed: pattern.seed) {
                throw failure("CPU read-back: page \(p) differs at byte \(w * 8)")
            }
        }
        return nanos
    }

    static func failure(_ message: String) -> ScenarioError { ScenarioError(scenario: "migrate", message: message) }

    /// The data pattern (the memcpy scenario's: unique per page and word), written and
    /// checked through an address space or a device.
    struct Pattern {
        let seed: UInt64

        /// Stamps pages `first ..< first + pages` at `address` with CPU writes, 64 pages a call.
        func fill(_ mm: AddressSpace, _ address: UInt64, pages: Int, first: Int) throws {
            let chunk = 64
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk * 4096, alignment: 4096)
            defer { buffer.deallocate() }
            var p = 0
            while p < pages {
                let n = min(chunk, pages - p)
                for k in 0..<n {
                    ScatterLayout.fill(buffer.baseAddress! + k * 4096, pageIndex: first + p + k, pageSize: 4096, seed: seed)
                }
                do {
                    try mm.write(at: address + UInt64(p * 4096), from: UnsafeRawBufferPointer(rebasing: buffer[0 ..< n * 4096]))
                } catch { throw MigrateRun.failure("stamping: \(error)") }
                p += n
            }
        }

        /// Reads each page with `read` and checks it holds pattern page `first + p`.
        func verify(pages: Int, first: Int, what: String,
                    _ read: (Int, UnsafeMutableRawBufferPointer) throws -> Void) throws {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
            defer { buffer.deallocate() }
            for p in 0..<pages {
                try read(p, buffer)
                if let w = ScatterLayout.firstMismatch(buffer.baseAddress!, pageIndex: first + p, pageSize: 4096, seed: seed) {
                    throw MigrateRun.failure("\(what): page \(p) differs at byte \(w * 8)")
                }
            }
        }
    }
}
