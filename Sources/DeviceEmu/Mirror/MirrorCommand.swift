/// The commands of lib/test_hmm.c's character device, with the kernel's numbers
/// (`HMM_DMIRROR_*` in lib/test_hmm_uapi.h: `_IOWR('H', nr, struct hmm_dmirror_cmd)`).
public enum MirrorCommand: UInt8, Sendable, CaseIterable {
    /// `HMM_DMIRROR_READ`: read through the mirror, faulting missing entries.
    case read = 0x00
    /// `HMM_DMIRROR_WRITE`: write through the mirror, faulting missing or read-only entries.
    case write = 0x01
    /// `HMM_DMIRROR_MIGRATE_TO_DEV`.
    case migrateToDevice = 0x02
    /// `HMM_DMIRROR_MIGRATE_TO_SYS`.
    case migrateToSystem = 0x03
    /// `HMM_DMIRROR_SNAPSHOT`: one protection byte per page, nothing faulted.
    case snapshot = 0x04
    /// `HMM_DMIRROR_EXCLUSIVE`: take pages for device atomics.
    case exclusive = 0x05
    /// `HMM_DMIRROR_CHECK_EXCLUSIVE`: `EPERM` while any page is still mapped for atomics.
    case checkExclusive = 0x06
    /// `HMM_DMIRROR_RELEASE`: evict all of the device's memory.
    case release = 0x07
    /// `HMM_DMIRROR_FLAGS`: set the mirror's flags (one-shot allocation failure).
    case flags = 0x08

    /// The ioctl request number: `_IOWR('H', nr, 40 bytes)`.
    public var ioctlNumber: UInt32 { 0xC028_4800 | UInt32(rawValue) }
}

/// What a successful command reports (the `cpages` and `faults` fields of
/// `struct hmm_dmirror_cmd`). On error the kernel copies nothing back; here the command
/// throws and there is no result.
public struct MirrorResult: Sendable, Equatable, CustomStringConvertible {
    /// Pages read, written, migrated or snapshotted (per command; see each).
    public var cpages: Int
    /// Driver fault passes (`dmirror_fault` calls), not CPU faults: 1 for a cold range.
    public var faults: Int

    public init(cpages: Int, faults: Int) {
        self.cpages = cpages
        self.faults = faults
    }

    public var description: String { "cpages \(cpages), faults \(faults)" }
}

/// Per-mirror flags (`HMM_DMIRROR_FLAG_*`).
public struct MirrorFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// `HMM_DMIRROR_FLAG_FAIL_ALLOC`: the next page allocation of a migration (either
    /// direction, or a CPU fault's) fails once, and the flag clears.
    public static let failAllocation = MirrorFlags(rawValue: 1 << 0)
}

/// One snapshot byte (`enum hmm_dmirror_prot` in lib/test_hmm_uapi.h).
public struct MirrorProtection: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// `HMM_DMIRROR_PROT_ERROR`: no VMA, no read permission, or an unmirrorable entry.
    public static let error = MirrorProtection(rawValue: 0xFF)
    /// `HMM_DMIRROR_PROT_NONE`: nothing valid (hole, migration or exclusive entry,
    /// another device's private page).
    public static let none = MirrorProtection(rawValue: 0x00)
    /// `HMM_DMIRROR_PROT_READ`.
    public static let read = MirrorProtection(rawValue: 0x01)
    /// `HMM_DMIRROR_PROT_WRITE`.
    public static let write = MirrorProtection(rawValue: 0x02)
    /// `HMM_DMIRROR_PROT_PMD` (never set: huge pages are not modelled).
    public static let pmd = MirrorProtection(rawValue: 0x04)
    /// `HMM_DMIRROR_PROT_PUD` (never set).
    public static let pud = MirrorProtection(rawValue: 0x08)
    /// `HMM_DMIRROR_PROT_ZERO`: the shared zero page.
    public static let zero = MirrorProtection(rawValue: 0x10)
    /// `HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL`.
    public static let devicePrivateLocal = MirrorProtection(rawValue: 0x20)
    /// `HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE` (unreachable: HMM faults remote private pages).
    public static let devicePrivateRemote = MirrorProtection(rawValue: 0x30)
    /// `HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL`.
    public static let deviceCoherentLocal = MirrorProtection(rawValue: 0x40)
    /// `HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE`.
    public static let deviceCoherentRemote = MirrorProtection(rawValue: 0x50)

    /// Combines a location code with an access code (`0x20 | 0x02` = local private, writable).
    public static func | (a: MirrorProtection, b: MirrorProtection) -> MirrorProtection {
        MirrorProtection(rawValue: a.rawValue | b.rawValue)
    }

    public var description: String { "0x" + String(rawValue, radix: 16) }
}
