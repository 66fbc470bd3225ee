import DMAEngine
import Dispatch
import Foundation
import Glibc

/// Batches of scattered page copies through the DMA engine, against a plain memcpy
/// of the same scatter pattern in the same run: what `dmem-bench copy` and the
/// `copy` scenario of `dmem-bench run` / the suite both measure.
///
/// Models what a migration asks of the copy engine: `alloc_and_copy` for N
/// pages whose system frames are scattered over RAM while the freshly allocated
/// device pages are contiguous in a VRAM chunk (h2d), the reverse on eviction
/// (d2h), and VRAM-to-VRAM moves (d2d: scattered pages of one pool into
/// contiguous pages of another). Every byte is verified after every pass.
///
/// Each record carries `gbps`, the same-run `memcpy_gbps` and their `ratio`, and
/// the latency from `submit()` to the fence signalling per batch (`batch_*_us`, every batch
/// of every pass). `seconds` is the median pass; `sqes` and `fixed_sqes` are ring operations
/// per pass, summed over the channels (0 for the memcpy backend).
///
/// Threads: `run` uses the calling thread plus one thread per channel, joined before it returns.
enum CopyScenario {
    /// Runs every (direction × coalesce) combination of `options`; one record per combination.
    static func run(_ options: CopyOptions, context: ScenarioContext = ScenarioContext()) throws -> [RunRecord] {
        try validate(options)
        var budget = MemoryBudget()
        budget.add("host memory", max(options.hostBytes ?? 4 * options.totalBytes, options.totalBytes))
        budget.add("two VRAM pools", 2 * options.totalBytes)
        try budget.check("copy")
        let track = context.trace?.track("copy")
        context.progress("preparing \(ByteCount(options.totalBytes)) of scattered pages")
        let world = try track.span("setup") { try CopyWorld(options) }
        defer { world.engine.shutdown() }
        var records: [RunRecord] = []
        for direction in options.directions {
            let pattern = world.pattern(direction)
            for coalesce in options.coalesce {
                context.progress("\(direction.rawValue), coalescing \(coalesce ? "on" : "off")")
                records.append(try measure(world, pattern, direction: direction, coalesce: coalesce, context: context))
            }
        }
        return records
    }

    /// Checks one point, naming each setting as `o.naming` says (flags for `dmem-bench copy`,
    /// keys for `run copy` and the suite).
    static func validate(_ o: CopyOptions) throws(ScenarioError) {
        let name = o.naming.callAt
        guard o.pageSize > 0 else { throw error("\(name("page-size")) must be positive") }
        guard o.totalBytes >= o.pageSize, o.totalBytes % o.pageSize == 0 else {
            throw error("\(name("total")) \(ByteCount(o.totalBytes)) must be a positive multiple of \(name("page-size")) \(ByteCount(o.pageSize))")
        }
        let limits: [(key: String, value: Int, range: ClosedRange<Int>)] = [
            ("batch", o.batchPages, 1...DMAEngine.maxBatchLimit), ("queue-depth", o.queueDepth, 1...4096),
            ("channels", o.channels, 1...64), ("inflight", o.inflightBatches, 1...4096), ("passes", o.repeats, 1...100),
            ("vram-files", o.vramLayout.files, 1...VRAMPool.Layout.maxFiles),
        ]
        for limit in limits where !limit.range.contains(limit.value) {
            throw error("\(name(limit.key)) must be in \(limit.range.lowerBound)...\(limit.range.upperBound) (got \(limit.value))")
        }
        guard !o.directions.isEmpty, !o.directions.contains(.hostToHost) else {
            throw error("the copy scenario measures h2d, d2h and d2d")
        }
        guard !o.coalesce.isEmpty else { throw error("coalesce needs on, off or both") }
        if let problem = VRAMDirectory.problem(o.vramLayout.directory) {
            throw error(problem.hasPrefix("vram-dir ") ? name("vram-dir") + problem.dropFirst("vram-dir".count) : problem)
        }
        if o.fixedBuffers && o.backendName != "iouring" {
            // The memcpy and mapped backends issue no io_uring operation to register them for.
            throw error("fixed buffers are io_uring's: use them with the iouring backend")
        }
        if let host = o.hostBytes, host < o.totalBytes {
            throw error("\(name("span")) \(ByteCount(host)) is smaller than \(name("total")) \(ByteCount(o.totalBytes)): the frames of one pass must fit in it")
        }
    }

    static func error(_ message: String) -> ScenarioError { ScenarioError(scenario: "copy", message: message) }

    private static func measure(_ world: CopyWorld, _ pattern: ScatterPattern, direction: CopyDirection,
                                coalesce: Bool, context: ScenarioContext) throws -> RunRecord {
        let o = world.options
        let channels = try (0..<o.channels).map { _ in
            try world.engine.makeChannel(coalescing: coalesce, queueDepth: o.queueDepth)
        }
        let track = context.trace?.track("copy")
        let lanes = channels.map { context.trace?.track("\(direction.rawValue) coalesce \(coalesce ? "on" : "off") \($0.name)") }
        var engineSeconds: [Double] = [], memcpySeconds: [Double] = []
        var latency = LatencyHistogram()
        var verified = true
        var mallocs: Int? = 0
        let opsBefore = channels.reduce(0) { $0 + $1.statistics.operations }
        let fixedBefore = channels.reduce(0) { $0 + $1.fixedBuffers.operations }
        for _ in 0..<o.repeats {
            pattern.poisonDestinations(0xA5)
            memcpySeconds.append(track.span("memcpy pass") { pattern.memcpyAll() })
            verified = track.span("verify") { pattern.verify() } && verified
            pattern.poisonDestinations(0x5A)
            let (pass, passMallocs) = try AllocationCounter.count {
                try track.span("engine pass") { try runEngine(pattern, channels: channels, lanes: lanes, options: o) }
            }
            mallocs = passMallocs.flatMap { n in mallocs.map { $0 + n } }
            engineSeconds.append(pass.seconds)
            latency.merge(pass.latency)
            verified = track.span("verify") { pattern.verify() } && verified
        }
        let sqes = (channels.reduce(0) { $0 + $1.statistics.operations } - opsBefore) / o.repeats
        let fixedOps = (channels.reduce(0) { $0 + $1.fixedBuffers.operations } - fixedBefore) / o.repeats
        let seconds = median(engineSeconds), baseline = median(memcpySeconds)
        let bytes = pattern.count * o.pageSize
        var r = RunRecord()
        r.set("direction", direction.rawValue)
        r.set("page_size", o.pageSize)
        r.set("batch_pages", o.batchPages)
        r.set("coalesce", coalesce)
        r.set("backend", channels[0].backendName)
        r.set("queue_depth", o.queueDepth)
        r.set("channels", o.channels)
        r.set("inflight", o.inflightBatches)
        r.set("vram_files", world.vramA.layout.files)
        r.set("vram_dir", world.vramA.layout.directory ?? "memfd")
        r.set("shmem_thp", ShmemHugePages.current.rawValue)
        r.set("link", o.link.text)
        r.set("bytes", bytes)
        r.set("seconds", seconds)
        r.set("gbps", Double(bytes) / seconds / 1e9)
        r.set("memcpy_gbps", Double(bytes) / baseline / 1e9)
        r.set("ratio", baseline / seconds)
        r.set("descriptors_per_s", Double(pattern.count) / seconds)
        r.set("sqes", sqes)
        r.set("fixed_buffers", o.fixedBuffers)
        r.set("fixed_sqes", fixedOps)
        if let failure = channels.compactMap({ $0.fixedBuffers.failure }).first { r.set("fixed_buffers_failure", failure) }
        r.set("repeats", o.repeats)
        latency.write(to: &r, prefix: "batch")
        // Heap allocations of the timed passes, threads' start included (absent under sanitizers).
        if let mallocs { r.set("mallocs_per_page", mallocs.per(pattern.count * o.repeats)) }
        r.set("verified", verified)
        return r
    }

    /// One timed pass: each channel (on its own thread) takes every n-th batch.
    private static func runEngine(_ pattern: ScatterPattern, channels: [DMAChannel], lanes: [TraceTrack?],
                                  options o: CopyOptions) throws -> (seconds: Double, latency: LatencyHistogram) {
        let batches = (pattern.count + o.batchPages - 1) / o.batchPages
        let times = BatchTimes(count: batches)
        let errors = ErrorBox()
        let start = MonotonicClock.now()
        // One thread per channel, not `concurrentPerform`: that runs at most one iteration
        // per CPU at a time, so with more channels than CPUs the extra channels started only
        // when another had finished its whole share (no more channels in flight at once).
        @Sendable func channelPass(_ c: Int) {
            do {
                var inflight: [(batch: Int, fence: Fence)] = []
                inflight.reserveCapacity(o.inflightBatches)
                let lane = lanes[c]
                func retire(_ done: (batch: Int, fence: Fence)) throws {
                    try done.fence.wait()
                    times.signalled(done.batch, at: done.fence.timestamp ?? MonotonicClock.now(), lane: lane)
                }
                for b in stride(from: c, to: batches, by: channels.count) {
                    if inflight.count == o.inflightBatches { try retire(inflight.removeFirst()) }
                    let first = b * o.batchPages
                    for i in first..<min(first + o.batchPages, pattern.count) {
                        try channels[c].enqueueCopy(from: pattern.source(i), to: pattern.destination(i), length: o.pageSize)
                    }
                    times.submitted(b)
                    inflight.append((b, try channels[c].submit()))
                }
                for done in inflight { try retire(done) }
            } catch {
                errors.record(error)
            }
        }
        let finished = DispatchGroup()
        for c in channels.indices {
            let thread = Thread {
                channelPass(c)
                finished.leave()
            }
            thread.name = "copy-channel-\(c)"
            finished.enter()
            thread.start()
        }
        finished.wait()
        let seconds = MonotonicClock.seconds(since: start)
        if let e = errors.first { throw e }
        return (seconds, times.histogram())
    }

    static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
}

/// Submit and signal times of every batch of a pass (monotonic ns).
///
/// Threads: slot b is written only by the thread that submits batch b and then waits
/// for its fence; read once every worker thread has finished.
final class BatchTimes: @unchecked Sendable {
    private let submit: UnsafeMutableBufferPointer<UInt64>
    private let signal: UnsafeMutableBufferPointer<UInt64>

    init(count: Int) {
        submit = .allocate(capacity: count)
        signal = .allocate(capacity: count)
        submit.initialize(repeating: 0)
        signal.initialize(repeating: 0)
    }

    deinit {
        submit.deallocate()
        signal.deallocate()
    }

    func submitted(_ b: Int) { submit[b] = MonotonicClock.now() }

    /// Records batch b's fence `timestamp` (when it signalled, not when its waiter woke).
    func signalled(_ b: Int, at time: UInt64, lane: TraceTrack?) {
        signal[b] = time
        lane?.complete("batch", start: submit[b], end: time, category: "dma")
    }

    func histogram() -> LatencyHistogram {
        var h = LatencyHistogram()
        for b in submit.indices where signal[b] >= submit[b] { h.record(nanoseconds: signal[b] - submit[b]) }
        return h
    }
}

/// The first error any worker thread hit.
final class ErrorBox: @unchecked Sendable {
    private let lock = NSLock()
    private var error: (any Error)?
    func record(_ e: any Error) { lock.lock(); if error == nil { error = e }; lock.unlock() }
    var first: (any Error)? { lock.lock(); defer { lock.unlock() }; return error }
}
