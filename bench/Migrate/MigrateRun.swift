#if canImport(Glibc)
import Glibc
#endif
import DMAEngine
import DeviceEmu
import HostMM

/// One `migrate` measurement, the nouveau flow end to end on a fresh machine:
///
/// 1. range A (`total` bytes of anonymous memory, every page stamped) is copied with a
///    plain memcpy into VRAM's CPU mapping, page by page on one thread — the same-run
///    ceiling (`memcpy_gbps`, the median of three passes); then through the copy engine
///    alone, batched and pipelined like the migration (`engine_gbps`, `ratio_engine`);
/// 2. A migrates to VRAM (`to_device_gbps`), checked through GPU reads;
/// 3. A is read back by the CPU page by page, each device page faulting to RAM
///    (`to_ram_fault_gbps`; each faulting read is a latency sample: `fault_p50_us` …);
/// 4. range B is stamped, migrated, and evicted by device teardown (`evict_gbps`).
///
/// Every byte is verified after each phase. VRAM is touched before timing and the RAM
/// frames timed phases use were touched by the stamping: a real machine's memory is there
/// already, so host page faults of the emulation are kept out of the figures.
///
/// Threads: the calling thread (plus the copy engine's own threads).
final class MigrateRun {
    let o: MigrateOptions
    let gpu: Device
    let mm: AddressSpace
    let observer: MigrateObserver
    let pattern: Pattern
    let track: TraceTrack?
    let progress: (String) -> Void
    let a: UInt64
    let b: UInt64

    /// Runs every phase; returns the record.
    static func measure(_ o: MigrateOptions, trace: TraceProcess?, progress: @escaping (String) -> Void) throws -> RunRecord {
        if let problem = o.problem { throw failure(problem) }
        var budget = MemoryBudget()
        budget.add("VRAM", o.totalBytes)
        budget.add("two stamped ranges", 2 * o.totalBytes)
        try budget.check("migrate")
        let run = try MigrateRun(o, trace: trace, progress: progress)
        defer { try? run.gpu.shutdown() }
        return try run.record()
    }

    private init(_ o: MigrateOptions, trace: TraceProcess?, progress: @escaping (String) -> Void) throws {
        self.o = o
        self.progress = progress
        let memory: PhysicalMemory
        do {
            // Not prefaulted: every frame a timed phase uses was touched by the stamping
            // (freed frames are reused first), so no host page fault lands in a timing.
            memory = try PhysicalMemory(ramBytes: 2 * o.totalBytes + (64 << 20), maxDevicePages: o.pages + 4096,
                                        checked: o.checked ? .on : .off)
        } catch { throw Self.failure("cannot create \(ByteCount(2 * o.totalBytes)) of emulated RAM: \(error)") }
        observer = MigrateObserver(trace: trace)
        let policy: MigrationPolicy
        do { policy = try o.policy() } catch { throw Self.failure("policy: \(error)") }
        var config = Device.Configuration(name: "bench", vramSize: o.totalBytes, backend: o.kind(o.backend), policy: policy)
        config.observer = observer
        config.faultBackend = o.faultBackend.map(o.kind)
        config.vramLayout.directory = o.vramDirectory
        config.fixedBuffers = o.fixedBuffers
        do { gpu = try Device(memory: memory, configuration: config) } catch {
            throw Self.failure("cannot create the device: \(error)")   // an io_uring setup error says how to fall back
        }
        mm = AddressSpace(memory: memory)
        do {
            a = try mm.mmap(length: o.totalBytes)
            b = try mm.mmap(length: o.totalBytes)
        } catch { throw Self.failure("mmap: \(error)") }
        pattern = Pattern(seed: o.seed)
        track = trace?.track("bench")
    }

    private var bytes: UInt64 { UInt64(o.totalBytes) }

    private func record() throws -> RunRecord {
        progress("stamping \(ByteCount(o.totalBytes))")
        try track.span("stamp A") { try pattern.fill(mm, a, pages: o.pages, first: 0) }
        progress("memcpy baseline")
        let memcpySeconds = track.span("memcpy baseline") { baseline() }
        progress("copy engine alone")
        let engineSeconds = try track.span("copy engine alone") { try engineAlone() }
        let (toDeviceSeconds, batches, toDeviceMallocs) = try toDevice()
        // Range A's batches only: range B migrates to VRAM again below, and its batches
        // would land in the same totals.
        let perBatch = Self.phases.map { (name: $0.name, nanos: observer.total($0.kind, .toDevice)) }
        var faults = LatencyHistogram()
        let (readSeconds, faultCount, faultMallocs) = try readBack(&faults)
        let (reuseSeconds, evictSeconds, evictedBytes, evictMallocs) = try evict()

        var r = RunRecord()
        let gb = Double(o.totalBytes) / 1e9
        r.set("bytes", o.totalBytes)
        r.set("pages", o.pages)
        r.set("batch_pages", o.batchPages)
        r.set("pipeline", o.pipeline)
        r.set("fault_around", o.faultAround)
        r.set("prefetch", o.prefetch.rawValue)
        r.set("backend", o.backend.rawValue)
        r.set("fault_backend", o.faultBackendName)
        if o.backend == .mapped || o.faultBackend == .mapped { r.set("workers", o.workers) }
        r.set("api", o.api.name)
        r.set("vram_dir", o.vramDirectory ?? "memfd")
        r.set("fixed_buffers", o.fixedBuffers)
        r.set("fixed_sqes", gpu.fixedBuffers.operations)   // the driver's channels over every phase (not the engine-alone pass)
        r.set("shmem_thp", ShmemHugePages.current.rawValue)
        r.set("checked", o.checked)
        if let checker = gpu.memory.checker { r.set("protocol_violations", checker.violationCount) }
        r.set("to_device_gbps", gb / toDeviceSeconds)
        r.set("to_ram_fault_gbps", gb / readSeconds)
        r.set("evict_gbps", Double(evictedBytes) / 1e9 / evictSeconds)
        r.set("to_device_reused_gbps", gb / reuseSeconds)
        r.set("memcpy_gbps", gb / memcpySeconds)
        r.set("ratio_to_device", memcpySeconds / toDeviceSeconds)
        r.set("engine_gbps", gb / engineSeconds)
        r.set("ratio_engine", memcpySeconds / engineSeconds)
        // The same pass's wall time minus its fence waits: what the driver itself spends per
        // batch (setup, allocation, enqueue, pages, map, finalize; with a backend that copies
        // inside submit, the copy too). Unlike a difference with engine_gbps, which is
        // another pass, it is never noise below zero.
        let waited = perBatch.first { $0.name == "fence_wait" }.map { Double($0.nanos) / 1e9 } ?? 0
        r.set("driver_us_per_batch", (toDeviceSeconds - waited) * 1e6 / Double(max(batches, 1)))
        r.set("ratio_to_ram_fault", memcpySeconds / readSeconds)
        r.set("ratio_evict", (Double(evictedBytes) / 1e9 / evictSeconds) / (gb / memcpySeconds))
        r.set("ratio_to_device_reused", memcpySeconds / reuseSeconds)
        r.set("faults", faultCount)
        faults.write(to: &r, prefix: "fault")
        // Heap allocations in the timed phases (AllocationCounter; absent under sanitizers and
        // in traced runs).
        if let n = toDeviceMallocs {
            r.set("mallocs_per_page_to_device", n.per(o.pages))
            r.set("mallocs_per_batch_to_device", n.per(batches))
        }
        if let n = faultMallocs {
            r.set("mallocs_per_page_fault", n.per(o.pages))
            r.set("mallocs_per_fault", n.per(faultCount))
        }
        if let n = evictMallocs { r.set("mallocs_per_page_evict", n.per(evictedBytes / 4096)) }
        for (name, nanos) in perBatch {
            r.set("\(name)_us_per_batch", Double(nanos) / 1e3 / Double(max(batches, 1)))
        }
        r.set("channels", gpu.channelCount)
        r.set("verified", true)
        return r
    }

    /// The steps of a batch to VRAM reported as `<name>_us_per_batch`.
    private static let phases: [(name: String, kind: MigrationEvent.Kind)] =
        [("setup", .setupEnd), ("pages", .migratePagesEnd), ("fence_wait", .fenceWaitEnd), ("finalize", .finalizeEnd)]

    /// memcpy of A's frames, in page order, into VRAM's CPU mapping; returns the median
    /// seconds of three passes (one pass is at the mercy of whatever else the machine runs).
    private func baseline() -> Double {
        var sources: [UnsafeMutableRawPointer] = []
        sources.reserveCapacity(o.pages)
        for p in 0..<o.pages {
            sources.append(mm.memory.bytes(mm.pageTableEntry(a + UInt64(p * 4096)).pfn)!)
        }
        let pools = gpu.vram.pools
        let poolSize = pools[0].size
        clearVRAM()   // VRAM is there already
        var passes: [Double] = []
        for _ in 0..<3 {
            let t = MonotonicClock.now()
            for p in 0..<o.pages {
                let offset = p * 4096
                memcpy(pools[offset / poolSize].mapping.baseAddress! + offset % poolSize, sources[p], 4096)
            }
            passes.append(MonotonicClock.seconds(since: t))
        }
        return passes.sorted()[1]
    }

    /// The copy engine alone: A's frames into the bytes of VRAM the baseline wrote, in
    /// batches of `batchPages` with `pipeline` fences in flight, on a channel of the run's
    /// backend; returns the median seconds of three passes. No migrate_vma step and no
    /// device page allocation: the ceiling `ratio_to_device` can reach with this backend
    /// and depth (`driver_us_per_batch` is the driver's own time). VRAM is cleared first,
    /// the pattern checked after, and VRAM cleared again for the migration.
    private func engineAlone() throws -> Double {
        let channel: DMAChannel
        do { channel = try gpu.engine.makeChannel(name: "bench-engine", backend: o.kind(o.backend)) } catch {
            throw Self.failure("cannot create a channel: \(error)")
        }
        let pools = gpu.vram.pools
        let poolSize = pools[0].size
        func vram(_ p: Int) -> (pool: VRAMPool, offset: Int) { (pools[p * 4096 / poolSize], p * 4096 % poolSize) }
        var frames: [PFN] = []
        frames.reserveCapacity(o.pages)
        for p in 0..<o.pages { frames.append(mm.pageTableEntry(a + UInt64(p * 4096)).pfn) }
        clearVRAM()   // what the baseline wrote
        let depth = o.api == .threeStep ? o.pipeline : 1   // the driver pipelines the three-step API only
        var passes: [Double] = []
        for _ in 0..<3 {
            var inFlight: [Fence] = []
            let t = MonotonicClock.now()
            do {
                for first in stride(from: 0, to: o.pages, by: o.batchPages) {
                    for p in first..<min(first + o.batchPages, o.pages) {
                        let (pool, offset) = vram(p)
                        try channel.enqueueCopy(from: DMAAddress(region: gpu.hostRegion, offset: Int(frames[p].rawValue) * 4096),
                                                to: pool.address(offset), length: 4096)
                    }
                    inFlight.append(try channel.submit())
                    if inFlight.count == depth { try inFlight.removeFirst().wait() }
                }
                for fence in inFlight { try fence.wait() }
            } catch { throw Self.failure("copy engine alone: \(error)") }
            passes.append(MonotonicClock.seconds(since: t))
        }
        try pattern.verify(pages: o.pages, first: 0, what: "copy engine alone") { p, buffer in
            let (pool, offset) = vram(p)
            buffer.copyMemory(from: UnsafeRawBufferPointer(start: pool.mapping.baseAddress! + offset, count: 4096))
        }
        // A's pattern must not be waiting in VRAM where A's device pages will land: the
        // checks after the migration would then pass without a single copy.
        clearVRAM()
        return passes.sorted()[1]
    }

    /// Zeroes every byte of VRAM through its CPU mapping (untimed; also touches it).
    private func clearVRAM() {
        for pool in gpu.vram.pools { memset(pool.mapping.baseAddress!, 0, pool.size) }
    }

    /// Migrates A to VRAM (timed) and checks it through GPU reads; returns seconds, batches
    /// and the heap allocations of the timed part (nil: not counted).
    private func toDevice() throws -> (Double, Int, Int?) {
        progress("migrating \(ByteCount(o.totalBytes)) to VRAM")
        let space: GPUAddressSpace
        do { space = try gpu.bind(mm) } catch { throw Self.failure("bind: \(error)") }
        let t = MonotonicClock.now()
        let moved: MigrationResult, mallocs: Int?
        do {
            (moved, mallocs) = try countAllocations {
                try track.span("migrate to VRAM") { try gpu.migrateToDevice(mm, range: a ..< a + bytes) }
            }
        } catch { throw Self.failure("migrateToDevice: \(error)") }
        let seconds = MonotonicClock.seconds(since: t)
        guard moved.migrated == o.pages else { throw Self.failure("only \(moved.migrated) of \(o.pages) pages migrated") }
        progress("verifying through GPU reads")
        try track.span("verify (GPU)") {
            try pattern.verify(pages: o.pages, first: 0, what: "GPU read after migration") { p, buffer in
                do { try space.read(at: a + UInt64(p * 4096), into: buffer) } catch { throw Self.failure("GPU read: \(error)") }
            }
        }
        return (seconds, moved.batches, mallocs)
    }

    /// Reads A page by page with the CPU; a read that faulted is a latency sample.
    /// Returns the seconds spent in reads (verification excluded), the faults taken and the
    /// heap allocations of the loop (nil: not counted).
    private func readBack(_ latency: inout LatencyHistogram) throws -> (Double, Int, Int?) {
        progress("CPU read-back through faults")
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        let faultsBefore = gpu.counters[.cpuFaults]
        let start = MonotonicClock.now()
        var nanos: UInt64 = 0
        let (_, mallocs) = try countAllocations {
            for p in 0..<o.pages {
                let before = gpu.counters[.cpuFaults]
                let t = MonotonicClock.now()
                do { try mm.read(at: a + UInt64(p * 4096), into: buffer) } catch { throw Self.failure("CPU read of page \(p): \(error)") }
                let d = MonotonicClock.now() &- t
                nanos &+= d
                if gpu.counters[.cpuFaults] != before { latency.record(nanoseconds: d) }
                if let w = ScatterLayout.firstMismatch(buffer.baseAddress!, pageIndex: p, pageSize: 4096, seed: pattern.seed) {
                    throw Self.failure("CPU read-back: page \(p) differs at byte \(w * 8)")
                }
            }
        }
        track?.complete("CPU read-back", start: start)
        guard gpu.vram.inUsePageCount == 0 else { throw Self.failure("\(gpu.vram.inUsePageCount) pages still in VRAM after read-back") }
        return (Double(nanos) / 1e9, gpu.counters[.cpuFaults] - faultsBefore, mallocs)
    }

    /// Stamps B and migrates it into the VRAM the read-back freed (timed: `to_device_reused_gbps`),
    /// then evicts it by teardown (timed: `evict_gbps`); returns (reuse s, evict s, bytes evicted,
    /// heap allocations of the teardown or nil).
    private func evict() throws -> (Double, Double, Int, Int?) {
        progress("evicting \(ByteCount(o.totalBytes)) by teardown")
        try track.span("stamp B") { try pattern.fill(mm, b, pages: o.pages, first: o.pages) }
        let r = MonotonicClock.now()
        let moved: MigrationResult
        do {
            moved = try track.span("migrate B to reused VRAM") { try gpu.migrateToDevice(mm, range: b ..< b + bytes) }
        } catch { throw Self.failure("migrateToDevice (B): \(error)") }
        let reuseSeconds = MonotonicClock.seconds(since: r)
        // to_device_reused_gbps counts every byte of B: it must all have moved.
        guard moved.migrated == o.pages else { throw Self.failure("only \(moved.migrated) of \(o.pages) pages of B migrated") }
        let resident = gpu.vram.inUsePageCount * 4096
        let t = MonotonicClock.now()
        let mallocs: Int?
        do { (_, mallocs) = try countAllocations { try track.span("teardown") { try gpu.shutdown() } } } catch {
            throw Self.failure("teardown: \(error)")
        }
        let seconds = MonotonicClock.seconds(since: t)
        try track.span("verify B") {
            try pattern.verify(pages: o.pages, first: o.pages, what: "CPU read after teardown") { p, buffer in
                do { try mm.read(at: b + UInt64(p * 4096), into: buffer) } catch { throw Self.failure("CPU read: \(error)") }
            }
        }
        return (reuseSeconds, seconds, resident, mallocs)
    }

    /// `AllocationCounter.count`, except in a traced run (nil: not counted): there the
    /// observer's trace bookkeeping (`TraceSlots`, its dictionaries and slot arrays) allocates
    /// on the driver's threads inside the counting window, per batch and per CPU fault, and
    /// the record would report those allocations as the driver's.
    private func countAllocations<T>(_ body: () throws -> T) rethrows -> (value: T, mallocs: Int?) {
        guard track == nil else { return (try body(), nil) }
        return try AllocationCounter.count(body)
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
