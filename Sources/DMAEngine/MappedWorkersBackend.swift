import Dispatch
import Foundation
import NIOConcurrencyHelpers

/// Copies with a few worker threads doing memcpy through the regions' CPU
/// mappings (host memory, and the `MAP_SHARED` view of each VRAM memfd).
///
/// The extra backend DEVELOPERS.md suggests measuring beside io_uring: the
/// kernel's per-page shmem write path (one inode lock per memfd) caps
/// `pwritev` into VRAM below a plain memcpy, while a store through the mapping
/// costs what memcpy costs and spreads over `threads` cores. Each batch is cut
/// into slices of at most `sliceDescriptors` descriptors, and at least one more
/// than `threads`; idle workers take slices in submit order, and so does a thread
/// about to block on one of the channel's fences (`assist`): it copies instead of
/// waiting for a worker to wake up. Fences still signal in order through the
/// channel's timeline.
///
/// Threads: see `CopyBackend`; `threads` workers per channel, blocked on a
/// semaphore while idle (no spinning). Completions, and so fence callbacks, run
/// on a worker or on an assisting waiter.
final class MappedWorkersBackend: CopyBackend, @unchecked Sendable {
    var name: String { "mapped" }

    private let threads: Int
    /// Descriptors per slice at most (a 4 KiB page each in a migration: 256 KiB).
    static let sliceDescriptors = 64
    private let lock = NIOLock()
    private var queue: [CopyBatch?] = []  // guarded by lock; nil tells a worker to exit
    private var head = 0  // guarded by lock
    private let available = DispatchSemaphore(value: 0)
    /// Slots for queued-or-running slices: bounds memory and lets `.fence` wait for idle.
    private let slots: DispatchSemaphore
    private let depth: Int
    private let exited = DispatchSemaphore(value: 0)
    private var stopped = false  // touched by the single shutdown caller only

    /// Worker threads started (`threads`, or none for tests where only waiters copy).
    private let started: Int

    init(threads: Int, queueDepth: Int, startWorkers: Bool = true) {
        self.threads = max(1, threads)
        self.depth = max(queueDepth, self.threads)
        self.slots = DispatchSemaphore(value: depth)
        self.started = startWorkers ? self.threads : 0
        for t in 0..<started {
            let thread = Thread { [self] in work() }
            thread.name = "dma-mapped-\(t)"
            thread.start()
        }
    }

    func execute(_ batch: CopyBatch) -> Int {
        var start = batch.indices.lowerBound
        let end = batch.indices.upperBound
        var operations = 0
        while start < end {
            // A `.fence` descriptor starts a new slice that waits for everything before it.
            var stop = start + 1
            while stop < end, !batch[stop].flags.contains(.fence) { stop += 1 }
            if batch[start].flags.contains(.fence) { waitUntilIdle() }
            // Slices of at most `sliceDescriptors` descriptors, and at least one more slice than
            // workers: a thread waiting for the fence takes what they have not (`assist`).
            let pieces = max(threads + 1, (stop - start + Self.sliceDescriptors - 1) / Self.sliceDescriptors)
            let per = max(1, (stop - start + pieces - 1) / pieces)
            var i = start
            while i < stop {
                push(batch.slice(i..<min(i + per, stop)))
                operations += 1
                i += per
            }
            start = stop
        }
        return operations
    }

    private func push(_ slice: CopyBatch?) {
        slots.wait()
        lock.withLock { queue.append(slice) }
        available.signal()
    }

    func waitUntilIdle() {
        for _ in 0..<depth { slots.wait() }
        for _ in 0..<depth { slots.signal() }
    }

    private func work() {
        while true {
            available.wait()
            switch take(sentinel: true) {
            case .none: continue  // a waiter took the slice this wake-up was for
            case .some(.none):
                slots.signal()
                exited.signal()
                return
            case .some(.some(let slice)): run(slice)
            }
        }
    }

    /// The slice at the head of the queue: `.some(nil)` is the exit sentinel, which
    /// only a worker (`sentinel`) takes; nil when there is nothing to take.
    private func take(sentinel: Bool) -> CopyBatch?? {
        lock.withLock { () -> CopyBatch?? in
            guard head < queue.count, sentinel || queue[head] != nil else { return nil }
            defer { head += 1; if head > 1024 { queue.removeFirst(head); head = 0 } }
            return .some(queue[head])
        }
    }

    private func run(_ slice: CopyBatch) {
        for i in slice.indices { MemoryCopy.perform(slice[i]) }
        slots.signal()
        slice.complete(slice.indices)
    }

    func assist(until done: () -> Bool) {
        while !done(), case .some(.some(let slice)) = take(sentinel: false) { run(slice) }
    }

    func shutdown(cancelInFlight: Bool) {
        guard !stopped else { return }
        stopped = true
        assist { false }   // what is still queued runs here (outside the submit lock) rather than wait for a worker
        waitUntilIdle()
        for _ in 0..<started { push(nil) }
        for _ in 0..<started { exited.wait() }
    }
}
