import CUring
import Glibc

/// One ring operation planned from a run of descriptors.
struct PlannedOperation {
    /// How the kernel reaches the file side (or `.memory` for a CPU copy).
    var access: FileAccess
    /// The descriptors this operation carries, in order.
    var descriptors: Range<Int>
    /// iovecs written to the caller's array.
    var iovecCount: Int
    var bytes: Int
    /// Start only after everything before it (a `.fence` descriptor leads the run).
    var drain: Bool
}

/// Turns descriptors into ring operations: each run contiguous on the file side
/// (VRAM offsets that follow each other, same memfd, same direction; for D2D
/// whichever side continues the run) becomes one
/// vectored operation, at most `maxIovecs` iovecs and `maxBytes` bytes; memory
/// pieces that also follow each other merge into one iovec, so a run contiguous
/// on both sides is one large plain read/write.
///
/// This is what nouveau's copy engine does in hardware with one copy per page
/// and what makes 4 KiB-page batches approach memcpy bandwidth here: the cost of
/// a ring operation is paid per run, not per page. With `enabled == false` every
/// descriptor is its own operation (for comparison).
///
/// Threads: a value; used by the submitting thread only.
struct Coalescer {
    var enabled: Bool
    var maxIovecs: Int = Int(cu_iov_max())
    var maxBytes: Int = DMAChannel.maxDescriptorLength

    /// Plans the operation that starts at descriptor `start`, filling `iovecs`
    /// (room for `maxIovecs`). Never returns an empty operation.
    func plan(_ batch: CopyBatch, from start: Int, into iovecs: UnsafeMutablePointer<iovec>) -> PlannedOperation {
        let first = batch[start]
        var access = FileAccess(first)
        // D2D may go either way: follow the side on which the run continues.
        if enabled, start + 1 < batch.indices.upperBound, let other = FileAccess.alternative(first),
           !access.advanced(by: first.length).admits(batch[start + 1]),
           other.advanced(by: first.length).admits(batch[start + 1]) {
            access = other
        }
        var op = PlannedOperation(access: access, descriptors: start..<start + 1, iovecCount: 0,
                                  bytes: 0, drain: first.flags.contains(.fence))
        guard access != .memory else {
            op.bytes = first.length
            return op
        }
        _ = add(first, to: &op, iovecs)
        var next = start + 1
        while enabled, next < batch.indices.upperBound {
            let d = batch[next]
            guard !d.flags.contains(.fence), op.bytes + d.length <= maxBytes,
                  access.advanced(by: op.bytes).admits(d),
                  add(d, to: &op, iovecs) else { break }
            next += 1
        }
        op.descriptors = start..<next
        return op
    }

    /// Appends `d`'s memory pieces as iovecs; false (and `op` unchanged) if they do not fit.
    private func add(_ d: CopyDescriptor, to op: inout PlannedOperation,
                     _ iovecs: UnsafeMutablePointer<iovec>) -> Bool {
        switch d.operation {
        case .copy:
            let memory = op.access.isWrite ? d.source.pointer : d.destination.pointer
            if op.iovecCount > 0 {
                let last = iovecs[op.iovecCount - 1]
                if last.iov_base! + last.iov_len == memory {
                    iovecs[op.iovecCount - 1].iov_len += d.length
                    op.bytes += d.length
                    return true
                }
            }
            guard op.iovecCount < maxIovecs else { return false }
            iovecs[op.iovecCount] = iovec(iov_base: memory, iov_len: d.length)
            op.iovecCount += 1
        case .fill:
            let pieces = (d.length + FillPattern.chunk - 1) / FillPattern.chunk
            guard op.iovecCount + pieces <= maxIovecs else { return false }
            let pattern = UnsafeMutableRawPointer(mutating: FillPattern.buffer(for: d.fillValue))
            var left = d.length
            while left > 0 {
                let n = min(left, FillPattern.chunk)
                iovecs[op.iovecCount] = iovec(iov_base: pattern, iov_len: n)
                op.iovecCount += 1
                left -= n
            }
        }
        op.bytes += d.length
        return true
    }
}

extension FileAccess {
    var isWrite: Bool {
        if case .write = self { return true }
        return false
    }

    /// The same file, `bytes` further on: where the next descriptor of a run must start.
    func advanced(by bytes: Int) -> FileAccess {
        switch self {
        case .write(let fd, let off): return .write(fd: fd, offset: off + bytes)
        case .read(let fd, let off): return .read(fd: fd, offset: off + bytes)
        case .memory: return .memory
        }
    }
}
