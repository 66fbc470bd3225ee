/// One entry of an `hmmRangeFault` result: a PFN with `HMM_PFN_*` flags in the top
/// bits. On input the same word carries per-page requests (`HMM_PFN_REQ_*`).
@frozen
public struct HMMPFN: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// `HMM_PFN_VALID`: the CPU can access the page (read at least).
    public static let valid = HMMPFN(rawValue: 1 << 63)
    /// `HMM_PFN_WRITE`: the CPU can write the page.
    public static let write = HMMPFN(rawValue: 1 << 62)
    /// `HMM_PFN_ERROR`: no access possible (unmapped, special, unreadable).
    public static let error = HMMPFN(rawValue: 1 << 61)
    /// `HMM_PFN_REQ_FAULT`: fault the page in if it is not valid.
    public static let requestFault = HMMPFN.valid
    /// `HMM_PFN_REQ_WRITE`: fault for write if the page is not writable.
    public static let requestWrite = HMMPFN.write
    static let flagBits: UInt64 = 0b111 << 61

    /// A valid entry for `pfn`.
    init(pfn: PFN, flags: HMMPFN) { rawValue = pfn.rawValue | flags.rawValue }

    /// `hmm_pfn_to_page`: the PFN part (meaningful with `.valid`).
    public var pfn: PFN { PFN(rawValue: rawValue & ~HMMPFN.flagBits) }

    public var description: String {
        contains(.error) ? "error" : contains(.valid) ? "\(pfn)\(contains(.write) ? "|w" : "|r")" : "0"
    }
}

/// The argument of `hmmRangeFault` (`struct hmm_range`).
///
/// Used by one thread, which holds the notifier's mm's mmap lock for read.
public struct HMMRange {
    /// The interval notifier covering the range; its mm is the one walked.
    public var notifier: MMUIntervalNotifier
    /// From `notifier.readBegin()`; a change makes the call fail with `.busy`.
    public var notifierSeq: UInt64
    /// First address (page-aligned).
    public var start: UInt64
    /// One past the last address (page-aligned).
    public var end: UInt64
    /// One entry per page: request flags in, result out.
    public var hmmPFNs: UnsafeMutableBufferPointer<HMMPFN>
    /// Requests applied to every page (`default_flags`).
    public var defaultFlags: HMMPFN
    /// Which bits of each `hmmPFNs` entry count as per-page requests (`pfn_flags_mask`).
    public var pfnFlagsMask: HMMPFN
    /// Device-private pages of this owner are reported, not faulted (`dev_private_owner`).
    public var devicePrivateOwner: PgmapOwner?

    public init(notifier: MMUIntervalNotifier, notifierSeq: UInt64, start: UInt64, end: UInt64,
                hmmPFNs: UnsafeMutableBufferPointer<HMMPFN>, defaultFlags: HMMPFN = [],
                pfnFlagsMask: HMMPFN = [], devicePrivateOwner: PgmapOwner? = nil) {
        self.notifier = notifier
        self.notifierSeq = notifierSeq
        self.start = start
        self.end = end
        self.hmmPFNs = hmmPFNs
        self.defaultFlags = defaultFlags
        self.pfnFlagsMask = pfnFlagsMask
        self.devicePrivateOwner = devicePrivateOwner
    }
}
