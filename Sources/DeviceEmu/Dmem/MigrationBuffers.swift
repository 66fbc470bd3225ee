import HostMM
import NIOConcurrencyHelpers

/// The scratch arrays of one driver operation, allocated once per call (never per page):
/// the `src`/`dst` MIGRATE_PFN words, the batch-position → entry map used to find the
/// page of a failed descriptor, and the pages allocated for a batch.
///
/// Threads: owned by the operation's thread.
final class MigrationBuffers {
    let capacity: Int
    let src: UnsafeMutableBufferPointer<MigratePFN>
    let dst: UnsafeMutableBufferPointer<MigratePFN>
    /// `slot[k]` = the entry whose copy is the batch's k-th descriptor.
    let slot: UnsafeMutableBufferPointer<Int32>
    let pages: UnsafeMutableBufferPointer<PFN>
    /// Dense page indices of the batch's migrated pages (for the eviction policy).
    let indices: UnsafeMutableBufferPointer<Int>

    init(capacity: Int) {
        self.capacity = capacity
        src = .allocate(capacity: capacity)
        dst = .allocate(capacity: capacity)
        slot = .allocate(capacity: capacity)
        pages = .allocate(capacity: capacity)
        indices = .allocate(capacity: capacity)
        indices.initialize(repeating: 0)
        src.initialize(repeating: [])
        dst.initialize(repeating: [])
        slot.initialize(repeating: 0)
        pages.initialize(repeating: PFN(0))
    }

    deinit {
        src.deallocate()
        dst.deallocate()
        slot.deallocate()
        pages.deallocate()
        indices.deallocate()
    }
}

/// A few spare `MigrationBuffers` so CPU faults do not allocate their arrays each time.
///
/// Threads: any; one lock.
final class BufferCache: @unchecked Sendable {
    private let lock = NIOLock()
    private var spare: [MigrationBuffers] = []   // guarded by lock

    /// Buffers of at least `capacity` entries.
    func take(_ capacity: Int) -> MigrationBuffers {
        let cached = lock.withLock { () -> MigrationBuffers? in
            guard let i = spare.lastIndex(where: { $0.capacity >= capacity }) else { return nil }
            return spare.remove(at: i)
        }
        return cached ?? MigrationBuffers(capacity: max(capacity, 16))
    }

    func give(_ buffers: MigrationBuffers) {
        lock.withLock { if spare.count < 8 { spare.append(buffers) } }
    }
}

/// What a range migration did.
public struct MigrationResult: Sendable, Equatable {
    /// Pages of the range inside VMAs (`npages` summed over batches).
    public var pages = 0
    /// Pages setup collected (`cpages` summed): candidates for migration.
    public var collected = 0
    /// Pages that moved (holes populated included): entries still marked `.migrate` after
    /// `migrateVMAPages` with a destination, which is all a driver learns from the kernel.
    /// An `MADV_DONTNEED` between setup and finalize (it takes the mmap lock for read, as a
    /// migration does) removes the migration entry, and finalize then frees such a page's
    /// VRAM copy (`remove_migration_ptes` finds no entry): it counts here, yet is not in
    /// VRAM nor mapped by the GPU afterwards.
    public var migrated = 0
    /// Of `migrated`, holes and zero-page entries populated with a cleared page.
    public var holes = 0
    /// Pages left where they were because their copy failed.
    public var copyFailures = 0
    /// Batches restored whole by the all-or-nothing policy.
    public var refusedBatches = 0
    /// Collected pages no VRAM page was left for, even after pressure eviction
    /// (`nouveau_dmem_page_alloc_locked` failed): best effort leaves them in RAM. Nonzero
    /// when VRAM is full of pages the eviction policy did not (or could not) give up. All
    /// or nothing refuses such a batch instead (`refusedBatches`; not counted here).
    public var withoutVRAM = 0
    /// Batches that collected at least one page.
    public var batches = 0

    public init() {}

    mutating func add(_ other: MigrationResult) {
        pages += other.pages
        collected += other.collected
        migrated += other.migrated
        holes += other.holes
        copyFailures += other.copyFailures
        refusedBatches += other.refusedBatches
        withoutVRAM += other.withoutVRAM
        batches += other.batches
    }
}

extension Device {
    /// The `zone_device_data` tag of pages migrated by a request for `range`: its first
    /// page number and page count, so a `.wholeAllocation` CPU fault can bring the whole
    /// request back.
    static func allocationTag(_ range: Range<UInt64>) -> UInt64 {
        let pages = min((range.upperBound - range.lowerBound) >> 12, (1 << 28) - 1)
        return (range.lowerBound >> 12) << 28 | pages
    }

    static func allocationRange(_ tag: UInt64) -> Range<UInt64>? {
        let pages = tag & ((1 << 28) - 1)
        guard pages > 0 else { return nil }
        let start = (tag >> 28) << 12
        return start ..< start + pages << 12
    }

    /// Drops a device page allocated for a batch but not used (unlock + the last reference → `pageFree`).
    func releaseUnused(_ page: PFN) {
        memory.unlockPage(page)
        memory.putPage(page)
    }

    /// Walks the VMAs intersecting `range` (gaps between them are skipped, as nouveau's
    /// SVM bind does) in segments of at most `batch` pages. The caller holds the mmap lock.
    func forEachBatch(_ mm: AddressSpace, _ range: Range<UInt64>, batch: Int,
                      _ body: (VMA, UInt64, UInt64) throws(DeviceError) -> Void) throws(DeviceError) {
        var addr = range.lowerBound
        while addr < range.upperBound {
            guard let vma = mm.findVMA(addr) else {
                guard let next = mm.vmaList.first(where: { $0.start > addr && $0.start < range.upperBound }) else { return }
                addr = next.start
                continue
            }
            let end = min(range.upperBound, vma.end, addr + UInt64(batch) << 12)
            try body(vma, addr, end)
            addr = end
        }
    }
}
