public import SystemPackage

/// Every error the copy engine reports, with the errno a kernel driver would return.
///
/// Bad input never traps: validation throws one of these before any state changes.
/// Per-descriptor copy failures do not throw at enqueue time; they are recorded
/// on the batch's `Fence` (like `dma_fence_set_error()`), and `Fence.wait()`
/// rethrows them as `.copyFailed`.
public enum DMAError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The region id was never registered, or was unregistered (ENOENT).
    case unknownRegion(RegionID)
    /// `offset + length` leaves the region, or overflows (EFAULT).
    case outOfRange(DMAAddress, length: Int, regionLength: Int)
    /// A descriptor of zero bytes (EINVAL).
    case zeroLength
    /// Source and destination overlap inside one region (EINVAL); copies are memcpy-like, not memmove.
    case overlappingRange(source: DMAAddress, destination: DMAAddress, length: Int)
    /// The channel's pending batch is full: submit first, or size bursts with `DMAChannel.capacity` (ENOSPC).
    case batchFull(capacity: Int)
    /// A malformed argument, with the reason (EINVAL).
    case invalidArgument(String)
    /// The region or engine is in use (EBUSY), e.g. unregistering a region that pending descriptors name.
    case busy(String)
    /// A bounded wait expired (ETIMEDOUT).
    case timedOut
    /// The engine or channel was shut down (ESHUTDOWN).
    case shutDown
    /// The channel's queue failed with this errno and takes no more work (see `ChannelHealth`); make a new channel.
    case channelFailed(channel: Int, Errno)
    /// io_uring could not be set up; `reason` says why and names the `memcpy` fallback.
    case ringSetupFailed(Errno, reason: String)
    /// A system call failed while setting something up (mmap, memfd_create, …).
    case system(Errno, operation: String)
    /// One or more descriptors of a fence failed (EIO); the list names each one.
    case copyFailed([DescriptorFailure])

    /// The errno a kernel driver would return for this error.
    public var errno: Errno {
        switch self {
        case .unknownRegion: return .noSuchFileOrDirectory
        case .outOfRange: return .badAddress
        case .zeroLength, .overlappingRange, .invalidArgument: return .invalidArgument
        case .batchFull: return .noSpace
        case .busy: return .resourceBusy
        case .timedOut: return .timedOut
        case .shutDown: return .socketShutdown
        case .ringSetupFailed(let e, _), .system(let e, _), .channelFailed(_, let e): return e
        case .copyFailed: return .ioError
        }
    }

    public var description: String {
        switch self {
        case .unknownRegion(let id): return "unknown DMA region \(id)"
        case .outOfRange(let a, let len, let regionLength):
            return "address \(a) + \(len) bytes is outside its region of \(regionLength) bytes"
        case .zeroLength: return "descriptor of zero bytes"
        case .overlappingRange(let s, let d, let len):
            return "source \(s) and destination \(d) overlap over \(len) bytes in one region"
        case .batchFull(let c): return "batch full (\(c) descriptors); submit() before enqueueing more"
        case .invalidArgument(let why): return "invalid argument: \(why)"
        case .busy(let why): return "busy: \(why)"
        case .timedOut:
            return "timed out (ETIMEDOUT): the copies waited for are still in flight and go on; "
                + "wait again, or shutdown(cancelInFlight: true) to cancel them"
        case .shutDown: return "the DMA engine is shut down"
        case .channelFailed(let id, let e):
            return "channel \(id) failed (\(e)): its queue takes no more work; make a new channel"
        case .ringSetupFailed(let e, let why): return "io_uring setup failed (\(e)): \(why)"
        case .system(let e, let op): return "\(op) failed: \(e)"
        case .copyFailed(let failures):
            let first = failures.first.map { ", first: \($0)" } ?? ""
            return "\(failures.count) descriptor(s) failed\(first)"
        }
    }
}

/// One failed descriptor of a submitted batch, as recorded on its `Fence`.
public struct DescriptorFailure: Equatable, Sendable, CustomStringConvertible {
    /// The ticket `enqueue…` returned for the descriptor.
    public var ticket: DMATicket
    /// The descriptor's position in its batch (0-based, enqueue order).
    public var index: Int
    /// Why it failed.
    public var errno: Errno
    /// Bytes known to have been copied before the failure (a short copy reports its prefix).
    public var bytesCompleted: Int

    public init(ticket: DMATicket, index: Int, errno: Errno, bytesCompleted: Int) {
        self.ticket = ticket
        self.index = index
        self.errno = errno
        self.bytesCompleted = bytesCompleted
    }

    public var description: String {
        "descriptor #\(index) (ticket \(ticket.rawValue)): \(errno), \(bytesCompleted) bytes done"
    }
}
