/// Runs `body` with the `src` and `dst` arrays of a migration (`struct migrate_vma`'s
/// `src`/`dst`, which the kernel leaves to the driver: test_hmm keeps them on the stack,
/// nouveau allocates them per batch), `npages` entries each, all zero.
///
/// The storage is temporary (on the stack when small, so a one-page `migrateToRAM`
/// allocates nothing) and released when `body` returns: the buffers must not escape it,
/// and a `MigrateVMA` built on them must be finalized inside it. Pass them to
/// `MigrateVMA(src:dst:)` or to `migrateDeviceRange` / `migrateDevicePages` /
/// `migrateDeviceFinalize`. Setup zeroes only `src` (as `migrate_vma_setup` does): a
/// driver that reuses the buffers for another batch inside `body` clears `dst` itself.
/// A negative (or impossibly large) `npages` gives empty buffers, which setup then
/// refuses with `.invalidArgument` naming the count: bad input does not trap here.
@inlinable
public func withMigrateBuffers<R, E: Error>(
    npages: Int,
    _ body: (_ src: UnsafeMutableBufferPointer<MigratePFN>, _ dst: UnsafeMutableBufferPointer<MigratePFN>) throws(E) -> R
) throws(E) -> R {
    let n = npages > 0 && npages <= Int.max / (2 * MemoryLayout<MigratePFN>.stride) ? npages : 0
    return try withUnsafeTemporaryAllocation(of: MigratePFN.self, capacity: 2 * n) { (both) throws(E) -> R in
        both.initialize(repeating: [])
        defer { both.deinitialize() }
        return try body(UnsafeMutableBufferPointer(rebasing: both[0..<n]), UnsafeMutableBufferPointer(rebasing: both[n..<2 * n]))
    }
}
