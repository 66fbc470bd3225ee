import HostMM
public import SystemPackage

/// The errors a `MirrorDevice` command returns: exactly the errnos lib/test_hmm.c's
/// ioctls return (`-EINVAL`, `-EFAULT`, …), so a port of hmm-tests can compare them.
///
/// Bad input never traps: every command checks its arguments first and throws one of
/// these. Cases compare equal with `==`.
public enum MirrorError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `EINVAL`: unaligned or overflowing range, `npages == 0`, a closed mirror, a range
    /// not covered by a readable VMA (migrations), an address space that is gone.
    case invalidArgument
    /// `EFAULT`: no readable mapping (`PROT_NONE`, a hole) for read/write/exclusive, or a
    /// user buffer shorter than `npages` pages.
    case fault
    /// `EPERM`: a write fault into a VMA without write permission; for `checkExclusive`,
    /// "a page is still mapped for atomics".
    case permissionDenied
    /// `ENOENT`: a page of the range is not in the mirror after a migration or exclusive
    /// request (shared memory, another device's page, an allocation failure).
    case noEntry
    /// `EBUSY`: the fault or snapshot loop kept being invalidated past its timeout, or an
    /// entry kept changing.
    case busy
    /// `ENOMEM`: no system page for a migration back, or a bounce buffer too large.
    case outOfMemory
    /// `EOPNOTSUPP`: exclusive access to a page that is not anonymous memory.
    case notSupported

    /// The errno the kernel's ioctl returns (negated by the ioctl, positive here).
    public var errno: Errno {
        switch self {
        case .invalidArgument: return .invalidArgument
        case .fault: return .badAddress
        case .permissionDenied: return .notPermitted
        case .noEntry: return .noSuchFileOrDirectory
        case .busy: return .resourceBusy
        case .outOfMemory: return .noMemory
        case .notSupported: return .notSupported
        }
    }

    /// Translates a memory-manager error the way the kernel's call chain does: signals
    /// of a failed fault become `EFAULT`.
    init(_ e: HostMMError) {
        switch e {
        case .invalidArgument, .mmapLockNotHeld, .protocolViolation: self = .invalidArgument
        case .busy: self = .busy
        case .fault, .segmentationFault, .busError: self = .fault
        case .permissionDenied: self = .permissionDenied
        case .outOfMemory: self = .outOfMemory
        case .notSupported: self = .notSupported
        }
    }

    public var description: String { "\(errno) (\(errno.rawValue))" }
}
