import NIOConcurrencyHelpers

/// A channel's fence timeline: signals fences strictly in seqno order.
///
/// Models the in-order `dma_fence` signalling of a GPU channel's fence context:
/// a fence whose own work finished waits (unsignalled) behind any earlier fence
/// still running. Signalling happens under the timeline lock so that no thread
/// can observe fence N signalled while N-1 is not; callbacks run after the lock
/// is dropped.
///
/// Threads: `append` from the submitter (under the channel's submit lock);
/// `fenceWorkDone` from any completion thread.
final class ChannelTimeline: @unchecked Sendable {
    let pool: DescriptorPool
    /// The channel's backend, which a waiter may help (`CopyBackend.assist`); nil in unit tests.
    let backend: (any CopyBackend)?
    /// Guards the timeline and every field of its fences that is not atomic; fence waiters
    /// sleep on its condition.
    let lock = TimelineLock()
    // Guarded by `lock`:
    private var outstanding: [Fence?] = []
    private var head = 0
    private var completedTicket: UInt64? = nil
    private var history: FailureHistory

    init(pool: DescriptorPool, statusHistory: Int = DMAEngine.Configuration().statusHistory,
         backend: (any CopyBackend)? = nil) {
        self.pool = pool
        self.backend = backend
        self.history = FailureHistory(window: statusHistory)
        self.statusWindow = history.window
    }

    func append(_ fence: Fence) {
        lock.withLock {
            outstanding.append(fence)
        }
    }

    /// The most recently submitted fence that has not signalled, if any.
    var latestUnsignaled: Fence? {
        lock.withLock { head < outstanding.count ? outstanding[outstanding.count - 1] : nil }
    }

    /// Every ticket at or below this one has completed (DPDK `rte_dma_completed()`'s `last_idx`).
    var lastCompletedTicket: DMATicket? {
        lock.withLock { completedTicket.map(DMATicket.init(rawValue:)) }
    }

    /// How many of the latest completed tickets keep their status (immutable).
    let statusWindow: UInt64

    /// The status of each ticket in `tickets` (all of them issued by the channel).
    func status(_ tickets: Range<UInt64>) -> [DescriptorStatus] {
        lock.withLock { tickets.map { history.status($0, completed: completedTicket) } }
    }

    /// Records tickets dropped before submit: their status is ECANCELED from now on.
    func discard(_ tickets: Range<UInt64>) {
        lock.withLock { history.discard(tickets) }
    }

    func fenceWorkDone(_ fence: Fence) {
        // The fences signalled here. One without callbacks goes in `quiet`, the rest in
        // order in `others`: the common case (one fence, waited on, as each one-page fault's)
        // then builds no array.
        var quiet: Fence?
        var others: [(Fence, [@Sendable (Fence) -> Void])] = []
        lock.withLock {
            fence.ownWorkDone = true
            while head < outstanding.count, let f = outstanding[head], f.ownWorkDone {
                outstanding[head] = nil
                head += 1
                let callbacks = f.markSignaledLocked()
                if !f.tickets.isEmpty {
                    completedTicket = f.tickets.upperBound.rawValue - 1
                    history.append(f.failuresLocked, completedThrough: f.tickets.upperBound.rawValue - 1)
                }
                if callbacks.isEmpty && quiet == nil { quiet = f } else { others.append((f, callbacks)) }
            }
            if quiet != nil || !others.isEmpty { lock.wakeAll() }
            if head > 64, head * 2 > outstanding.count {
                outstanding.removeFirst(head)
                head = 0
            }
        }
        guard quiet != nil || !others.isEmpty else { return }
        let marked = FenceCallbackContext.enter()
        quiet?.releaseBufferHold()
        for (f, callbacks) in others {
            f.releaseBufferHold()
            for cb in callbacks { cb(f) }
        }
        // What the fences and callbacks hold (maybe the engine) is released in the callback context.
        quiet = nil
        others.removeAll()
        FenceCallbackContext.leave(marked)
    }
}

/// Recycled descriptor buffers, one per batch, so steady-state enqueue allocates nothing.
///
/// Threads: any (internally locked).
final class DescriptorPool: @unchecked Sendable {
    let capacity: Int
    private let lock = NIOLock()
    private var free: [UnsafeMutableBufferPointer<CopyDescriptor>] = []
    private var closed = false

    init(capacity: Int) { self.capacity = capacity }

    func take() -> UnsafeMutableBufferPointer<CopyDescriptor> {
        lock.withLock { free.popLast() } ?? .allocate(capacity: capacity)
    }

    func put(_ buffer: UnsafeMutableBufferPointer<CopyDescriptor>) {
        let keep = lock.withLock { () -> Bool in
            guard !closed, free.count < 64 else { return false }
            free.append(buffer)
            return true
        }
        if !keep { buffer.deallocate() }
    }

    deinit {
        for b in free { b.deallocate() }
    }
}
