import Synchronization

/// Per-address-space counts of page faults by kind (the `PGFAULT` / `THP_*` vmstat
/// family, narrowed to what tests and traces check). Any thread may read them.
public final class FaultCounters: Sendable {
    public enum Kind: Int, CaseIterable, Sendable {
        /// Anonymous read fault mapped the shared zero page.
        case zeroPage
        /// Anonymous fault allocated a new zeroed page (`do_anonymous_page`).
        case anonymousPage
        /// File or shmem fault mapped a page-cache page (`do_read_fault` / `do_shared_fault`).
        case filePage
        /// Write fault copied the page (`wp_page_copy`, `do_cow_fault`).
        case copyOnWrite
        /// Write fault reused the page in place (`wp_page_reuse`).
        case writeReuse
        /// Fault waited on a migration entry (`migration_entry_wait`).
        case migrationWait
        /// Fault on a device-private entry called `migrateToRAM`.
        case devicePrivate
        /// Fault restored a device-exclusive entry.
        case deviceExclusive
        /// Fault ended in `SIGBUS`.
        case sigbus
        /// Access ended in `SIGSEGV`.
        case sigsegv
    }

    private nonisolated(unsafe) let counts: UnsafeMutablePointer<Atomic<Int>>

    init() {
        counts = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: Kind.allCases.count)
        for i in 0..<Kind.allCases.count { (counts + i).initialize(to: Atomic(0)) }
    }

    deinit { counts.deallocate() }

    func count(_ kind: Kind) { counts[kind.rawValue].wrappingAdd(1, ordering: .relaxed) }

    /// Faults of `kind` so far.
    public subscript(kind: Kind) -> Int { counts[kind.rawValue].load(ordering: .relaxed) }

    /// All counts, for reports.
    public var snapshot: [Kind: Int] {
        Dictionary(uniqueKeysWithValues: Kind.allCases.map { ($0, self[$0]) })
    }
}
