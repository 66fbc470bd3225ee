/// Where a driver called into HostMM: the `#fileID` and `#line` default arguments of
/// the public migration and page calls. A trivial value (no allocation, no ARC), so
/// passing it costs nothing when checked mode is off.
@frozen
public struct CallSite: Sendable, CustomStringConvertible {
    public let fileID: StaticString
    public let line: UInt

    @inlinable public init(fileID: StaticString = #fileID, line: UInt = #line) {
        self.fileID = fileID
        self.line = line
    }

    /// "Module/File.swift:123".
    public var description: String { "\(fileID):\(line)" }
}

/// One broken protocol rule, as checked mode records it: the rule, the page (PFN and,
/// when it is known, the virtual address), the driver's call site and a sentence saying
/// what happened.
public struct ProtocolViolation: Error, Sendable, Equatable, CustomStringConvertible {
    public let rule: ProtocolRule
    /// The page concerned, when the rule is about one page.
    public let pfn: PFN?
    /// Its virtual address in the migrating (or a mapping) address space, when known.
    public let address: UInt64?
    /// `#fileID:#line` of the driver call that broke the rule ("" when HostMM found it
    /// on an internal path, e.g. a page freed by an unmap).
    public let site: String
    /// What happened, in words.
    public let detail: String

    public init(rule: ProtocolRule, pfn: PFN?, address: UInt64?, site: String, detail: String) {
        self.rule = rule
        self.pfn = pfn
        self.address = address
        self.site = site
        self.detail = detail
    }

    public var description: String {
        var s = "protocol violation [\(rule)]"
        if let pfn { s += " \(pfn)" }
        if let address { s += " va:0x" + String(address, radix: 16) }
        if !site.isEmpty { s += " at \(site)" }
        return s + ": " + detail
    }
}

/// What a device driver tells checked mode about its copies: whether a copy touching a
/// page's bytes has been submitted and has not completed (its fence has not signalled).
///
/// HostMM cannot see the copy engine; the driver, which knows both its engine and how a
/// PFN maps to an engine address, answers. DeviceEmu's `Device` implements it from the
/// DMA engine's in-flight tracking.
///
/// Threads: called from any thread, with page locks (never page-table locks) held;
/// must not call back into HostMM.
public protocol InFlightCopyOracle: AnyObject, Sendable {
    /// The copies in flight that write into (`.into`) or read from (`.outOf`) `pfn`.
    func copiesInFlight(_ pfn: PFN) -> CopyDirections
}

/// Directions of in-flight copies relative to a page.
public struct CopyDirections: OptionSet, Sendable, Hashable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// A copy writes into the page.
    public static let into = CopyDirections(rawValue: 1)
    /// A copy reads from the page.
    public static let outOf = CopyDirections(rawValue: 2)
}

/// What a device driver tells checked mode about its page tables: whether a device
/// page-table entry maps a page (GPU mappings hold no page reference in this model, as
/// in dmirror: the MMU notifier must zap them before the page goes away).
///
/// Threads: called from any thread with no HostMM page-table lock held (possibly with
/// page locks held); must not call back into HostMM.
public protocol DeviceMappingOracle: AnyObject, Sendable {
    /// A device virtual address whose device page-table entry maps `pfn`, or nil when none does.
    func deviceMapping(of pfn: PFN) -> UInt64?
}
