#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs `body` with the `src` and `dst` arrays of a migration (`struct migrate_vma`'s
/// `src`/`dst`, which the kernel leaves to the driver: test_hmm keeps them on the stack,
/// nouveau allocates them per batch with `kvcalloc`), `npages` entries each, all zero.
///
/// The storage is temporary (on the stack when small, so a one-page `migrateToRAM`
/// allocates nothing) and released when `body` returns: the buffers must not escape it,
/// and a `MigrateVMA` built on them must be finalized inside it. Pass them to
/// `MigrateVMA(src:dst:)` or to `migrateDeviceRange` / `migrateDevicePages` /
/// `migrateDeviceFinalize`. Setup zeroes only `src` (as `migrate_vma_setup` does): a
/// driver that reuses the buffers for another batch inside `body` clears `dst` itself.
///
/// `npages` is checked before anything is allocated; bad input throws, it never traps:
/// - Throws: `.invalidArgument` for `npages` ≤ 0 (no range is empty or negative:
///   `migrateVMASetup` refuses an empty range with `.invalidArgument` too), or above the
///   pages of a whole address space (`TASK_SIZE >> PAGE_SHIFT`, 2³⁵: no range
///   `migrateVMASetup` accepts is longer). The kernel has no such count check — the
///   driver sizes its arrays from the range setup validates — so the bound is this
///   model's; it also keeps `2 * npages * stride` far from overflowing.
///   `.outOfMemory` (ENOMEM, as `kvcalloc` failing) when a count within the bound cannot
///   be allocated. Errors `body` throws are rethrown. A `body` with errors of another
///   type (a driver's own) returns them as a value, e.g. a `Result`, and the caller
///   rethrows them after this returns.
@inlinable
public func withMigrateBuffers<R>(
    npages: Int,
    _ body: (_ src: UnsafeMutableBufferPointer<MigratePFN>, _ dst: UnsafeMutableBufferPointer<MigratePFN>) throws(HostMMError) -> R
) throws(HostMMError) -> R {
    try checkMigrateBufferCount(npages)
    let n = npages
    // Up to a batch of 4096 (the engine's default maxBatch): the stack when it fits.
    guard n > 4096 else {
        return try withUnsafeTemporaryAllocation(of: MigratePFN.self, capacity: 2 * n) { (both) throws(HostMMError) -> R in
            both.initialize(repeating: [])
            defer { both.deinitialize() }
            return try body(UnsafeMutableBufferPointer(rebasing: both[0..<n]),
                            UnsafeMutableBufferPointer(rebasing: both[n..<2 * n]))
        }
    }
    // Large: zeroed heap memory whose allocation failure is an error, not a trap.
    guard let both = allocateZeroedMigratePFNs(2 * n) else { throw .outOfMemory }
    defer { freeMigratePFNs(both) }
    return try body(UnsafeMutableBufferPointer(rebasing: both[0..<n]), UnsafeMutableBufferPointer(rebasing: both[n..<2 * n]))
}

/// Pages in a whole address space (`TASK_SIZE >> PAGE_SHIFT`): the most entries any range
/// given to `migrateVMASetup` can need.
var migrateBuffersMaxPages: Int { Int(PageTable.addressLimit >> pageShift) }

/// `withMigrateBuffers`' count check (see there); builds its reason only when it throws.
@usableFromInline
func checkMigrateBufferCount(_ npages: Int) throws(HostMMError) {
    guard npages > 0 else {
        throw .invalidArgument(reason: npages == 0 ? "npages is 0: no range is empty (migrate_vma_setup refuses one)"
                                                   : "npages \(npages) is negative")
    }
    guard npages <= migrateBuffersMaxPages else {
        throw .invalidArgument(reason: "npages \(npages) exceeds the \(migrateBuffersMaxPages) pages of an address space")
    }
}

/// `count` zeroed entries (the all-zero bit pattern is the empty `MigratePFN`), or nil
/// when the allocation fails.
@usableFromInline
func allocateZeroedMigratePFNs(_ count: Int) -> UnsafeMutableBufferPointer<MigratePFN>? {
    guard let raw = calloc(count, MemoryLayout<MigratePFN>.stride) else { return nil }
    return UnsafeMutableBufferPointer(start: raw.bindMemory(to: MigratePFN.self, capacity: count), count: count)
}

/// Frees what `allocateZeroedMigratePFNs` returned.
@usableFromInline
func freeMigratePFNs(_ buffer: UnsafeMutableBufferPointer<MigratePFN>) {
    free(buffer.baseAddress)
}
