import HostMM

/// Entries of a migration whose `struct page` state moved (or whose hole was filled):
/// `src[i]` kept `.migrate` and `dst[i]` names a page — what `migrate_vma_pages` /
/// `migrate_device_pages` committed, and what finalize leaves migrated.
func committedEntries(_ src: UnsafeMutableBufferPointer<MigratePFN>, _ dst: UnsafeMutableBufferPointer<MigratePFN>,
                      _ count: Int) -> Int {
    (0..<count).reduce(0) { $0 + (src[$1].contains(.migrate) && dst[$1].page != nil ? 1 : 0) }
}
