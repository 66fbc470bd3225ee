import CUring
import Dispatch
import Foundation
import Glibc
import NIOConcurrencyHelpers
import Synchronization
import SystemPackage

/// Copies with one io_uring per channel: `pwritev` into / `preadv` out of the VRAM
/// memfd, with host memory (or the other pool's mapping) as the iovecs.
///
/// Each submitted batch is cut into operations by the `Coalescer`; each
/// operation takes one of `queueDepth` slots (its iovecs live in the slot until
/// completion), so the ring never holds more than `queueDepth` operations and
/// its completion queue (2 × depth) cannot overflow. `execute` blocks only when
/// every slot is taken.
///
/// Completions are reaped by one thread per channel that blocks in
/// `io_uring_wait_cqe` (no spinning). A short completion is finished on that
/// thread with plain `pwritev`/`preadv`; a failed one fails its descriptors
/// with the kernel's errno. Host-to-host copies have no file side and are done
/// with memcpy on the submitting thread.
///
/// Threads: see `CopyBackend`. The reaper thread owns the completion side.
final class IOURingBackend: CopyBackend, @unchecked Sendable {
    /// One operation in flight; written by the submitter before its SQE, read by the reaper after its CQE.
    private struct Slot {
        var batch: CopyBatch?
        var op: PlannedOperation
    }

    private static let stopTag = UInt64.max
    private static let cancelTag = UInt64.max - 1

    var name: String { "iouring" }

    private let ring: IOURing
    private let depth: Int
    private let coalescer: Coalescer
    private let slots: UnsafeMutableBufferPointer<Slot>
    private let iovecs: UnsafeMutablePointer<iovec>
    private let freeLock = NIOLock()
    private var freeList: [Int]  // guarded by freeLock
    private let freeSlots: DispatchSemaphore
    private let reaperExited = DispatchSemaphore(value: 0)
    private let stopped = Synchronization.Atomic<Bool>(false)

    init(_ settings: ChannelSettings) throws(DMAError) {
        depth = settings.queueDepth
        ring = try IOURing(entries: depth)
        coalescer = Coalescer(enabled: settings.coalescing)
        slots = .allocate(capacity: depth)
        slots.initialize(repeating: Slot(batch: nil, op: PlannedOperation(access: .memory, descriptors: 0..<0,
                                                                           iovecCount: 0, bytes: 0, drain: false)))
        iovecs = .allocate(capacity: depth * coalescer.maxIovecs)
        freeList = Array((0..<depth).reversed())
        freeSlots = DispatchSemaphore(value: depth)
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
            if FileAccess(batch[i]) == .memory {
                if batch[i].flags.contains(.fence) { waitUntilIdle() }
                MemoryCopy.perform(batch[i])
                batch.complete(i..<i + 1)
                i += 1
                continue
            }
            let slot = acquireSlot()
            let iov = iovecs + slot * coalescer.maxIovecs
            let op = coalescer.plan(batch, from: i, into: iov)
            slots[slot] = Slot(batch: batch, op: op)
            queue(op, slot: slot, iovecs: iov)
            operations += 1
            i = op.descriptors.upperBound
        }
        ring.submitAll()
        return operations
    }

    private func queue(_ op: PlannedOperation, slot: Int, iovecs iov: UnsafeMutablePointer<iovec>) {
        var sqe = ring.nextSQE()
        if sqe == nil {
            ring.submitAll()
            sqe = ring.nextSQE()
        }
        guard let sqe else { fatalError("io_uring SQ full with a free slot: depth accounting is broken") }
        switch op.access {
        case .write(let fd, let offset):
            ring.prepWrite(sqe, fd: fd, iovecs: iov, count: op.iovecCount, offset: offset, tag: UInt64(slot), drain: op.drain)
        case .read(let fd, let offset):
            ring.prepRead(sqe, fd: fd, iovecs: iov, count: op.iovecCount, offset: offset, tag: UInt64(slot), drain: op.drain)
        case .memory:
            preconditionFailure("memory-only descriptors are copied inline")
        }
    }

    private func acquireSlot() -> Int {
        if freeSlots.wait(timeout: .now()) == .timedOut {
            ring.submitAll()  // the reaper can only free slots whose SQEs the kernel has
            freeSlots.wait()
        }
        return freeLock.withLock { freeList.removeLast() }
    }

    private func releaseSlot(_ slot: Int) {
        freeLock.withLock { freeList.append(slot) }
        freeSlots.signal()
    }

    /// Blocks until no operation is in flight (for a `.fence` descriptor done inline).
    private func waitUntilIdle() {
        ring.submitAll()
        for _ in 0..<depth { freeSlots.wait() }
        for _ in 0..<depth { freeSlots.signal() }
    }

    // MARK: Completion (reaper thread)

    private func reapUntilStopped() {
        while true {
            var next: (tag: UInt64, result: Int32)? = ring.waitCQE()
            while let (tag, result) = next {
                if tag == Self.stopTag {
                    reaperExited.signal()
                    return
                }
                if tag != Self.cancelTag { complete(slot: Int(tag), result: Int(result)) }
                next = ring.peekCQE()
            }
        }
    }

    private func complete(slot: Int, result: Int) {
        let s = slots[slot]
        guard let batch = s.batch else { return }
        let op = s.op
        if result == op.bytes {
            releaseSlot(slot)
            batch.complete(op.descriptors)
            return
        }
        var done = max(result, 0)
        var error = result < 0 ? Errno(rawValue: Int32(-result)) : Errno.ioError
        if result >= 0 {
            (done, error) = finishShort(op, done: done, iovecs: iovecs + slot * coalescer.maxIovecs)
        }
        releaseSlot(slot)
        if done == op.bytes {
            batch.complete(op.descriptors)
        } else {
            batch.finishRun(op.descriptors, bytesDone: done, errno: error)
        }
    }

    /// Finishes a short read/write synchronously; returns the bytes done and the error that stopped it.
    private func finishShort(_ op: PlannedOperation, done start: Int,
                             iovecs iov: UnsafeMutablePointer<iovec>) -> (Int, Errno) {
        var done = start
        var index = 0
        var skip = done
        while index < op.iovecCount, skip >= iov[index].iov_len {
            skip -= iov[index].iov_len
            index += 1
        }
        while done < op.bytes {
            iov[index].iov_base! += skip
            iov[index].iov_len -= skip
            let n: Int
            switch op.access {
            case .write(let fd, let off): n = pwritev(fd, iov + index, Int32(op.iovecCount - index), off_t(off + done))
            case .read(let fd, let off): n = preadv(fd, iov + index, Int32(op.iovecCount - index), off_t(off + done))
            case .memory: n = 0
            }
            if n < 0 && errno == EINTR { skip = 0; continue }
            if n <= 0 { return (done, n == 0 ? .ioError : Errno(rawValue: errno)) }
            done += n
            skip = n
            while index < op.iovecCount, skip >= iov[index].iov_len {
                skip -= iov[index].iov_len
                index += 1
            }
        }
        return (done, .ioError)
    }

    // MARK: Shutdown

    func shutdown(cancelInFlight: Bool) {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        if cancelInFlight, let sqe = ring.nextSQE() {
            ring.prepCancelAll(sqe, tag: Self.cancelTag)
            ring.submitAll()
        }
        waitUntilIdle()
        if let sqe = ring.nextSQE() {
            ring.prepNop(sqe, tag: Self.stopTag)
            ring.submitAll()
            reaperExited.wait()
        }
    }
}
