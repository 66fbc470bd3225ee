import HostMM
public import SystemPackage

/// The errors a `MirrorDevice` command returns: exactly the errnos lib/test_hmm.c's
/// ioctls return (`-EINVAL`, `-EFAULT`, …), so a port of hmm-tests can compare them.
///
/// Bad input never traps: every command checks its arguments first and throws one of
/// these. Cases compare equal with `==`, whatever `.invalidArgument`'s reason (which is
/// for people): every `.invalidArgument(reason:)` equals `.invalidArgument`, and
/// `catch .invalidArgument` / `case .invalidArgument:` match whatever the reason.
public enum MirrorError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `EINVAL`: unaligned or overflowing range, `npages == 0`, a closed mirror, a range
    /// not covered by a readable VMA (migrations), an address space that is gone — with
    /// which check failed (the description prints it; the ioctl returns a bare `-EINVAL`).
    case invalidArgument(reason: String)
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

    /// `EINVAL` without a reason (equal to every `.invalidArgument(reason:)`).
    public static var invalidArgument: MirrorError { .invalidArgument(reason: "") }

    /// What was wrong, for an `.invalidArgument` that says; nil otherwise.
    public var reason: String? {
        if case .invalidArgument(let why) = self, !why.isEmpty { return why }
        return nil
    }

    public static func == (a: MirrorError, b: MirrorError) -> Bool {
        switch (a, b) {
        case (.invalidArgument, .invalidArgument), (.fault, .fault), (.permissionDenied, .permissionDenied),
             (.noEntry, .noEntry), (.busy, .busy), (.outOfMemory, .outOfMemory), (.notSupported, .notSupported):
            return true
        default: return false
        }
    }

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
    /// of a failed fault become `EFAULT`. An `EINVAL` keeps the memory manager's reason.
    init(_ e: HostMMError) {
        switch e {
        case .invalidArgument(let why): self = .invalidArgument(reason: why)
        case .mmapLockNotHeld, .protocolViolation: self = .invalidArgument(reason: e.description)
        case .busy: self = .busy
        case .fault, .segmentationFault, .busError: self = .fault
        case .permissionDenied: self = .permissionDenied
        case .outOfMemory: self = .outOfMemory
        case .notSupported: self = .notSupported
        }
    }

    /// The errno in words and number (`Invalid argument (22)`), then the reason if any.
    public var description: String {
        let name = "\(errno) (\(errno.rawValue))"
        guard let reason else { return name }
        return "\(name): \(reason)"
    }
}
