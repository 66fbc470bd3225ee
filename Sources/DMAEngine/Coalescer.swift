import CUring
import Glibc

/// One ring operation planned from a run of descriptors, or from a piece of one.
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
    /// Run on an io-wq worker (`IOSQE_ASYNC`): reads, and writes into striped pools.
    var async: Bool = false
    /// For a piece of a descriptor that crosses a stripe unit: its `SplitTable` entry, else -1.
    var split: Int = -1
    /// For a piece: where it starts in its descriptor.
    var pieceOffset: Int = 0

    static let empty = PlannedOperation(access: .memory, descriptors: 0..<0, iovecCount: 0, bytes: 0, drain: false)
}

/// Turns descriptors into ring operations: each run contiguous on the file side
/// (file offsets that follow each other in one memfd, same direction; for D2D
/// whichever side continues the run) becomes one vectored operation, at most
/// `maxIovecs` iovecs and `maxBytes` bytes; memory pieces that also follow each
/// other merge into one iovec, so a run contiguous on both sides is one large
/// plain read/write. Runs end at a stripe boundary of a striped pool (the next
/// bytes are in another memfd); a single descriptor that crosses one is cut into
/// pieces by `planPiece`.
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
    /// (room for `maxIovecs`). Never returns an empty operation. Descriptor
    /// `start` must fit in one file on the chosen side (`FileAccess.best(_:).fits`);
    /// otherwise plan it with `planPiece`.
    func plan(_ batch: CopyBatch, from start: Int, into iovecs: UnsafeMutablePointer<iovec>) -> PlannedOperation {
        let first = batch[start]
        var access = FileAccess.best(first)
        // D2D may go either way: follow the side on which the run continues.
        if enabled, start + 1 < batch.indices.upperBound, let other = FileAccess.alternative(first), other != access,
           other.fits(first), !access.advanced(by: first.length).admits(batch[start + 1]),
           other.advanced(by: first.length).admits(batch[start + 1]) {
            access = other
        }
        var op = PlannedOperation(access: access, descriptors: start..<start + 1, iovecCount: 0,
                                  bytes: 0, drain: first.flags.contains(.fence))
        guard access != .memory else {
            op.bytes = first.length
            return op
        }
        op.async = !access.isWrite || first.destination.isStriped
        guard add(first, to: &op, iovecs) else {
            op.access = .memory  // no fill pattern buffer: the CPU fills it through the mapping
            op.bytes = first.length
            return op
        }
        var next = start + 1
        while enabled, next < batch.indices.upperBound {
            let d = batch[next]
            guard !d.flags.contains(.fence), op.bytes + d.length <= maxBytes,
                  access.advanced(by: op.bytes).admits(d), access.fits(d),
                  add(d, to: &op, iovecs) else { break }
            next += 1
        }
        op.descriptors = start..<next
        return op
    }

    /// Plans the piece of descriptor `index` that starts `pieceOffset` bytes in and
    /// runs to the end of that stripe unit (or of the descriptor), through `access`.
    func planPiece(_ batch: CopyBatch, _ index: Int, access base: FileAccess, at pieceOffset: Int,
                   into iovecs: UnsafeMutablePointer<iovec>) -> PlannedOperation {
        let d = batch[index]
        let (file, memory) = base.sides(d)
        let place = file.locate(pieceOffset)
        let bytes = min(d.length - pieceOffset, place.extent)
        let access: FileAccess = base.isWrite ? .write(fd: place.fd, offset: place.offset) : .read(fd: place.fd, offset: place.offset)
        var op = PlannedOperation(access: access, descriptors: index..<index + 1, iovecCount: 0, bytes: bytes,
                                  drain: pieceOffset == 0 && d.flags.contains(.fence),
                                  async: !base.isWrite || file.isStriped, pieceOffset: pieceOffset)
        if d.operation == .copy {
            iovecs[0] = iovec(iov_base: memory.pointer + pieceOffset, iov_len: bytes)
            op.iovecCount = 1
        } else if !addPattern(d.fillValue, bytes: bytes, to: &op, iovecs) {
            op.access = .memory
        }
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
                if last.iov_base.map({ $0 + last.iov_len }) == memory {
                    iovecs[op.iovecCount - 1].iov_len += d.length
                    op.bytes += d.length
                    return true
                }
            }
            guard op.iovecCount < maxIovecs else { return false }
            iovecs[op.iovecCount] = iovec(iov_base: memory, iov_len: d.length)
            op.iovecCount += 1
        case .fill:
            guard addPattern(d.fillValue, bytes: d.length, to: &op, iovecs) else { return false }
        }
        op.bytes += d.length
        return true
    }

    /// Appends iovecs of the fill pattern for `value` covering `bytes`; false if they do
    /// not fit or the pattern buffer could not be made.
    private func addPattern(_ value: UInt8, bytes: Int, to op: inout PlannedOperation,
                            _ iovecs: UnsafeMutablePointer<iovec>) -> Bool {
        let pieces = (bytes + FillPattern.chunk - 1) / FillPattern.chunk
        guard op.iovecCount + pieces <= maxIovecs, let buffer = FillPattern.buffer(for: value) else { return false }
        let pattern = UnsafeMutableRawPointer(mutating: buffer)
        var left = bytes
        while left > 0 {
            let n = min(left, FillPattern.chunk)
            iovecs[op.iovecCount] = iovec(iov_base: pattern, iov_len: n)
            op.iovecCount += 1
            left -= n
        }
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
