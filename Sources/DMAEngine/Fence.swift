import SystemPackage
import Synchronization

/// The completion of one `DMAChannel.submit()`, on the channel's timeline.
///
/// Models `struct dma_fence` as nouveau emits it after a batch of copies:
/// `seqno` increases by one per submit on a channel, and a fence signals only
/// when its own descriptors *and every earlier fence of the channel* have
/// completed, even when the backend finishes them out of order. A fence whose
/// descriptors failed still signals; its `failures` list them (like
/// `dma_fence_set_error()`), and `wait()` rethrows them as `.copyFailed`.
///
/// Threads: any thread may query, wait on or add callbacks to a fence.
/// Callbacks run on the thread that signals it (a reaper or worker thread, a
/// waiter that ran queued copies itself (`CopyBackend.assist`), or the
/// submitter for synchronous backends), or at once if already signalled:
/// keep them short; never wait on a later fence, nor enqueue, submit or call
/// another submit-lock method (`capacity`, `statistics`, `discardPending`) of the
/// same channel, from one (a reaper thread must stay free to reap, and a submit
/// waiting for the backend to drain holds that lock); `status(of:)` is fine.
public final class Fence: @unchecked Sendable, CustomStringConvertible {
    /// Position on the channel's timeline (1, 2, 3, … per channel).
    public let seqno: UInt64
    /// The channel that emitted the fence.
    public let channelID: Int
    /// The tickets of the fence's descriptors, as `enqueueCopy`/`enqueueFill` returned them
    /// (empty for a fence with no descriptors): pass them to `DMAChannel.status(of:)`.
    public let tickets: Range<DMATicket>

    /// Set (releasing) under the timeline's lock when the fence signals.
    private let signaled = Synchronization.Atomic<Bool>(false)
    // Guarded by the timeline's lock (`ChannelTimeline.lock`, the channel's `dma_fence.lock`):
    // no lock of the fence's own, so that a fence costs one allocation.
    private var failureList: [DescriptorFailure] = []
    private var callbacks: [@Sendable (Fence) -> Void] = []
    private var signalTime: UInt64 = 0

    /// Descriptors not yet reported by the backend.
    private let remaining: Synchronization.Atomic<Int>
    /// 2 → 0: the batch buffer goes back to the pool after both `execute` returned and the fence signalled.
    private let bufferHolds = Synchronization.Atomic<Int>(2)
    let descriptors: UnsafeMutableBufferPointer<CopyDescriptor>
    let timeline: ChannelTimeline
    /// Set under the timeline's lock when the fence's own descriptors are all reported.
    var ownWorkDone = false

    init(seqno: UInt64, channelID: Int, tickets: Range<UInt64>,
         descriptors: UnsafeMutableBufferPointer<CopyDescriptor>, timeline: ChannelTimeline) {
        self.seqno = seqno
        self.channelID = channelID
        self.tickets = DMATicket(rawValue: tickets.lowerBound) ..< DMATicket(rawValue: tickets.upperBound)
        self.descriptors = descriptors
        self.timeline = timeline
        self.remaining = Atomic(tickets.count)
    }

    /// Whether the fence (and so every earlier fence of its channel) has signalled.
    public var isSignaled: Bool { signaled.load(ordering: .acquiring) }

    /// When the fence signalled, in `MonotonicTime` nanoseconds; nil while unsignalled.
    /// Models `dma_fence.timestamp`: stamped before any waiter wakes or callback runs,
    /// so it never trails what the fence gates.
    public var timestamp: UInt64? {
        timeline.lock.withLock { isSignaled ? signalTime : nil }
    }

    /// The descriptors that failed, in report order (empty while unsignalled or when all succeeded).
    public var failures: [DescriptorFailure] {
        timeline.lock.withLock { failuresLocked }
    }

    /// `failures`, with the timeline's lock held.
    var failuresLocked: [DescriptorFailure] { isSignaled ? failureList : [] }

    /// `.copyFailed` with every failure once signalled with errors; nil otherwise.
    public var error: DMAError? {
        let f = failures
        return f.isEmpty ? nil : .copyFailed(f.sorted { $0.index < $1.index })
    }

    /// Blocks until the fence signals. Models `dma_fence_wait_timeout()`.
    ///
    /// Throws `.timedOut` if `timeout` expires first, and `.copyFailed` if
    /// any of the fence's descriptors failed. A nil timeout waits forever; zero polls;
    /// a negative one is `.invalidArgument` (`EINVAL`, as the kernel's), signalled or not.
    public func wait(timeout: Duration? = nil) throws(DMAError) {
        if let timeout, timeout < .zero { throw .invalidArgument("fence wait timeout \(timeout) is negative") }
        guard waitForSignal(timeout: timeout) else { throw .timedOut }
        if let error { throw error }
    }

    /// Blocks until the fence signals or `timeout` expires; returns whether it signalled.
    /// Without a timeout, the thread first runs the channel's queued copies itself while
    /// the fence is unsignalled (`CopyBackend.assist`; the mapped backend has some).
    public func waitForSignal(timeout: Duration? = nil) -> Bool {
        if isSignaled { return true }
        var deadline: UInt64?
        if let timeout {
            let (s, a) = timeout.components
            guard s > 0 || (s == 0 && a > 0) else { return false }
            let nanoseconds = s >= Int64(UInt64.max / 1_000_000_000 / 2) ? UInt64.max / 2
                : UInt64(s) * 1_000_000_000 + UInt64(a / 1_000_000_000)
            deadline = MonotonicTime.now() &+ nanoseconds
        } else if let backend = timeline.backend {
            // About to sleep: lend this thread to the channel's backend first.
            backend.assist { self.isSignaled }
        }
        let lock = timeline.lock
        lock.lock()
        defer { lock.unlock() }
        return lock.wait(until: { isSignaled }, deadline: deadline)
    }

    /// Suspends until the fence signals; throws `.copyFailed` if descriptors failed.
    public func wait() async throws(DMAError) {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            onSignal { _ in continuation.resume() }
        }
        if let error { throw error }
    }

    /// Runs `callback` once the fence signals (now, if it already has).
    /// Models `dma_fence_add_callback()`.
    public func onSignal(_ callback: @escaping @Sendable (Fence) -> Void) {
        let lock = timeline.lock
        lock.lock()
        if isSignaled {
            lock.unlock()
            callback(self)
        } else {
            callbacks.append(callback)
            lock.unlock()
        }
    }

    public var description: String {
        "Fence(channel \(channelID), seqno \(seqno), \(tickets.upperBound.rawValue - tickets.lowerBound.rawValue) descriptors, \(isSignaled ? "signaled" : "pending"))"
    }

    // MARK: Backend and timeline side

    func recordFailure(index: Int, errno: Errno, bytesCompleted: Int) {
        let ticket = DMATicket(rawValue: tickets.lowerBound.rawValue &+ UInt64(truncatingIfNeeded: index))
        timeline.lock.withLock {
            failureList.append(DescriptorFailure(ticket: ticket, index: index, errno: errno, bytesCompleted: bytesCompleted))
        }
    }

    /// Keeps the fence from signalling until a matching `descriptorsFinished(1)`, even
    /// once its descriptors are done (a wrapper backend delaying completion). Call it
    /// only while some of the fence's descriptors are still unreported.
    func addHold() {
        remaining.add(1, ordering: .acquiringAndReleasing)
    }

    func descriptorsFinished(_ count: Int) {
        let left = remaining.subtract(count, ordering: .acquiringAndReleasing).newValue
        if left == 0 { timeline.fenceWorkDone(self) }
    }

    /// With the timeline's lock held: marks the fence signalled and hands back the callbacks
    /// to run (once that lock is dropped). The timeline wakes the waiters.
    func markSignaledLocked() -> [@Sendable (Fence) -> Void] {
        let run = callbacks
        callbacks = []
        signalTime = MonotonicTime.now()
        signaled.store(true, ordering: .releasing)
        return run
    }

    /// Drops one hold on the descriptor buffer; the last one returns it to the pool.
    func releaseBufferHold() {
        if bufferHolds.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
            timeline.pool.put(descriptors)
        }
    }
}
