/// Errors of the memory-manager model, named after the errno or signal the kernel
/// would produce.
///
/// Bad input never traps or corrupts state: it throws one of these. Cases without
/// a payload compare equal with `==`, so tests and drivers can switch on them.
public enum HostMMError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `EINVAL`: an argument is malformed (unaligned, empty, outside the VMA, wrong kind).
    case invalidArgument
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
        case .invalidArgument: return "invalid argument (EINVAL)"
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
