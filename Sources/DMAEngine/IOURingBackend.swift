import CUring
import Dispatch
import Foundation
import Glibc
import NIOConcurrencyHelpers
import Synchronization
import SystemPackage

/// Copies with one io_uring per channel: `pwritev` into / `preadv` out of the VRAM
/// memfds, with host memory (or the other pool's mapping) as the iovecs.
///
/// Each submitted batch is cut into operations by the `Coalescer`; each
/// operation takes one of `queueDepth` slots (its iovecs live in the slot until
/// completion), so the ring never holds more than `queueDepth` operations and
/// its completion queue (2 × depth) cannot overflow. `execute` blocks only when
/// every slot is taken. A descriptor crossing a stripe unit of a striped pool is
/// issued as one operation per unit (`SplitTable`).
///
/// Reads, and writes into striped pools, go to io-wq workers (`IOSQE_ASYNC`),
/// where they run in parallel (io-wq serialises buffered writes per inode, hence
/// the stripes); writes into an unstriped pool run inline in `io_uring_enter`,
/// which is cheaper when they would serialise anyway.
///
/// Completions are reaped by one thread per channel that blocks in
/// `io_uring_wait_cqe` (no spinning). A short completion (or one that failed with
/// EINTR/EAGAIN, or ECANCELED — EFAULT on older kernels — because its submitting
/// thread exited, before any byte) is finished on that thread with plain
/// `pwritev`/`preadv`; a failed one fails its descriptors with the kernel's errno. Host-to-host copies have no file side and are done
/// with memcpy on the submitting thread.
///
/// If the ring itself fails (see `ChannelHealth`), SQEs the kernel never took
/// fail their descriptors with its errno, later batches fail at once, and the
/// channel refuses work; nothing traps and no fence is left waiting forever.
///
/// Threads: see `CopyBackend`. The reaper thread owns the completion side.
final class IOURingBackend: CopyBackend, @unchecked Sendable {
    /// One operation in flight; written by the submitter before its SQE, read by the reaper after its CQE.
    struct Slot {
        var batch: CopyBatch?
        var op: PlannedOperation
    }

    static let stopTag = UInt64.max
    static let cancelTag = UInt64.max - 1
    /// How long the reaper blocks before looking at `exitRequested` (only matters if the stop NOP cannot be submitted).
    static let reaperTimeoutNanoseconds = 500_000_000

    var name: String { "iouring" }

    let ring: IOURing
    let depth: Int
    let coalescer: Coalescer
    let slots: UnsafeMutableBufferPointer<Slot>
    let iovecs: UnsafeMutablePointer<iovec>
    let splits: SplitTable
    let health: ChannelHealth
    private let freeLock = NIOLock()
    private var freeList: [Int]  // guarded by freeLock
    private let freeSlots: DispatchSemaphore
    /// Slots prepared since the last successful submit, in SQ order (submitter only).
    private var unsubmitted: [Int]
    /// Bumped (release) before each doorbell and read (acquire) before the reaper looks at a
    /// slot: states in Swift's memory model the order the ring already gives (slot and iovecs
    /// written → SQ tail → kernel → CQ tail), which Thread Sanitizer cannot see through the kernel.
    let published = Synchronization.Atomic<UInt64>(0)
    /// Host memory installed in the ring's fixed-buffer table, by address (empty unless `fixedBuffers`).
    let fixedTable = FixedBufferTable()
    /// Whether the ring has a fixed-buffer table (the engine asked, and the kernel set it up).
    let fixedEnabled: Bool
    let fixedLock = NIOLock()
    private var fixedStatus = FixedBufferStatus()  // guarded by fixedLock (operations: see fixedOperations)
    private let fixedOperations = Synchronization.Atomic<Int>(0)
    let reaperExited = DispatchSemaphore(value: 0)
    let stopped = Synchronization.Atomic<Bool>(false)
    let exitRequested = Synchronization.Atomic<Bool>(false)
    /// Set before shutdown cancels what is in flight: ECANCELED is then the answer, not a retry.
    let cancelRequested = Synchronization.Atomic<Bool>(false)

    init(_ settings: ChannelSettings) throws(DMAError) {
        depth = settings.queueDepth
        ring = try IOURing(entries: depth)
        coalescer = Coalescer(enabled: settings.coalescing)
        health = settings.health
        slots = .allocate(capacity: depth)
        slots.initialize(repeating: Slot(batch: nil, op: .empty))
        iovecs = .allocate(capacity: depth * coalescer.maxIovecs)
        splits = SplitTable(capacity: depth + 1)
        freeList = Array((0..<depth).reversed())
        unsubmitted = []
        unsubmitted.reserveCapacity(depth)
        freeSlots = DispatchSemaphore(value: depth)
        if settings.fixedBuffers, let e = ring.registerSparseBuffers(count: FixedBufferRegistry.capacity) {
            fixedStatus.failure = "io_uring_register_buffers_sparse: \(e) (needs Linux 5.19); copies use the plain opcodes"
            fixedEnabled = false
        } else {
            fixedEnabled = settings.fixedBuffers
        }
        let thread = Thread { [self] in reapUntilStopped() }
        thread.name = "dma-reaper-\(settings.channelID)"
        thread.stackSize = 256 << 10
        thread.start()
    }

    deinit {
        slots.deallocate()
        iovecs.deallocate()
    }

    // MARK: Submission (channel submit lock held)

    func execute(_ batch: CopyBatch) -> Int {
        var i = batch.indices.lowerBound
        var operations = 0
        while i < batch.indices.upperBound {
            if let failure = health.failure {
                batch.finishRun(i..<batch.indices.upperBound, bytesDone: 0, errno: failure)
                break
            }
            // A `.fence` (the first descriptor of whatever path it takes) waits for idle, not
            // only for IOSQE_IO_DRAIN: the kernel starts a drained operation once earlier ones
            // have posted their CQE, but the reaper finishes a short one after that, itself.
            if batch[i].flags.contains(.fence) { waitUntilIdle() }
            let access = FileAccess.best(batch[i])
            if access == .memory {
                copyInline(batch, i..<i + 1)
                i += 1
            } else if !access.fits(batch[i]) {
                operations += queueSplit(batch, i, access: access)
                i += 1
            } else {
                let slot = acquireSlot()
                let iov = iovecs + slot * coalescer.maxIovecs
                let op = coalescer.plan(batch, from: i, into: iov)
                if op.access == .memory {
                    releaseSlot(slot)
                    copyInline(batch, op.descriptors)
                } else {
                    slots[slot] = Slot(batch: batch, op: op)
                    if queue(op, slot: slot, iovecs: iov) { operations += 1 }
                }
                i = op.descriptors.upperBound
            }
        }
        flush()
        return operations
    }

    /// A descriptor the CPU copies (host-to-host, or a fill without a pattern buffer).
    private func copyInline(_ batch: CopyBatch, _ range: Range<Int>) {
        for k in range { MemoryCopy.perform(batch[k]) }
        batch.complete(range)
    }

    /// Issues descriptor `index` as one operation per stripe unit its file side crosses.
    private func queueSplit(_ batch: CopyBatch, _ index: Int, access: FileAccess) -> Int {
        let d = batch[index]
        let file = access.sides(d).file
        var pieces = 0, at = 0
        while at < d.length {
            at += min(d.length - at, file.locate(at).extent)
            pieces += 1
        }
        let split = splits.open(pieces: pieces)
        var operations = 0
        at = 0
        while at < d.length {
            if let failure = health.failure {
                let bytes = min(d.length - at, file.locate(at).extent)
                var failed = PlannedOperation.empty
                (failed.descriptors, failed.bytes, failed.split, failed.pieceOffset) = (index..<index + 1, bytes, split, at)
                report(batch, failed, done: 0, errno: failure)
                at += bytes
                continue
            }
            let slot = acquireSlot()
            let iov = iovecs + slot * coalescer.maxIovecs
            var op = coalescer.planPiece(batch, index, access: access, at: at, into: iov)
            op.split = split
            if op.access == .memory {
                releaseSlot(slot)
                MemoryCopy.perform(d, from: at, bytes: op.bytes)
                report(batch, op, done: op.bytes, errno: .ioError)
            } else {
                slots[slot] = Slot(batch: batch, op: op)
                if queue(op, slot: slot, iovecs: iov) { operations += 1 }
            }
            at += op.bytes
        }
        return operations
    }

    /// Prepares the SQE of `op` in `slot`; false (and `op` failed) if the ring has no SQE to give.
    private func queue(_ op: PlannedOperation, slot: Int, iovecs iov: UnsafeMutablePointer<iovec>) -> Bool {
        var sqe = ring.nextSQE()
        if sqe == nil {
            flush()
            sqe = health.failure == nil ? ring.nextSQE() : nil
        }
        guard let sqe else {
            // Cannot happen with a healthy ring (slots ≤ SQ entries); fail the op rather than trap.
            fail(slot, errno: health.failure ?? .noBufferSpace)
            return false
        }
        let fixed = fixedSlot(iov, count: op.iovecCount)
        switch op.access {
        case .write(let fd, let offset):
            ring.prepWrite(sqe, fd: fd, iovecs: iov, count: op.iovecCount, offset: offset, tag: UInt64(slot),
                           drain: op.drain, async: op.async, fixed: fixed)
        case .read(let fd, let offset):
            ring.prepRead(sqe, fd: fd, iovecs: iov, count: op.iovecCount, offset: offset, tag: UInt64(slot),
                          drain: op.drain, async: op.async, fixed: fixed)
        case .memory:
            ring.prepNop(sqe, tag: UInt64(slot))  // never planned into a slot; harmless if it were
        }
        unsubmitted.append(slot)
        return true
    }

    /// The fixed buffer all of an operation's memory lies in, or -1 (plain opcodes): the
    /// fixed-buffer variant of the operation is used where the ring has one (vectored ones
    /// need Linux 6.15).
    @inline(__always)
    private func fixedSlot(_ iov: UnsafeMutablePointer<iovec>, count: Int) -> Int {
        guard fixedEnabled, count >= 1, count == 1 || ring.supportsVectoredFixed else { return -1 }
        var low = UInt.max, high: UInt = 0
        for k in 0..<count {
            let start = UInt(bitPattern: iov[k].iov_base)
            low = min(low, start)
            high = max(high, start + UInt(iov[k].iov_len))
        }
        guard let slot = fixedTable.slot(containing: low, high) else { return -1 }
        fixedOperations.add(1, ordering: .relaxed)
        return slot
    }

    // MARK: Fixed buffers (engine thread)

    func installFixedBuffers(_ pieces: [FixedBufferPiece]) {
        guard fixedEnabled else { return }
        fixedLock.withLock {
            guard !ring.isClosed else { return }
            for piece in pieces {
                if let e = ring.updateBuffer(slot: piece.slot, piece.iovec) {
                    fixedStatus.failure = "pinning \(piece.length) bytes of \(piece.region) as fixed buffer \(piece.slot): \(e)"
                        + (e == .noMemory ? " (RLIMIT_MEMLOCK: `ulimit -l`)" : "") + "; copies from it use the plain opcodes"
                } else {
                    fixedTable.insert(piece)
                    fixedStatus.installedPieces += 1
                }
            }
        }
    }

    func removeFixedBuffers(slots: [Int]) {
        guard fixedEnabled else { return }
        fixedLock.withLock {
            let held = fixedTable.remove(slots: slots)
            for slot in held where !ring.isClosed { _ = ring.updateBuffer(slot: slot, iovec(iov_base: nil, iov_len: 0)) }
            fixedStatus.installedPieces -= held.count
        }
    }

    var fixedBufferStatus: FixedBufferStatus {
        var s = fixedLock.withLock { fixedStatus }
        s.operations = fixedOperations.load(ordering: .relaxed)
        return s
    }

    /// Rings the doorbell for every prepared SQE. If the ring fails, marks the
    /// channel failed and fails the operations the kernel did not take.
    func flush() {
        guard !unsubmitted.isEmpty || ring.unsubmittedCount > 0 else { return }
        guard health.failure == nil else {
            failUnsubmitted(count: unsubmitted.count, errno: health.failure ?? .ioError)
            return
        }
        published.add(1, ordering: .releasing)
        if let error = ring.submitAll() {
            health.markFailed(error)
            failUnsubmitted(count: min(ring.unsubmittedCount, unsubmitted.count), errno: error)
        }
        unsubmitted.removeAll(keepingCapacity: true)
    }

    /// Fails the last `count` prepared operations (their SQEs never reached the kernel).
    private func failUnsubmitted(count: Int, errno: Errno) {
        for slot in unsubmitted.suffix(count) { fail(slot, errno: errno) }
        unsubmitted.removeAll(keepingCapacity: true)
    }

    /// Fails the operation in `slot` with nothing done and frees the slot.
    private func fail(_ slot: Int, errno: Errno) {
        let s = slots[slot]
        slots[slot].batch = nil
        releaseSlot(slot)
        if let batch = s.batch { report(batch, s.op, done: 0, errno: errno) }
    }

    private func acquireSlot() -> Int {
        if freeSlots.wait(timeout: .now()) == .timedOut {
            flush()  // the reaper can only free slots whose SQEs the kernel has
            freeSlots.wait()
        }
        return freeLock.withLock { freeList.removeLast() }
    }

    func releaseSlot(_ slot: Int) {
        freeLock.withLock { freeList.append(slot) }
        freeSlots.signal()
    }

    /// Blocks until no operation is in flight (before a `.fence` descriptor, and at shutdown).
    func waitUntilIdle() {
        flush()
        for _ in 0..<depth { freeSlots.wait() }
        for _ in 0..<depth { freeSlots.signal() }
    }
}
