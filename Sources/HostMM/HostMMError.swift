/// Errors of the memory-manager model, named after the errno or signal the kernel
/// would produce.
///
/// Bad input never traps or corrupts state: it throws one of these. `==` compares the
/// kind and the payload, except `.invalidArgument`'s reason, which is for people: every
/// `.invalidArgument(reason:)` equals `.invalidArgument`, and `catch .invalidArgument` /
/// `case .invalidArgument:` match whatever the reason, so tests and drivers can switch on them.
public enum HostMMError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `EINVAL`: an argument is malformed (unaligned, empty, outside the VMA, wrong kind),
    /// with which check failed (the description prints it). The kernel returns a bare
    /// `EINVAL`; the reason is this model's addition for the driver author.
    case invalidArgument(reason: String)
    /// `EBUSY`: the object is in use, or an MMU notifier invalidated the range (retry).
    case busy
    /// `EFAULT`: the address range is not (or cannot be made) accessible.
    case fault
    /// `EPERM`: a write was asked of a mapping that does not allow it (`hmm_range_fault`).
    case permissionDenied
    /// `ENOMEM`: no free frame, no address-space room, or range not mapped (`mprotect`).
    case outOfMemory
    /// `EOPNOTSUPP`: a feature this model refuses (huge pages: hugetlb, THP, DAX faults).
    case notSupported
    /// The mmap lock must be held (in read or write mode) by the caller of this API;
    /// the kernel would report this through lockdep.
    case mmapLockNotHeld
    /// `SIGSEGV`: no VMA covers `address`, or the VMA forbids the access.
    case segmentationFault(address: UInt64, reason: SegvReason)
    /// `SIGBUS`: the fault handler (e.g. a driver's `migrateToRAM`) returned `VM_FAULT_SIGBUS`.
    case busError(address: UInt64)
    /// Checked mode (with `CheckedMode.throwsViolations`): the call broke a protocol rule
    /// and changed nothing. The kernel has no errno for it (it would corrupt or leak).
    case protocolViolation(ProtocolViolation)

    /// `EINVAL` without a reason (equal to every `.invalidArgument(reason:)`).
    public static var invalidArgument: HostMMError { .invalidArgument(reason: "") }

    /// What was wrong, for an `.invalidArgument` that says; nil otherwise.
    public var reason: String? {
        if case .invalidArgument(let why) = self, !why.isEmpty { return why }
        return nil
    }

    public static func == (a: HostMMError, b: HostMMError) -> Bool {
        switch (a, b) {
        case (.invalidArgument, .invalidArgument), (.busy, .busy), (.fault, .fault),
             (.permissionDenied, .permissionDenied), (.outOfMemory, .outOfMemory),
             (.notSupported, .notSupported), (.mmapLockNotHeld, .mmapLockNotHeld):
            return true
        case (.segmentationFault(let x, let r), .segmentationFault(let y, let s)): return x == y && r == s
        case (.busError(let x), .busError(let y)): return x == y
        case (.protocolViolation(let x), .protocolViolation(let y)): return x == y
        default: return false
        }
    }

    /// Why a `SIGSEGV` was raised (`SEGV_MAPERR` versus `SEGV_ACCERR`).
    public enum SegvReason: Sendable, Equatable {
        /// `SEGV_MAPERR`: no mapping at the address.
        case notMapped
        /// `SEGV_ACCERR`: the mapping's protection forbids the access.
        case accessDenied
    }

    /// The errno or signal, in words, with addresses in hex.
    public var description: String {
        switch self {
        case .invalidArgument(let why): return why.isEmpty ? "invalid argument (EINVAL)" : "invalid argument (EINVAL): \(why)"
        case .busy: return "busy (EBUSY)"
        case .fault: return "bad address (EFAULT)"
        case .permissionDenied: return "operation not permitted (EPERM)"
        case .outOfMemory: return "out of memory (ENOMEM)"
        case .notSupported: return "not supported (EOPNOTSUPP)"
        case .mmapLockNotHeld: return "the caller does not hold the mmap lock"
        case .segmentationFault(let a, .notMapped): return "SIGSEGV (SEGV_MAPERR) at 0x\(String(a, radix: 16)): no mapping"
        case .segmentationFault(let a, .accessDenied):
            return "SIGSEGV (SEGV_ACCERR) at 0x\(String(a, radix: 16)): the mapping forbids the access"
        case .busError(let a): return "SIGBUS at 0x\(String(a, radix: 16)): the fault handler returned VM_FAULT_SIGBUS"
        case .protocolViolation(let v): return v.description
        }
    }
}

extension UInt64 {
    /// `0x…` in lower-case hex, for the reasons of `.invalidArgument` (built on the error path only).
    var hex: String { "0x" + String(self, radix: 16) }
}
