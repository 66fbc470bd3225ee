/// The unwritten rules of the device-migration protocol that checked mode turns into
/// errors (see `ProtocolChecker`). Each case names what a driver did wrong; the raw
/// value is the stable name used in logs, JSON and test output.
///
/// The kernel enforces few of these (some with `VM_BUG_ON`, most not at all); breaking
/// any of them there corrupts memory or leaks it. Here they are reported with the page,
/// its address and the driver's call site.
public enum ProtocolRule: String, CaseIterable, Sendable, CustomStringConvertible {
    // MARK: Fences gate finalize

    /// `migrate_vma_finalize` / `migrate_device_finalize` ran while a copy into a
    /// destination page, or out of a source page, was submitted and its fence had not
    /// signalled: the page is unlocked (and a source freed) under a running copy.
    case finalizeWithCopyInFlight = "finalize-with-copy-in-flight"
    /// `migrate_vma_pages` inserted a CPU-reachable destination (device-coherent VRAM, or
    /// RAM) for a hole while a copy into it had not completed: `migrate_vma_insert_page`
    /// maps such a page present at once, so the CPU can read it before the clear lands.
    /// Wait for the fence before the pages step (amdgpu's order for coherent VRAM).
    case holeMappedWithCopyInFlight = "hole-mapped-with-copy-in-flight"

    // MARK: Destinations (checked at the pages step)

    /// A `dst` entry names a page that is not locked (`migrate_vma_pages` requires locked
    /// destinations: `zone_device_page_init`, or `lock_page` on a fresh RAM page).
    case destinationNotLocked = "destination-not-locked"
    /// A `dst` entry names a PFN that is not memory, or a free page (refcount 0).
    case destinationNotAllocated = "destination-not-allocated"
    /// A `dst` entry was set where `src` has no `MIGRATE_PFN_MIGRATE`: the page is allocated
    /// and copied into for nothing (and freed by finalize).
    case destinationWithoutMigrate = "destination-without-migrate"
    /// The same destination page appears in two `dst` entries of one migration, or in
    /// the `dst` arrays of two migrations in progress at once (a page the driver's
    /// allocator handed out twice): the later entry is dropped.
    case destinationSetTwice = "destination-set-twice"

    // MARK: Sources

    /// The bytes of a source page changed between setup and the pages step (or finalize):
    /// the page is locked and unmapped, so only a stale mapping or a buggy driver wrote
    /// them, and the copy may or may not have seen the write.
    case sourceModifiedAfterSetup = "source-modified-after-setup"

    // MARK: Order of the three steps

    /// The pages step ran on arrays with entries marked MIGRATE that no setup
    /// (`migrate_vma_setup` / `migrate_device_range`) prepared; the step is skipped. Arrays
    /// without such entries (after a setup that failed) make it a no-op, not reported.
    case pagesWithoutSetup = "pages-without-setup"
    /// The pages step ran twice on one migration (or after its finalize).
    case pagesTwice = "pages-twice"
    /// Finalize ran on arrays with entries marked MIGRATE that no setup prepared; skipped.
    case finalizeWithoutSetup = "finalize-without-setup"
    /// Finalize ran with destinations set but without the pages step, which moves the
    /// `struct page` state: the new pages would be mapped with no mapping of their own.
    case finalizeWithoutPages = "finalize-without-pages"
    /// Finalize ran twice on one migration: pages would be unlocked and released twice.
    case finalizeTwice = "finalize-twice"
    /// Setup ran again on arrays whose previous migration was never finalized: its
    /// pages would stay locked behind migration entries for ever (recording mode
    /// finalizes it before the new setup; throwing mode refuses the setup).
    case setupBeforeFinalize = "setup-before-finalize"
    /// The pages step or finalize was given other arrays, or another `npages`, than
    /// setup filled (entries would be skipped and stay locked, or be read past the end).
    case wrongArrayLength = "wrong-array-length"

    // MARK: Page lifetime

    /// A device page was still allocated when its device was torn down (never freed).
    case devicePageLeaked = "device-page-leaked"
    /// A device page was handed back to its driver's free list while already on it.
    case devicePageFreedTwice = "device-page-freed-twice"
    /// A reference was dropped on a page whose refcount was already 0.
    case refcountUnderflow = "refcount-underflow"
    /// `unlock_page` on a page that was not locked.
    case unlockOfUnlockedPage = "unlock-of-unlocked-page"

    // MARK: Device page tables

    /// A page was freed while a device page-table entry still mapped it.
    case devicePTEMapsFreedPage = "device-pte-maps-freed-page"
    /// A migration moved a page away (finalize) while a device page-table entry still
    /// mapped the old page.
    case devicePTEMapsMigratedPage = "device-pte-maps-migrated-page"

    public var description: String { rawValue }
}
