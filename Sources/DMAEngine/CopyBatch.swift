public import SystemPackage

/// The descriptors of one `submit()`, or a slice of them, handed to a `CopyBackend`.
///
/// A backend reports every descriptor exactly once, through `complete(_:)` or
/// `fail(_:errno:bytesCompleted:)`, from any thread, during `execute` or later.
/// After its last report it must not touch the descriptors or their memory:
/// the fence may signal and the caller may unregister and free the memory.
/// Indices are absolute positions in the submitted batch (enqueue order).
///
/// Threads: a value type of unsafe pointers; safe to send to any thread.
@frozen
public struct CopyBatch: @unchecked Sendable {
    @usableFromInline let fence: Unmanaged<Fence>
    @usableFromInline let base: UnsafePointer<CopyDescriptor>
    /// The descriptors of this (slice of a) batch.
    public let indices: Range<Int>

    init(fence: Fence, base: UnsafePointer<CopyDescriptor>, indices: Range<Int>) {
        self.fence = Unmanaged.passUnretained(fence)
        self.base = base
        self.indices = indices
    }

    private init(fence: Unmanaged<Fence>, base: UnsafePointer<CopyDescriptor>, indices: Range<Int>) {
        self.fence = fence
        self.base = base
        self.indices = indices
    }

    @inlinable
    public subscript(_ index: Int) -> CopyDescriptor {
        base[index]
    }

    /// A sub-range of this batch, e.g. to hand part of it to a wrapped backend
    /// (clamped to `indices`: a slice never reaches outside its batch).
    public func slice(_ range: Range<Int>) -> CopyBatch {
        CopyBatch(fence: fence, base: base, indices: range.clamped(to: indices))
    }

    /// Delays the batch's fence past its descriptors' completion until `releaseHold()`
    /// (for wrappers that model time, like the link model). Call before handing the
    /// batch's descriptors on, so that at least one of them is still unreported.
    func hold() { fence.takeUnretainedValue().addHold() }

    /// Ends one `hold()`.
    func releaseHold() { fence.takeUnretainedValue().descriptorsFinished(1) }

    /// Reports `range` as copied in full.
    public func complete(_ range: Range<Int>) {
        guard !range.isEmpty else { return }
        fence.takeUnretainedValue().descriptorsFinished(range.count)
    }

    /// Reports descriptor `index` as failed after `bytesCompleted` bytes.
    public func fail(_ index: Int, errno: Errno, bytesCompleted: Int) {
        let f = fence.takeUnretainedValue()
        f.recordFailure(index: index, errno: errno, bytesCompleted: bytesCompleted)
        f.descriptorsFinished(1)
    }

    /// Reports `range` as one run where the first `bytesDone` bytes (in descriptor
    /// order) were copied and the rest failed with `errno`: whole descriptors before
    /// the failure point complete, the straddling one fails with its prefix, the
    /// rest fail with 0 bytes. Used for short and failed vectored operations.
    public func finishRun(_ range: Range<Int>, bytesDone: Int, errno: Errno) {
        var done = bytesDone
        var firstFailed = range.upperBound
        for i in range {
            let len = base[i].length
            if done >= len {
                done -= len
            } else {
                firstFailed = i
                break
            }
        }
        complete(range.lowerBound..<firstFailed)
        for i in firstFailed..<range.upperBound {
            fail(i, errno: errno, bytesCompleted: i == firstFailed ? done : 0)
        }
    }
}
