/// An address space (`struct mm_struct`): VMAs, a page table, the mmap lock, MMU
/// notifier subscriptions and fault counters, over a shared `PhysicalMemory`.
///
/// Thread rules: `mmap`/`munmap`/`mprotect`/`fork` take the mmap lock in write mode;
/// CPU `read`/`write`/`touch` take it in read mode; `migrateVMA*`, `hmmRangeFault`,
/// `findVMA` and `makeDeviceExclusive` need the caller to hold it (read mode). Any
/// thread may call any of them.
public final class AddressSpace: @unchecked Sendable {
    public let memory: PhysicalMemory
    /// `mm->mmap_lock`.
    public let mmapLock = MMapLock()
    /// MMU interval notifier subscriptions (`mm->notifier_subscriptions`).
    public private(set) var notifiers: MMUNotifierSubscriptions!
    /// Fault counts by kind.
    public let faultCounters = FaultCounters()
    let pageTable = PageTable()
    /// VMAs sorted by start address; guarded by `mmapLock`.
    var vmas: [VMA] = []
    /// Where the next non-fixed `mmap` goes (grows upward); guarded by `mmapLock`.
    var mmapBase: UInt64 = 0x7f00_0000_0000 >> 4
    /// True once `exit` ran (`mm_users` reached zero): no VMA is left and new mappings
    /// are refused. Drivers check it where the kernel's `mmget_not_zero` would fail.
    public private(set) var hasExited = false

    /// Creates an empty address space over `memory`.
    public init(memory: PhysicalMemory) {
        self.memory = memory
        notifiers = MMUNotifierSubscriptions(mm: self)
    }

    deinit { exit() }

    /// Tears the address space down (`exit_mmap`): notifiers see `.release` (whole space)
    /// then `.unmap` while every page is unmapped (device pages go back through `pageFree`), every VMA is detached.
    /// Idempotent; also run by `deinit`.
    public func exit() {
        mmapLock.withWriteLock {
            guard !hasExited else { return }
            hasExited = true
            // mn_itree_release: every interval sees RELEASE over the whole space, then
            // unmap_vmas tears the mappings down under an UNMAP invalidation of [0, ULONG_MAX).
            notifiers.invalidating(0, .max, .release) {}
            if !vmas.isEmpty {
                notifiers.invalidating(0, .max, .unmap) {
                    for vma in vmas { zapRange(vma, vma.start, vma.end) }
                }
            }
            for vma in vmas { detach(vma) }
            vmas.removeAll()
        }
    }

    /// The VMA containing `address` (`vma_lookup`). The caller holds the mmap lock.
    public func findVMA(_ address: UInt64) -> VMA? {
        var lo = 0, hi = vmas.count
        while lo < hi {
            let mid = (lo + hi) / 2
            let v = vmas[mid]
            if address < v.start { hi = mid } else if address >= v.end { lo = mid + 1 } else { return v }
        }
        return nil
    }

    /// A snapshot of the VMAs (takes the mmap lock for read).
    public var vmaList: [VMA] { mmapLock.withReadLock { vmas } }

    /// The page-table entry mapping `address` (for tests and traces; lockless read).
    public func pageTableEntry(_ address: UInt64) -> PageTableEntry { pageTable.entry(address) }

    /// Unlinks a VMA from its roots; drops an anonymous root with no VMA left.
    func detach(_ vma: VMA) {
        vma.isAttached = false
        for root in vma.roots where root.unlink(vma) && root.isAnon {
            memory.roots.remove(root)
        }
    }

    /// Inserts into the sorted VMA list (mmap lock held for write).
    func insertVMA(_ vma: VMA) {
        let i = vmas.firstIndex { $0.start > vma.start } ?? vmas.count
        vmas.insert(vma, at: i)
    }
}
