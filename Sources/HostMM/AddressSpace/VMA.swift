/// `vm_flags` bits of a VMA.
public struct VMAFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let read = VMAFlags(rawValue: 1 << 0)       // VM_READ
    public static let write = VMAFlags(rawValue: 1 << 1)      // VM_WRITE
    public static let shared = VMAFlags(rawValue: 1 << 2)     // VM_SHARED
    public static let io = VMAFlags(rawValue: 1 << 3)         // VM_IO
    public static let pfnMap = VMAFlags(rawValue: 1 << 4)     // VM_PFNMAP
    public static let mixedMap = VMAFlags(rawValue: 1 << 5)   // VM_MIXEDMAP
    public static let dontExpand = VMAFlags(rawValue: 1 << 6) // VM_DONTEXPAND
    public static let hugetlb = VMAFlags(rawValue: 1 << 7)    // VM_HUGETLB
    public static let dax = VMAFlags(rawValue: 1 << 8)        // vma_is_dax()
    public static let locked = VMAFlags(rawValue: 1 << 9)     // VM_LOCKED

    /// `VM_SPECIAL`: mappings the migration code refuses.
    public static let special: VMAFlags = [.io, .dontExpand, .pfnMap, .mixedMap]
}

/// A virtual memory area (`struct vm_area_struct`).
///
/// Range, `pgoff` and flags change only under the owning mm's mmap lock in write mode
/// *and* the lock of each mapping root it is linked to, so readers holding either the
/// mmap lock (read) or a root lock see them stable. A VMA removed by `munmap` is
/// detached (`isAttached == false`) and is refused by the migration API.
public final class VMA: @unchecked Sendable, CustomStringConvertible {
    /// The address space the VMA belongs to (`vm_mm`). Not retained (the address space
    /// owns its VMAs); nil once it is deallocated. A VMA kept past that point is detached,
    /// and the APIs taking one refuse it with a typed error (the kernel would have a
    /// use-after-free here).
    public weak let mm: AddressSpace?
    /// The physical memory the VMA's pages live in (`vm_mm`'s, kept for rmap walkers and
    /// for finishing a migration whose address space went away).
    let memory: PhysicalMemory
    /// First address (`vm_start`).
    public internal(set) var start: UInt64
    /// One past the last address (`vm_end`).
    public internal(set) var end: UInt64
    /// Page offset of `start` in the file, or `start >> PAGE_SHIFT` for anonymous memory (`vm_pgoff`).
    public internal(set) var pgoff: UInt64
    /// `vm_flags`.
    public internal(set) var flags: VMAFlags
    /// The anonymous family for private pages (`vma->anon_vma`); nil for shared and special VMAs.
    let anonRoot: MappingRoot?
    /// Backing file (shared or private file mapping, or shmem for shared anonymous memory).
    public let file: PageCacheFile?
    /// False once unmapped.
    public internal(set) var isAttached = true
    /// The owning mm's page table, held strongly so rmap walkers reach it without the mm.
    let pageTable: PageTable
    /// The owning mm's notifier subscriptions, held strongly for the same reason: a walk
    /// invalidating page by page must not load the weak `mm` each time. After the mm is
    /// gone they still reach whatever notifier is left registered, as the kernel's
    /// `try_to_migrate` on an exiting mm still calls its notifiers.
    let notifiers: MMUNotifierSubscriptions

    init(mm: AddressSpace, start: UInt64, end: UInt64, pgoff: UInt64, flags: VMAFlags,
         anonRoot: MappingRoot?, file: PageCacheFile?) {
        self.mm = mm
        self.memory = mm.memory
        self.start = start
        self.end = end
        self.pgoff = pgoff
        self.flags = flags
        self.anonRoot = anonRoot
        self.file = file
        self.pageTable = mm.pageTable
        self.notifiers = mm.notifiers
    }

    /// `vma_is_anonymous()`: private anonymous memory (no `vm_ops`). Only such VMAs get
    /// holes populated by migration.
    public var isAnonymous: Bool { file == nil && flags.isDisjoint(with: VMAFlags.special.union([.hugetlb, .dax])) }

    /// `is_cow_mapping()`: private and possibly writable.
    var isCOWMapping: Bool { !flags.contains(.shared) }

    /// Linear page index of `address` (`linear_page_index`).
    func linearPageIndex(_ address: UInt64) -> UInt64 { (address - start) >> pageShift + pgoff }

    /// The address at which this VMA would map page index `index`, if inside it (`vma_address`).
    func address(ofIndex index: UInt64) -> UInt64? {
        guard index >= pgoff else { return nil }
        let address = start &+ ((index - pgoff) << pageShift)
        return address >= start && address < end ? address : nil
    }

    /// The roots this VMA is linked to.
    var roots: [MappingRoot] { [anonRoot, file?.root].compactMap { $0 } }

    public var description: String {
        "VMA(0x\(String(start, radix: 16))-0x\(String(end, radix: 16)) \(flags.rawValue))"
    }
}
