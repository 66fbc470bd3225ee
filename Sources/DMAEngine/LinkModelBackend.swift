import Dispatch
import Foundation
import NIOConcurrencyHelpers
import Synchronization

/// Wraps a backend and makes host↔device batches complete no earlier than a
/// `LinkModel` says the wire would carry them.
///
/// The wrapped backend copies as usual; this wrapper only holds each batch's fence
/// (`CopyBatch.hold()`) and releases the hold at the batch's modelled deadline on
/// one delivery thread. Deadlines are released in submit order, and the channel
/// timeline signals fences in seqno order anyway, so the model can delay fences
/// but never reorder them.
///
/// Threads: see `CopyBackend`; one delivery thread per channel, blocked on a
/// semaphore when nothing is held, and in a timed semaphore wait until a deadline.
final class LinkModelBackend: CopyBackend, @unchecked Sendable {
    let model: LinkModel
    let inner: any CopyBackend
    /// When each direction of the link is next free (`now()` ns); submit lock only.
    private var freeAt: (toDevice: UInt64, toHost: UInt64) = (0, 0)
    private let lock = NIOLock()
    private var queue: [(deadline: UInt64, batch: CopyBatch)?] = []  // guarded by lock; nil stops the thread
    private var head = 0  // guarded by lock
    private let queued = DispatchSemaphore(value: 0)
    private let exited = DispatchSemaphore(value: 0)
    private let hurry = Synchronization.Atomic<Bool>(false)
    /// Signalled to cut a deadline wait short (shutdown with cancel).
    private let wake = DispatchSemaphore(value: 0)
    private var stopped = false  // the single shutdown caller only
    /// Batches held so far (for tests and reports).
    let heldBatches = Synchronization.Atomic<Int>(0)

    var name: String { "link(\(inner.name))" }

    init(model: LinkModel, wrapping inner: any CopyBackend, channelID: Int) {
        self.model = model
        self.inner = inner
        let thread = Thread { [self] in deliver() }
        thread.name = "dma-link-\(channelID)"
        thread.stackSize = 128 << 10
        thread.start()
    }

    func execute(_ batch: CopyBatch) -> Int {
        var toDevice = 0, toHost = 0
        for i in batch.indices {
            let d = batch[i]
            guard d.operation == .copy, d.source.isFileBacked != d.destination.isFileBacked else { continue }
            if d.destination.isFileBacked { toDevice += d.length } else { toHost += d.length }
        }
        guard toDevice + toHost > 0 else { return inner.execute(batch) }
        let now = Self.now()
        var last: UInt64 = 0
        if toDevice > 0 {
            freeAt.toDevice = max(freeAt.toDevice, now) + model.transferNanoseconds(toDevice)
            last = freeAt.toDevice
        }
        if toHost > 0 {
            freeAt.toHost = max(freeAt.toHost, now) + model.transferNanoseconds(toHost)
            last = max(last, freeAt.toHost)
        }
        batch.hold()  // before the inner backend can report the last descriptor
        heldBatches.add(1, ordering: .relaxed)
        let operations = inner.execute(batch)
        lock.withLock { queue.append((last + UInt64(model.latency.clampedNanoseconds), batch)) }
        queued.signal()
        return operations
    }

    func installFixedBuffers(_ pieces: [FixedBufferPiece]) { inner.installFixedBuffers(pieces) }
    func removeFixedBuffers(slots: [Int]) { inner.removeFixedBuffers(slots: slots) }
    var fixedBufferStatus: FixedBufferStatus { inner.fixedBufferStatus }
    func assist(until done: () -> Bool) { inner.assist(until: done) }
    func waitUntilIdle() { inner.waitUntilIdle() }

    func shutdown(cancelInFlight: Bool) {
        guard !stopped else { return }
        stopped = true
        inner.shutdown(cancelInFlight: cancelInFlight)
        if cancelInFlight {
            hurry.store(true, ordering: .releasing)
            wake.signal()
        }
        lock.withLock { queue.append(nil) }
        queued.signal()
        exited.wait()
    }

    // MARK: Delivery thread

    private func deliver() {
        while true {
            queued.wait()
            let item = lock.withLock { () -> (deadline: UInt64, batch: CopyBatch)?? in
                defer {
                    head += 1
                    if head > 256, head * 2 > queue.count { queue.removeFirst(head); head = 0 }
                }
                return queue[head]
            }
            guard let (deadline, batch) = item ?? nil else { break }
            if !hurry.load(ordering: .acquiring) {
                _ = wake.wait(timeout: DispatchTime(uptimeNanoseconds: deadline))
            }
            batch.releaseHold()
        }
        exited.signal()
    }

    /// The clock deadlines are kept in: Dispatch's uptime (CLOCK_MONOTONIC on Linux), which the timed wait uses too.
    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
}
