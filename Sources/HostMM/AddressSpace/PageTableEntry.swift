/// One page-table entry (`pte_t`), including the non-present "swap" encodings the
/// migration code uses.
///
/// Layout of the 64-bit word: kind in bits 0–2, permission and status bits 3–8, PFN from
/// bit 12. A zero word is `pte_none`.
@frozen
public struct PageTableEntry: Equatable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// The entry kinds (`pte_present` plus the swap-entry types of `swapops.h`).
    public enum Kind: UInt64, Sendable {
        /// `pte_none`: nothing mapped.
        case none = 0
        /// A present mapping of `pfn` (System RAM, the zero page, coherent device memory, a PFNMAP frame).
        case present = 1
        /// `SWP_MIGRATION_*`: the page is being migrated; a CPU access waits for its lock.
        case migration = 2
        /// `SWP_DEVICE_*`: the data lives in a device-private page the CPU cannot reach.
        case devicePrivate = 3
        /// `SWP_DEVICE_EXCLUSIVE`: a device holds exclusive (atomic) access to the page.
        case deviceExclusive = 4
    }

    static let kindMask: UInt64 = 0x7
    static let writeBit: UInt64 = 1 << 3
    static let dirtyBit: UInt64 = 1 << 4
    static let youngBit: UInt64 = 1 << 5
    /// `pte_special`: the zero page or a PFNMAP frame (no refcounting, `vm_normal_page` = nil).
    static let specialBit: UInt64 = 1 << 6
    /// Readable-exclusive migration entry (`make_readable_exclusive_migration_entry`).
    static let exclusiveBit: UInt64 = 1 << 7
    /// `pte_devmap`: a present mapping of device-coherent memory.
    static let devmapBit: UInt64 = 1 << 8

    public static let none = PageTableEntry(rawValue: 0)

    @inlinable public var kind: Kind { Kind(rawValue: rawValue & 0x7) ?? .none }
    @inlinable public var isNone: Bool { rawValue == 0 }
    @inlinable public var isPresent: Bool { rawValue & 0x7 == Kind.present.rawValue }
    /// The frame the entry refers to (for every kind but `.none`).
    @inlinable public var pfn: PFN { PFN(rawValue: rawValue >> 12) }
    /// `pte_write` / `is_writable_*_entry`.
    @inlinable public var isWritable: Bool { rawValue & (1 << 3) != 0 }
    /// `pte_dirty` (present) or the dirty bit kept in a migration entry.
    @inlinable public var isDirty: Bool { rawValue & (1 << 4) != 0 }
    /// `pte_young` (present) or the young bit kept in a migration entry.
    @inlinable public var isYoung: Bool { rawValue & (1 << 5) != 0 }
    /// `pte_special`.
    @inlinable public var isSpecial: Bool { rawValue & (1 << 6) != 0 }
    /// Readable-exclusive migration entry.
    @inlinable public var isExclusive: Bool { rawValue & (1 << 7) != 0 }
    /// `pte_devmap`.
    @inlinable public var isDevmap: Bool { rawValue & (1 << 8) != 0 }

    init(kind: Kind, pfn: PFN, write: Bool = false, dirty: Bool = false, young: Bool = false,
         special: Bool = false, exclusive: Bool = false, devmap: Bool = false) {
        var v = pfn.rawValue << 12 | kind.rawValue
        if write { v |= Self.writeBit }
        if dirty { v |= Self.dirtyBit }
        if young { v |= Self.youngBit }
        if special { v |= Self.specialBit }
        if exclusive { v |= Self.exclusiveBit }
        if devmap { v |= Self.devmapBit }
        rawValue = v
    }

    /// `make_{readable,readable_exclusive,writable}_migration_entry`.
    static func migration(_ pfn: PFN, write: Bool, exclusive: Bool, young: Bool, dirty: Bool) -> PageTableEntry {
        PageTableEntry(kind: .migration, pfn: pfn, write: write, dirty: dirty, young: young, exclusive: exclusive && !write)
    }

    /// `make_{readable,writable}_device_private_entry`.
    static func devicePrivate(_ pfn: PFN, write: Bool) -> PageTableEntry {
        PageTableEntry(kind: .devicePrivate, pfn: pfn, write: write)
    }

    func with(write: Bool) -> PageTableEntry {
        PageTableEntry(rawValue: write ? rawValue | Self.writeBit : rawValue & ~Self.writeBit)
    }
    func with(dirty: Bool) -> PageTableEntry {
        PageTableEntry(rawValue: dirty ? rawValue | Self.dirtyBit : rawValue & ~Self.dirtyBit)
    }
    func with(young: Bool) -> PageTableEntry {
        PageTableEntry(rawValue: young ? rawValue | Self.youngBit : rawValue & ~Self.youngBit)
    }

    public var description: String {
        switch kind {
        case .none: return "none"
        case .present:
            return "present(\(pfn)\(isWritable ? ",w" : "")\(isDirty ? ",d" : "")\(isYoung ? ",y" : "")\(isSpecial ? ",special" : ""))"
        case .migration: return "migration(\(pfn)\(isWritable ? ",w" : isExclusive ? ",excl" : ",r"))"
        case .devicePrivate: return "device-private(\(pfn)\(isWritable ? ",w" : ",r"))"
        case .deviceExclusive: return "device-exclusive(\(pfn)\(isWritable ? ",w" : ",r"))"
        }
    }
}
