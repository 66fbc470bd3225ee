import CUring
import Glibc
import SystemPackage

/// The completion side of `IOURingBackend`: the reaper thread, short and failed
/// operations, and shutdown.
extension IOURingBackend {
    // MARK: Reaper thread

    func reapUntilStopped() {
        var polling = false  // after the wait syscall failed: poll the CQ ring instead
        reaping: while true {
            var next: (tag: UInt64, result: Int32)?
            if polling {
                next = ring.peekCQE()
                if next == nil {
                    if exitRequested.load(ordering: .acquiring) { break reaping }
                    usleep(1000)
                    continue
                }
            } else {
                switch ring.waitCQE(timeoutNanoseconds: Self.reaperTimeoutNanoseconds) {
                case .completion(let tag, let result):
                    next = (tag, result)
                case .timedOut:
                    if exitRequested.load(ordering: .acquiring) { break reaping }
                    continue reaping
                case .failed(let errno):
                    // The kernel still posts completions to the CQ ring: keep reaping them
                    // (fences must signal), but take no new work.
                    health.markFailed(errno)
                    polling = true
                    continue reaping
                }
            }
            while let (tag, result) = next {
                if tag == Self.stopTag {
                    reaperExited.signal()
                    return
                }
                if tag != Self.cancelTag, tag < UInt64(depth) { complete(slot: Int(tag), result: Int(result)) }
                next = ring.peekCQE()
            }
        }
        reaperExited.signal()
    }

    private func complete(slot: Int, result kernelResult: Int) {
        _ = published.load(ordering: .acquiring)  // pairs with the release before the doorbell
        let s = slots[slot]
        guard let batch = s.batch else { return }
        let op = s.op
        var result = kernelResult
        if ring.injectedCompletionResult.load(ordering: .relaxed) != 0 {
            result = Int(ring.injectedCompletionResult.exchange(0, ordering: .relaxed))
        }
        // EINTR/EAGAIN: the kernel gave up on a transient condition (a signal, no memory for
        // the async context) before any byte; retry the whole operation here like a short one.
        // So for ECANCELED that shutdown did not ask for: the thread that submitted it exited
        // before it ran (a task's requests are cancelled on exit). Older kernels (5.x's
        // `__io_req_task_submit`) fail such a request with EFAULT instead, so
        // EFAULT is retried too: a genuinely bad address faults again in the retry, which
        // then reports EFAULT with the bytes before it. A `.fence` operation was issued
        // once the ring was idle, so running it here keeps the order.
        if result == -Int(EINTR) || result == -Int(EAGAIN) || result == -Int(EFAULT)
            || (result == -Int(ECANCELED) && !cancelRequested.load(ordering: .acquiring)) { result = 0 }
        var done = max(result, 0)
        var error = result < 0 ? Errno(rawValue: Int32(-result)) : Errno.ioError
        if result >= 0 && result < op.bytes {
            (done, error) = finishShort(op, done: done, iovecs: iovecs + slot * coalescer.maxIovecs)
        }
        releaseSlot(slot)
        report(batch, op, done: min(done, op.bytes), errno: error)
    }

    /// Reports an operation that did `done` of its bytes (`errno` says why if short).
    func report(_ batch: CopyBatch, _ op: PlannedOperation, done: Int, errno: Errno) {
        if op.split >= 0 {
            let index = op.descriptors.lowerBound
            switch splits.finish(op.split, pieceOffset: op.pieceOffset, bytes: op.bytes, done: done, errno: errno) {
            case .pending: break
            case .completed: batch.complete(index..<index + 1)
            case .failed(let e, let bytes): batch.fail(index, errno: e, bytesCompleted: bytes)
            }
        } else if done == op.bytes {
            batch.complete(op.descriptors)
        } else {
            batch.finishRun(op.descriptors, bytesDone: done, errno: errno)
        }
    }

    /// Finishes a short read/write synchronously; returns the bytes done and the error that stopped it.
    private func finishShort(_ op: PlannedOperation, done start: Int,
                             iovecs iov: UnsafeMutablePointer<iovec>) -> (Int, Errno) {
        let delay = ring.injectedShortFinishDelay.load(ordering: .relaxed)
        if delay > 0 { usleep(UInt32(delay / 1000)) }
        var done = start
        var index = 0
        var skip = done
        while index < op.iovecCount, skip >= iov[index].iov_len {
            skip -= iov[index].iov_len
            index += 1
        }
        while done < op.bytes, index < op.iovecCount {
            iov[index].iov_base = iov[index].iov_base.map { $0 + skip }
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
        if cancelInFlight, health.failure == nil, let sqe = ring.nextSQE() {
            cancelRequested.store(true, ordering: .releasing)
            ring.prepCancelAll(sqe, tag: Self.cancelTag)
            if let error = ring.submitAll() { health.markFailed(error) }
        }
        waitUntilIdle()
        exitRequested.store(true, ordering: .releasing)
        if health.failure == nil, let sqe = ring.nextSQE() {
            ring.prepNop(sqe, tag: Self.stopTag)
            _ = ring.submitAll()  // if this fails, the reaper's timed wait sees `exitRequested`
        }
        reaperExited.wait()
        // Nothing is in flight and nobody reaps: release the ring now, not with the last
        // reference to the channel (a fence the program keeps holds the backend).
        fixedLock.withLock { ring.close() }
    }
}
