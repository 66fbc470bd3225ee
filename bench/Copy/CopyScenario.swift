import DMAEngine
import Dispatch
import Foundation
import Glibc

/// Settings of the `copy` scenario (one value per run; lists are swept).
struct CopyOptions: Sendable {
    var directions: [CopyDirection] = [.hostToDevice, .deviceToHost, .deviceToDevice]
    var coalesce: [Bool] = [true, false]
    var pageSize = 4096
    var batchPages = 512
    var totalBytes = 256 << 20
    var backend: CopyBackendKind = .ioUring
    var queueDepth = 64
    var channels = 1
    /// Batches each channel keeps in flight before waiting for its oldest fence.
    var inflightBatches = 8
    /// Repetitions per run; seconds are the median of the repetitions.
    var repeats = 3
    /// Host memory the source/destination frames are scattered over (default 4 × total).
    var hostBytes: Int? = nil
    /// How each VRAM pool is spread over memfds.
    var vramLayout: VRAMPool.Layout = .default
    var seed: UInt64 = 0xD11A
}

/// `dmem-bench copy`: batches of scattered page copies through the DMA engine,
/// against a plain memcpy of the same scatter pattern in the same run.
///
/// Models what a migration asks of the copy engine: `alloc_and_copy` for N
/// pages whose system frames are scattered over RAM while the freshly allocated
/// device pages are contiguous in a VRAM chunk (h2d), the reverse on eviction
/// (d2h), and VRAM-to-VRAM moves (d2d: scattered pages of one pool into
/// contiguous pages of another). Every byte is verified after every repetition.
enum CopyScenario {
    enum Failure: Error, CustomStringConvertible {
        case invalid(String)
        var description: String { if case .invalid(let s) = self { return s }; return "" }
    }

    /// Runs every (direction × coalesce) combination of `options`; one record per combination.
    static func run(_ options: CopyOptions) throws -> [RunRecord] {
        try validate(options)
        let world = try CopyWorld(options)
        defer { world.engine.shutdown() }
        var records: [RunRecord] = []
        for direction in options.directions {
            let pattern = world.pattern(direction)
            for coalesce in options.coalesce {
                records.append(try measure(world, pattern, direction: direction, coalesce: coalesce))
            }
        }
        return records
    }

    static func validate(_ o: CopyOptions) throws {
        guard o.pageSize > 0, o.totalBytes >= o.pageSize, o.totalBytes % o.pageSize == 0 else {
            throw Failure.invalid("--total must be a positive multiple of --page-size")
        }
        guard o.batchPages >= 1, o.queueDepth >= 1, o.channels >= 1, o.repeats >= 1, o.inflightBatches >= 1 else {
            throw Failure.invalid("--batch, --queue-depth, --channels, --repeats must be at least 1")
        }
        guard !o.directions.contains(.hostToHost) else { throw Failure.invalid("the copy scenario measures h2d, d2h and d2d") }
    }

    private static func measure(_ world: CopyWorld, _ pattern: ScatterPattern, direction: CopyDirection,
                                coalesce: Bool) throws -> RunRecord {
        let o = world.options
        let channels = try (0..<o.channels).map { _ in
            try world.engine.makeChannel(coalescing: coalesce, queueDepth: o.queueDepth)
        }
        var engineSeconds: [Double] = [], memcpySeconds: [Double] = []
        var verified = true
        let opsBefore = channels.reduce(0) { $0 + $1.statistics.operations }
        for _ in 0..<o.repeats {
            pattern.poisonDestinations(0xA5)
            memcpySeconds.append(pattern.memcpyAll())
            verified = verified && pattern.verify()
            pattern.poisonDestinations(0x5A)
            engineSeconds.append(try runEngine(pattern, channels: channels, options: o))
            verified = verified && pattern.verify()
        }
        let sqes = (channels.reduce(0) { $0 + $1.statistics.operations } - opsBefore) / o.repeats
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
        r.set("bytes", bytes)
        r.set("seconds", seconds)
        r.set("gbps", Double(bytes) / seconds / 1e9)
        r.set("memcpy_gbps", Double(bytes) / baseline / 1e9)
        r.set("ratio", baseline / seconds)
        r.set("descriptors_per_s", Double(pattern.count) / seconds)
        r.set("sqes", sqes)
        r.set("repeats", o.repeats)
        r.set("verified", verified)
        return r
    }

    /// One timed pass: each channel (on its own thread) takes every n-th batch.
    private static func runEngine(_ pattern: ScatterPattern, channels: [DMAChannel], options o: CopyOptions) throws -> Double {
        let batches = (pattern.count + o.batchPages - 1) / o.batchPages
        let errors = ErrorBox()
        let start = DispatchTime.now().uptimeNanoseconds
        DispatchQueue.concurrentPerform(iterations: channels.count) { c in
            do {
                var inflight: [Fence] = []
                inflight.reserveCapacity(o.inflightBatches)
                for b in stride(from: c, to: batches, by: channels.count) {
                    if inflight.count == o.inflightBatches { try inflight.removeFirst().wait() }
                    let first = b * o.batchPages
                    for i in first..<min(first + o.batchPages, pattern.count) {
                        try channels[c].enqueueCopy(from: pattern.source(i), to: pattern.destination(i), length: o.pageSize)
                    }
                    inflight.append(try channels[c].submit())
                }
                for f in inflight { try f.wait() }
            } catch {
                errors.record(error)
            }
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        if let e = errors.first { throw e }
        return seconds
    }

    static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
}

/// The first error any worker thread hit.
final class ErrorBox: @unchecked Sendable {
    private let lock = NSLock()
    private var error: (any Error)?
    func record(_ e: any Error) { lock.lock(); if error == nil { error = e }; lock.unlock() }
    var first: (any Error)? { lock.lock(); defer { lock.unlock() }; return error }
}
