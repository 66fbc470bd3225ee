import Synchronization

/// One entry of the PFN-indexed `struct page` table: 64 bytes, one cache line.
///
/// Models the fields of `struct page` / `struct folio` the mm paths read. Every field
/// is an atomic word so any thread may read it without a lock; writers follow the
/// kernel's rules (mapping/index change under the page lock or before the page is
/// published; refcount and mapcount are plain atomic counters).
///
/// The table lives in one `mmap(MAP_NORESERVE)` region: a frame's metadata costs
/// memory only once touched, zero bytes mean "free, zone normal, unmapped", and no
/// per-page object or ARC traffic exists.
@usableFromInline
struct PageMetadata: ~Copyable {
    /// `_refcount`: references held (mappings, isolation, GUP, the driver, …).
    let refcount: Atomic<Int32>
    /// Number of page-table entries mapping the page (`folio_mapcount`, 0-based).
    let mapcount: Atomic<Int32>
    /// `PageFlags` bits.
    let flags: Atomic<UInt32>
    /// `Zone` in the low 8 bits, pgmap index (+1, 0 = none) in the upper 24 bits.
    /// Written when a pgmap is registered, read-only afterwards.
    let zoneAndPgmap: Atomic<UInt32>
    /// `page->mapping`: 0, or a mapping-root id tagged with `PageMapping.anonTag`.
    let mapping: Atomic<UInt64>
    /// `page->index`: linear page index in the anon VMA family or page offset in the file.
    let index: Atomic<UInt64>
    /// `page->zone_device_data`: a word owned by the device driver.
    let zoneDeviceData: Atomic<UInt64>
    /// Spare word (keeps the entry at 64 bytes; `page_private` in the kernel).
    let privateWord: Atomic<UInt64>
    let padding: UInt64
}

/// Encoding of `page->mapping` in the metadata table.
enum PageMapping {
    /// `PAGE_MAPPING_ANON`: the mapping word names an anonymous VMA family.
    static let anonTag: UInt64 = 1

    static func anon(_ rootID: UInt64) -> UInt64 { rootID << 2 | anonTag }
    static func file(_ rootID: UInt64) -> UInt64 { rootID << 2 }
    static func rootID(_ word: UInt64) -> UInt64 { word >> 2 }
    static func isAnon(_ word: UInt64) -> Bool { word & anonTag != 0 }
}
