import CUring
import Glibc
import SystemPackage
import Synchronization

/// The one place DMAEngine calls liburing: a ring and the few operations the engine needs.
///
/// Threads: the submission side (`nextSQE`, `prep…`, `submit`) must be used by
/// one thread at a time; the completion side (`waitCQE`, `peekCQE`, `seen`) by
/// one (other) thread at a time. Both sides may run concurrently.
final class IOURing: @unchecked Sendable {
    let ring: UnsafeMutablePointer<io_uring>

    /// Models `io_uring_queue_init()`; the error explains the usual causes and the fallback.
    init(entries: Int) throws(DMAError) {
        // Set up in a local first: once `ring` is stored, a throw would run deinit.
        let r = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        r.initialize(to: io_uring())
        let rc = io_uring_queue_init(UInt32(entries), r, 0)
        guard rc == 0 else {
            r.deallocate()
            throw Self.setupError(Errno(rawValue: -rc), entries: entries)
        }
        ring = r
        var vectoredFixed = false
        if let probe = io_uring_get_probe_ring(r) {
            vectoredFixed = io_uring_opcode_supported(probe, Int32(cu_op_readv_fixed())) != 0
                && io_uring_opcode_supported(probe, Int32(cu_op_writev_fixed())) != 0
            io_uring_free_probe(probe)
        }
        supportsVectoredFixed = vectoredFixed
    }

    /// Whether the kernel has `IORING_OP_READV_FIXED`/`WRITEV_FIXED` (Linux 6.15).
    let supportsVectoredFixed: Bool

    /// Set by `close()`; read by the submission side only (which `close()` must not race).
    private(set) var isClosed = false

    /// Models `io_uring_queue_exit()`: unmaps the rings and closes the ring's file (the
    /// kernel cancels what is left and stops its io-wq workers). Call once neither side
    /// uses the ring any more; later calls do nothing.
    func close() {
        guard !isClosed else { return }
        isClosed = true
        io_uring_queue_exit(ring)
    }

    deinit {
        close()
        ring.deallocate()
    }

    static func setupError(_ e: Errno, entries: Int) -> DMAError {
        let why: String
        switch e {
        case .notPermitted:
            why = "io_uring is disabled for this process (sysctl kernel.io_uring_disabled, or a container/seccomp policy)"
        case .noFunction:
            why = "the kernel has no io_uring (older than 5.1, or built without CONFIG_IO_URING), or seccomp blocks io_uring_setup"
        case .noMemory:
            why = "not enough locked memory for a ring of \(entries) entries (RLIMIT_MEMLOCK; try `ulimit -l unlimited` or a smaller --queue-depth)"
        case .invalidArgument:
            why = "the kernel rejected a ring of \(entries) entries"
        default:
            why = "io_uring_queue_init returned \(e)"
        }
        return .ringSetupFailed(e, reason: why + ". Run with `--backend memcpy` (CopyBackendKind.memcpy) to copy without io_uring.")
    }

    // MARK: Submission side

    @inline(__always)
    func nextSQE() -> UnsafeMutablePointer<io_uring_sqe>? { io_uring_get_sqe(ring) }

    /// `pwritev`/`pwrite` of `count` iovecs to `fd` at `offset`; with `async`, always on an io-wq worker.
    /// With `fixed` ≥ 0 the iovecs lie in that fixed buffer (`WRITE_FIXED`, or `WRITEV_FIXED`
    /// when `supportsVectoredFixed`; the caller checks).
    @inline(__always)
    func prepWrite(_ sqe: UnsafeMutablePointer<io_uring_sqe>, fd: Int32, iovecs: UnsafePointer<iovec>,
                   count: Int, offset: Int, tag: UInt64, drain: Bool, async: Bool, fixed: Int = -1) {
        let count = issued(count)
        switch (count == 1, fixed >= 0) {
        case (true, false):
            io_uring_prep_write(sqe, fd, iovecs[0].iov_base, UInt32(iovecs[0].iov_len), UInt64(offset))
        case (false, false):
            io_uring_prep_writev(sqe, fd, iovecs, UInt32(count), UInt64(offset))
        case (true, true):
            io_uring_prep_write_fixed(sqe, fd, iovecs[0].iov_base, UInt32(iovecs[0].iov_len), UInt64(offset), Int32(fixed))
        case (false, true):
            cu_prep_rw_fixed(sqe, cu_op_writev_fixed(), fd, iovecs, UInt32(count), UInt64(offset), UInt16(fixed))
        }
        finish(sqe, tag: tag, drain: drain, async: async)
    }

    /// `preadv`/`pread` of `count` iovecs from `fd` at `offset`; with `async`, always on an io-wq worker.
    /// With `fixed` ≥ 0 the iovecs lie in that fixed buffer (`READ_FIXED` / `READV_FIXED`).
    @inline(__always)
    func prepRead(_ sqe: UnsafeMutablePointer<io_uring_sqe>, fd: Int32, iovecs: UnsafePointer<iovec>,
                  count: Int, offset: Int, tag: UInt64, drain: Bool, async: Bool, fixed: Int = -1) {
        let count = issued(count)
        switch (count == 1, fixed >= 0) {
        case (true, false):
            io_uring_prep_read(sqe, fd, iovecs[0].iov_base, UInt32(iovecs[0].iov_len), UInt64(offset))
        case (false, false):
            io_uring_prep_readv(sqe, fd, iovecs, UInt32(count), UInt64(offset))
        case (true, true):
            io_uring_prep_read_fixed(sqe, fd, iovecs[0].iov_base, UInt32(iovecs[0].iov_len), UInt64(offset), Int32(fixed))
        case (false, true):
            cu_prep_rw_fixed(sqe, cu_op_readv_fixed(), fd, iovecs, UInt32(count), UInt64(offset), UInt16(fixed))
        }
        finish(sqe, tag: tag, drain: drain, async: async)
    }

    // MARK: Fixed buffers

    /// Registers an empty fixed-buffer table of `count` slots (`io_uring_register_buffers_sparse`,
    /// Linux 5.19); the kernel's errno if it refuses.
    func registerSparseBuffers(count: Int) -> Errno? {
        let rc = io_uring_register_buffers_sparse(ring, UInt32(count))
        return rc < 0 ? Errno(rawValue: -rc) : nil
    }

    /// Installs `buffer` at `slot` (the kernel pins its pages), or clears the slot for an
    /// empty iovec (`io_uring_register_buffers_update_tag`); the kernel's errno if it refuses.
    func updateBuffer(slot: Int, _ buffer: iovec) -> Errno? {
        var v = buffer
        var tag: UInt64 = 0
        let rc = io_uring_register_buffers_update_tag(ring, UInt32(slot), &v, &tag, 1)
        return rc < 0 ? Errno(rawValue: -rc) : nil
    }

    func prepNop(_ sqe: UnsafeMutablePointer<io_uring_sqe>, tag: UInt64) {
        io_uring_prep_nop(sqe)
        io_uring_sqe_set_data64(sqe, tag)
    }

    /// Cancels every request in flight on the ring (`IORING_ASYNC_CANCEL_ANY`).
    func prepCancelAll(_ sqe: UnsafeMutablePointer<io_uring_sqe>, tag: UInt64) {
        io_uring_prep_cancel64(sqe, 0, Int32(IORING_ASYNC_CANCEL_ANY))
        io_uring_sqe_set_data64(sqe, tag)
    }

    @inline(__always)
    private func finish(_ sqe: UnsafeMutablePointer<io_uring_sqe>, tag: UInt64, drain: Bool, async: Bool) {
        io_uring_sqe_set_data64(sqe, tag)
        var flags: UInt32 = 0
        if drain { flags |= UInt32(1 << IOSQE_IO_DRAIN_BIT) }
        if async { flags |= UInt32(1 << IOSQE_ASYNC_BIT) }
        if flags != 0 { io_uring_sqe_set_flags(sqe, flags) }
    }

    /// Hands every prepared SQE to the kernel. Models the doorbell (`io_uring_enter`).
    ///
    /// EINTR is retried at once; EAGAIN and EBUSY (the kernel short of request
    /// memory, or completions backed up) are retried with short sleeps for up to
    /// about two seconds. Any other failure, or one that persists, is returned:
    /// the SQEs the kernel did not take stay in the SQ (`unsubmittedCount`).
    func submitAll() -> Errno? {
        var transient = 0
        while io_uring_sq_ready(ring) > 0 {
            let injected = injectedSubmitFailure.exchange(0, ordering: .relaxed)
            let rc = injected != 0 ? -injected : io_uring_submit(ring)
            if rc >= 0 || rc == -EINTR { continue }
            if (rc == -EAGAIN || rc == -EBUSY) && transient < 2000 {
                transient += 1
                usleep(1000)
                continue
            }
            return Errno(rawValue: -rc)
        }
        return nil
    }

    /// Prepared SQEs the kernel has not taken yet (the last ones prepared).
    var unsubmittedCount: Int { Int(io_uring_sq_ready(ring)) }

    // MARK: Completion side

    enum Wait {
        case completion(tag: UInt64, result: Int32)
        case timedOut
        case failed(Errno)
    }

    /// Blocks for the next completion, at most `timeout` when the kernel supports a
    /// timed wait without an SQE (`IORING_FEAT_EXT_ARG`, 5.11+; otherwise untimed,
    /// so that this side never touches the SQ).
    func waitCQE(timeoutNanoseconds: Int) -> Wait {
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        while true {
            let injected = injectedWaitFailure.exchange(0, ordering: .relaxed)
            if injected != 0 { return .failed(Errno(rawValue: injected)) }
            var rc: Int32
            if ring.pointee.features & UInt32(IORING_FEAT_EXT_ARG) != 0 {
                var ts = __kernel_timespec(tv_sec: Int64(timeoutNanoseconds / 1_000_000_000),
                                           tv_nsec: Int64(timeoutNanoseconds % 1_000_000_000))
                rc = io_uring_wait_cqe_timeout(ring, &cqe, &ts)
            } else {
                rc = io_uring_wait_cqe(ring, &cqe)
            }
            if rc == 0, let c = cqe {
                let out = Wait.completion(tag: c.pointee.user_data, result: c.pointee.res)
                io_uring_cqe_seen(ring, c)
                return out
            }
            if rc == -ETIME { return .timedOut }
            if rc != -EINTR && rc != -EAGAIN { return .failed(Errno(rawValue: -rc)) }
        }
    }

    /// The next completion if one is ready.
    func peekCQE() -> (tag: UInt64, result: Int32)? {
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        guard io_uring_peek_cqe(ring, &cqe) == 0, let c = cqe else { return nil }
        let out = (c.pointee.user_data, c.pointee.res)
        io_uring_cqe_seen(ring, c)
        return out
    }

    // MARK: Test hooks

    /// The next `submitAll` fails with this errno (0: none). Tests only.
    let injectedSubmitFailure = Synchronization.Atomic<Int32>(0)
    /// The next operation's completion reports this result instead of the kernel's (0: none;
    /// e.g. `-EINTR`). Read by `IOURingBackend`'s reaper. Tests only.
    let injectedCompletionResult = Synchronization.Atomic<Int32>(0)
    /// The next `waitCQE` fails with this errno (0: none). Tests only.
    let injectedWaitFailure = Synchronization.Atomic<Int32>(0)
    /// The next vectored read or write goes to the kernel without its last iovec, so it
    /// completes short for real and the reaper finishes the rest. Tests only.
    let injectedShortOperation = Synchronization.Atomic<Bool>(false)
    /// The reaper sleeps this long (ns) before it finishes a short operation. Tests only.
    let injectedShortFinishDelay = Synchronization.Atomic<Int>(0)

    /// `count`, less one when a test asked for a short operation (`injectedShortOperation`).
    @inline(__always)
    private func issued(_ count: Int) -> Int {
        guard count > 1, injectedShortOperation.load(ordering: .relaxed) else { return count }
        return injectedShortOperation.exchange(false, ordering: .relaxed) ? count - 1 : count
    }
}
