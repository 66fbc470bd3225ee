public import SystemPackage
import Synchronization

/// Whether a channel's backend can still take work.
///
/// A backend whose queue fails in a way it cannot retry (an `io_uring_enter` error
/// other than EINTR/EAGAIN/EBUSY) records the errno here once; the channel then
/// refuses new work with `DMAError.channelFailed` instead of handing it to a
/// queue that cannot run it. Work already accepted still reaches its fences:
/// descriptors the kernel never took fail with that errno, the rest finish as
/// the kernel completes them. A failed channel stays failed: make a new one.
///
/// Threads: any; one atomic word.
public final class ChannelHealth: Sendable {
    private let failedWith = Synchronization.Atomic<Int32>(0)

    public init() {}

    /// Why the channel can no longer take work, or nil while it is healthy.
    public var failure: Errno? {
        let raw = failedWith.load(ordering: .acquiring)
        return raw == 0 ? nil : Errno(rawValue: raw)
    }

    /// Records the failure (the first one wins; a zero errno is recorded as EIO).
    public func markFailed(_ errno: Errno) {
        let raw = errno.rawValue == 0 ? Errno.ioError.rawValue : errno.rawValue
        _ = failedWith.compareExchange(expected: 0, desired: raw, ordering: .acquiringAndReleasing)
    }
}
