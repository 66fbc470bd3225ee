/// The `page->flags` bits the migration, fault and reclaim paths read.
///
/// Models `enum pageflags` (`PG_locked`, `PG_dirty`, …) plus `PageAnonExclusive`.
/// Stored atomically in the PFN-indexed metadata table; any thread may read them,
/// and they change with atomic OR/AND so concurrent setters do not lose updates.
@frozen
public struct PageFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `PG_locked`: the page lock is held (see `PhysicalMemory.lockPage`).
    public static let locked = PageFlags(rawValue: 1 << 0)
    /// `PG_waiters`: someone sleeps on the page lock; unlock must wake the queue.
    public static let waiters = PageFlags(rawValue: 1 << 1)
    /// `PG_referenced`.
    public static let referenced = PageFlags(rawValue: 1 << 2)
    /// `PG_uptodate`: contents are valid.
    public static let uptodate = PageFlags(rawValue: 1 << 3)
    /// `PG_dirty`: contents differ from backing store.
    public static let dirty = PageFlags(rawValue: 1 << 4)
    /// `PG_lru`: on an LRU list (isolation clears it and takes a reference).
    public static let lru = PageFlags(rawValue: 1 << 5)
    /// `PG_active`.
    public static let active = PageFlags(rawValue: 1 << 6)
    /// `PG_writeback`: I/O in flight; migration refuses such pages.
    public static let writeback = PageFlags(rawValue: 1 << 7)
    /// `PG_swapbacked`: anonymous or shmem memory.
    public static let swapBacked = PageFlags(rawValue: 1 << 8)
    /// `PG_private`: fs-private data attached (one extra reference, see `folio_has_private`).
    public static let privateData = PageFlags(rawValue: 1 << 9)
    /// `PG_reserved`: never freed (the shared zero page).
    public static let reserved = PageFlags(rawValue: 1 << 10)
    /// `PageAnonExclusive`: this anonymous page is mapped by exactly one process and may
    /// be written without copy-on-write.
    public static let anonExclusive = PageFlags(rawValue: 1 << 11)
    /// `PG_mlocked`.
    public static let mlocked = PageFlags(rawValue: 1 << 12)

    /// Flags that `folio_migrate_flags()` carries from the source to the destination.
    static let migratedOnMove: PageFlags = [.referenced, .uptodate, .dirty, .active, .swapBacked, .mlocked]
}

/// Which part of the physical address space a frame belongs to (`enum zone_type`
/// narrowed to what matters here, plus the `memory_type` of ZONE_DEVICE pgmaps).
public enum Zone: UInt8, Sendable {
    /// System RAM (`ZONE_NORMAL`).
    case normal = 0
    /// `MEMORY_DEVICE_PRIVATE`: device memory the CPU cannot address.
    case devicePrivate = 1
    /// `MEMORY_DEVICE_COHERENT`: device memory the CPU can address coherently.
    case deviceCoherent = 2
}
