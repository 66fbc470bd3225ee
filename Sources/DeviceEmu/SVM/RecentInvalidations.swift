/// The latest foreign invalidations of one device view, numbered in order: what a
/// migration batch checks before it maps its pages on the GPU — `mmu_interval_read_begin`
/// and `mmu_interval_read_retry`, per range instead of per notifier, so that an
/// invalidation elsewhere in the address space does not cost the batch its mapping.
///
/// Keeps the last `capacity` ranges; a batch that saw more go by assumes the worst. A
/// range that touches the latest one widens it when no mark was taken in between (no
/// batch can tell them apart): eviction and rmap walks invalidate page by page
/// (`try_to_migrate_one`), and a run of them would otherwise fill the record in one go.
/// Threads: guarded by the view's lock; allocates once, at creation.
struct RecentInvalidations {
    /// Where the invalidations stood when a batch began.
    struct Mark: Equatable, Sendable {
        fileprivate var sequence: UInt64
    }

    /// How the invalidations since a mark meet a batch's range.
    enum Overlap: Equatable {
        case none
        /// Some pages of the batch were invalidated (`covers` tells which).
        case some
        /// All of them were, or too many invalidations went by to tell.
        case all
    }

    static let capacity = 8
    private var sequence: UInt64 = 0
    private var ranges = [Range<UInt64>](repeating: 0 ..< 0, count: capacity)
    /// A mark was taken since the latest range was recorded (or none was): the next range
    /// may not widen it.
    private var markedSinceLatest = true

    /// Where the invalidations stand now.
    mutating func mark() -> Mark {
        markedSinceLatest = true
        return Mark(sequence: sequence)
    }

    mutating func record(_ range: Range<UInt64>) {
        let latest = Int(sequence % UInt64(Self.capacity))
        let r = ranges[latest]
        if !markedSinceLatest && range.lowerBound <= r.upperBound && r.lowerBound <= range.upperBound {
            ranges[latest] = min(r.lowerBound, range.lowerBound) ..< max(r.upperBound, range.upperBound)
            return
        }
        sequence &+= 1
        ranges[Int(sequence % UInt64(Self.capacity))] = range
        markedSinceLatest = false
    }

    /// The ranges recorded after `mark`, newest first; nil when some were overwritten.
    private func since(_ mark: Mark, _ body: (Range<UInt64>) -> Bool) -> Bool? {
        let n = sequence &- mark.sequence
        guard n <= UInt64(Self.capacity) else { return nil }
        var k: UInt64 = 0
        while k < n {
            if body(ranges[Int((sequence &- k) % UInt64(Self.capacity))]) { return true }
            k += 1
        }
        return false
    }

    func overlapping(_ batch: Range<UInt64>, since mark: Mark) -> Overlap {
        guard mark.sequence != sequence else { return .none }
        var partial = false
        let whole = since(mark) { r in
            guard r.overlaps(batch) else { return false }
            if r.lowerBound <= batch.lowerBound && r.upperBound >= batch.upperBound { return true }
            partial = true
            return false
        }
        guard let whole else { return .all }
        return whole ? .all : partial ? .some : .none
    }

    /// Whether an invalidation after `mark` covered `address`.
    func covers(_ address: UInt64, since mark: Mark) -> Bool {
        since(mark) { $0.contains(address) } ?? true
    }
}
