public import DMAEngine
public import HostMM
public import SystemPackage

/// Errors of the device model, named after the errno a GPU driver would return.
///
/// Bad input never traps or corrupts state: it throws one of these before anything
/// changes. `==` compares the kind and the payload, except `.invalidArgument`'s reason,
/// which is for people: every `.invalidArgument(reason:)` equals `.invalidArgument`, and
/// `catch .invalidArgument` / `case .invalidArgument:` match whatever the reason.
public enum DeviceError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `EINVAL`: a malformed argument (unaligned or empty range, bad configuration, a
    /// batch larger than the copy channel accepts, an invalid policy), with what was
    /// wrong (the description prints it). Binding an address space twice is not an
    /// error: `Device.bind` returns the existing view.
    case invalidArgument(reason: String)
    /// `EBUSY`: device pages are still in use (teardown could not evict them all).
    case busy
    /// `EAGAIN`-like: the device is suspended; `resume()` it first.
    case suspended
    /// `ESHUTDOWN`: the device was torn down, or (for a GPU access) its address-space view was unbound.
    case shutDown
    /// `EFAULT`: a GPU access to an address with no (readable) mapping.
    case fault(address: UInt64)
    /// `EPERM`: a GPU write to a mapping that does not allow writes.
    case permissionDenied(address: UInt64)
    /// The memory-manager model refused an operation.
    case hostMM(HostMMError)
    /// The copy engine refused an operation or a copy failed.
    case dma(DMAError)

    /// `EINVAL` without a reason (equal to every `.invalidArgument(reason:)`).
    public static var invalidArgument: DeviceError { .invalidArgument(reason: "") }

    /// What was wrong, for an `.invalidArgument` that says; nil otherwise.
    public var reason: String? {
        if case .invalidArgument(let why) = self, !why.isEmpty { return why }
        return nil
    }

    public static func == (a: DeviceError, b: DeviceError) -> Bool {
        switch (a, b) {
        case (.invalidArgument, .invalidArgument), (.busy, .busy), (.suspended, .suspended), (.shutDown, .shutDown):
            return true
        case (.fault(let x), .fault(let y)), (.permissionDenied(let x), .permissionDenied(let y)): return x == y
        case (.hostMM(let x), .hostMM(let y)): return x == y
        case (.dma(let x), .dma(let y)): return x == y
        default: return false
        }
    }

    /// The errno a kernel driver would return for this error.
    public var errno: Errno {
        switch self {
        case .invalidArgument: return .invalidArgument
        case .busy: return .resourceBusy
        case .suspended: return .resourceTemporarilyUnavailable
        case .shutDown: return .socketShutdown
        case .fault: return .badAddress
        case .permissionDenied: return .notPermitted
        case .hostMM(let e): return e.errno
        case .dma(let e): return e.errno
        }
    }

    public var description: String {
        switch self {
        case .invalidArgument(let why): return why.isEmpty ? "invalid argument" : "invalid argument: \(why)"
        case .busy: return "device pages still in use"
        case .suspended: return "device is suspended"
        case .shutDown: return "device was torn down, or the GPU address space was unbound"
        case .fault(let a): return "GPU fault at 0x\(String(a, radix: 16)): no readable mapping"
        case .permissionDenied(let a): return "GPU write to read-only mapping at 0x\(String(a, radix: 16))"
        case .hostMM(let e): return "memory manager: \(e)"
        case .dma(let e): return "copy engine: \(e)"
        }
    }
}

extension HostMMError {
    /// The errno the kernel would return for this error (signals map to EFAULT); for a
    /// driver of your own on HostMM (HostMM does not depend on SystemPackage).
    public var errno: Errno {
        switch self {
        case .invalidArgument: return .invalidArgument
        case .busy: return .resourceBusy
        case .fault, .segmentationFault, .busError: return .badAddress
        case .permissionDenied: return .notPermitted
        case .outOfMemory: return .noMemory
        case .notSupported: return .notSupported
        case .mmapLockNotHeld: return .invalidArgument
        case .protocolViolation: return .invalidArgument
        }
    }
}
