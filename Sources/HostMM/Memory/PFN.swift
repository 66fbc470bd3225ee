/// Size of a base page, as `PAGE_SIZE` on x86-64.
public let pageSize = 4096
/// `PAGE_SHIFT`.
public let pageShift: UInt64 = 12
/// Mask of the in-page offset bits (`~PAGE_MASK`).
@usableFromInline let pageOffsetMask: UInt64 = 4095

/// A page frame number: the index of a 4 KiB frame in the emulated physical address
/// space (System RAM first, then device ranges handed out by `registerPagemap`).
///
/// Models the kernel's `unsigned long pfn`; `PhysicalMemory` maps it to the
/// `struct page` metadata (`pfn_to_page`) and, for CPU-reachable memory, to bytes.
@frozen
public struct PFN: RawRepresentable, Hashable, Strideable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64

    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ value: UInt64) { self.rawValue = value }
    @inlinable public init(_ value: Int) { self.rawValue = UInt64(value) }

    // Equality and arithmetic on the raw value, wrapping: a PFN is any 64-bit value a
    // caller passes (bad input included), and comparing or offsetting one must not trap.
    // (Strideable's default `==` goes through `distance(to:)`.)
    @inlinable public static func == (a: PFN, b: PFN) -> Bool { a.rawValue == b.rawValue }
    @inlinable public static func < (a: PFN, b: PFN) -> Bool { a.rawValue < b.rawValue }
    @inlinable public func distance(to other: PFN) -> Int { Int(truncatingIfNeeded: other.rawValue &- rawValue) }
    @inlinable public func advanced(by n: Int) -> PFN { PFN(rawValue: rawValue &+ UInt64(bitPattern: Int64(n))) }
    @inlinable public static func + (a: PFN, n: Int) -> PFN { PFN(rawValue: a.rawValue &+ UInt64(bitPattern: Int64(n))) }
    @inlinable public static func - (a: PFN, b: PFN) -> Int { Int(truncatingIfNeeded: a.rawValue &- b.rawValue) }

    /// The physical address of the frame's first byte.
    @inlinable public var physicalAddress: UInt64 { rawValue << pageShift }

    public var description: String { "pfn:0x" + String(rawValue, radix: 16) }
}

extension UInt64 {
    /// True when the value is a multiple of the page size (`PAGE_ALIGNED`).
    @inlinable var isPageAligned: Bool { self & pageOffsetMask == 0 }
    /// Rounds down to a page boundary (`addr & PAGE_MASK`).
    @inlinable var pageAlignedDown: UInt64 { self & ~pageOffsetMask }
}
