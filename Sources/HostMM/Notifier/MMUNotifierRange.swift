/// Why a range is being invalidated (`enum mmu_notifier_event`).
public enum MMUNotifyEvent: Sendable, Equatable {
    /// `MMU_NOTIFY_UNMAP`: `munmap` or VMA teardown.
    case unmap
    /// `MMU_NOTIFY_CLEAR`: entries cleared (COW break, reclaim, `try_to_migrate`).
    case clear
    /// `MMU_NOTIFY_PROTECTION_VMA`: `mprotect`.
    case protectionVMA
    /// `MMU_NOTIFY_PROTECTION_PAGE`: write-protection of pages (fork's COW setup).
    case protectionPage
    /// `MMU_NOTIFY_SOFT_DIRTY`.
    case softDirty
    /// `MMU_NOTIFY_RELEASE`: the address space is going away.
    case release
    /// `MMU_NOTIFY_MIGRATE`: `migrate_vma_*`; `owner` tells whose migration it is.
    case migrate
    /// `MMU_NOTIFY_EXCLUSIVE`: device-exclusive entries installed or removed.
    case exclusive
}

/// A range being invalidated, as passed to notifier callbacks (`struct mmu_notifier_range`).
public struct MMUNotifierRange: Sendable {
    /// First address.
    public let start: UInt64
    /// One past the last address.
    public let end: UInt64
    /// The reason.
    public let event: MMUNotifyEvent
    /// For `.migrate` and `.exclusive`: the pgmap owner doing it, so a driver can skip
    /// invalidating its own mirror for its own migration (`range->owner`).
    public let owner: PgmapOwner?
}
