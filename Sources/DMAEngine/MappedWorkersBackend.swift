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
/// into `threads` slices; idle workers take slices in submit order; fences still
/// signal in order through the channel's timeline.
///
/// Threads: see `CopyBackend`; `threads` workers per channel, blocked on a
/// semaphore while idle (no spinning).
final class MappedWorkersBackend: CopyBackend, @unchecked Sendable {
    var name: String { "mapped" }

    private let threads: Int
    private let lock = NIOLock()
    private var queue: [CopyBatch?] = []  // guarded by lock; nil tells a worker to exit
    private var head = 0  // guarded by lock
    private let available = DispatchSemaphore(value: 0)
    /// Slots for queued-or-running slices: bounds memory and lets `.fence` wait for idle.
    private let slots: DispatchSemaphore
    private let depth: Int
    private let exited = DispatchSemaphore(value: 0)
    private var stopped = false  // touched by the single shutdown caller only

    init(threads: Int, queueDepth: Int) {
        self.threads = max(1, threads)
        self.depth = max(queueDepth, self.threads)
        self.slots = DispatchSemaphore(value: depth)
        for t in 0..<self.threads {
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
            let per = max(1, (stop - start + threads - 1) / threads)
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

    private func waitUntilIdle() {
        for _ in 0..<depth { slots.wait() }
        for _ in 0..<depth { slots.signal() }
    }

    private func work() {
        while true {
            available.wait()
            let item = lock.withLock { () -> CopyBatch?? in
                defer { head += 1; if head > 1024 { queue.removeFirst(head); head = 0 } }
                return queue[head]
            }
            guard let slice = item ?? nil else {
                slots.signal()
                exited.signal()
                return
            }
            for i in slice.indices { MemoryCopy.perform(slice[i]) }
            slots.signal()
            slice.complete(slice.indices)
        }
    }

    func shutdown(cancelInFlight: Bool) {
        guard !stopped else { return }
        stopped = true
        waitUntilIdle()
        for _ in 0..<threads { push(nil) }
        for _ in 0..<threads { exited.wait() }
    }
}
