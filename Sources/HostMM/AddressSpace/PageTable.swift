import Synchronization
import NIOConcurrencyHelpers

/// The last level of the page table: 512 entries covering 2 MiB and their split
/// page-table lock (`pte_t[PTRS_PER_PTE]` plus `ptlock`).
///
/// Entries are atomic words: any thread may read one locklessly (as the kernel's
/// `ptep_get` does, then re-checks under the lock); every write happens with `lock` held.
final class PTETable: @unchecked Sendable {
    let lock = NIOLock()
    let entries: UnsafeMutablePointer<Synchronization.Atomic<UInt64>>

    init() {
        entries = UnsafeMutableRawPointer.allocate(byteCount: 512 * 8, alignment: 64)
            .initializeMemory(as: UInt64.self, repeating: 0, count: 512)
            .withMemoryRebound(to: Synchronization.Atomic<UInt64>.self, capacity: 512) { $0 }
    }

    deinit { UnsafeMutableRawPointer(entries).deallocate() }

    @inline(__always) subscript(i: Int) -> PageTableEntry {
        get { PageTableEntry(rawValue: entries[i].load(ordering: .acquiring)) }
    }

    /// Stores an entry; the caller holds `lock` (`set_pte_at`).
    @inline(__always) func set(_ i: Int, _ pte: PageTableEntry) {
        entries[i].store(pte.rawValue, ordering: .releasing)
    }

    @inline(__always) static func index(_ address: UInt64) -> Int { Int((address >> 12) & 511) }
}

/// A four-level radix page table over a 48-bit address space (pgd → pud → pmd → pte).
///
/// Upper levels are arrays of 512 atomic pointers populated with compare-and-swap
/// (`__pte_alloc` under `page_table_lock`); leaves are `PTETable`s. Tables are freed
/// when the address space is torn down, not on `munmap` (the kernel's `free_pgtables`
/// is not modelled; it changes no behaviour the API can observe). Any thread may walk it.
final class PageTable: @unchecked Sendable {
    /// One past the highest user address (`TASK_SIZE` of a 4-level x86-64 mm).
    static let addressLimit: UInt64 = 1 << 47
    let root: UnsafeMutablePointer<Synchronization.Atomic<UInt>>

    init() { root = Self.allocateNode() }

    deinit { Self.freeNode(root, level: 3) }

    private static func allocateNode() -> UnsafeMutablePointer<Synchronization.Atomic<UInt>> {
        UnsafeMutableRawPointer.allocate(byteCount: 512 * 8, alignment: 64)
            .initializeMemory(as: UInt.self, repeating: 0, count: 512)
            .withMemoryRebound(to: Synchronization.Atomic<UInt>.self, capacity: 512) { $0 }
    }

    private static func freeNode(_ node: UnsafeMutablePointer<Synchronization.Atomic<UInt>>, level: Int) {
        for i in 0..<512 {
            let bits = node[i].load(ordering: .relaxed)
            guard let p = UnsafeMutableRawPointer(bitPattern: bits) else { continue }
            if level == 1 {
                Unmanaged<PTETable>.fromOpaque(p).release()
            } else {
                freeNode(p.assumingMemoryBound(to: Synchronization.Atomic<UInt>.self), level: level - 1)
            }
        }
        UnsafeMutableRawPointer(node).deallocate()
    }

    /// The leaf covering `address`, allocating missing levels when `create` is set
    /// (`pte_alloc`). Returns nil for a missing leaf when not creating.
    func leaf(_ address: UInt64, create: Bool) -> PTETable? {
        var node = root
        var shift: UInt64 = 39
        while shift > 21 {
            let i = Int((address >> shift) & 511)
            var bits = node[i].load(ordering: .acquiring)
            if bits == 0 {
                guard create else { return nil }
                let fresh = Self.allocateNode()
                let (won, current) = node[i].compareExchange(
                    expected: 0, desired: UInt(bitPattern: fresh), ordering: .acquiringAndReleasing)
                if won { bits = UInt(bitPattern: fresh) } else {
                    UnsafeMutableRawPointer(fresh).deallocate()
                    bits = current
                }
            }
            node = UnsafeMutablePointer(bitPattern: bits)!
            shift -= 9
        }
        let i = Int((address >> 21) & 511)
        var bits = node[i].load(ordering: .acquiring)
        if bits == 0 {
            guard create else { return nil }
            let fresh = Unmanaged.passRetained(PTETable())
            let (won, current) = node[i].compareExchange(
                expected: 0, desired: UInt(bitPattern: fresh.toOpaque()), ordering: .acquiringAndReleasing)
            if won { bits = UInt(bitPattern: fresh.toOpaque()) } else {
                fresh.release()
                bits = current
            }
        }
        return Unmanaged<PTETable>.fromOpaque(UnsafeRawPointer(bitPattern: bits)!).takeUnretainedValue()
    }

    /// The leaf covering `address` without a retain (the table keeps leaves alive until
    /// it is freed), for hot loops.
    func existingLeaf(_ address: UInt64) -> Unmanaged<PTETable>? {
        var node = root
        var shift: UInt64 = 39
        while shift > 21 {
            let bits = node[Int((address >> shift) & 511)].load(ordering: .acquiring)
            guard let next = UnsafeMutablePointer<Synchronization.Atomic<UInt>>(bitPattern: bits) else { return nil }
            node = next
            shift -= 9
        }
        let bits = node[Int((address >> 21) & 511)].load(ordering: .acquiring)
        guard let p = UnsafeRawPointer(bitPattern: bits) else { return nil }
        return Unmanaged<PTETable>.fromOpaque(p)
    }

    /// Reads the entry at `address` without the lock (`ptep_get`); none if no leaf.
    func entry(_ address: UInt64) -> PageTableEntry {
        leaf(address, create: false)?[PTETable.index(address)] ?? .none
    }
}
