import NIOConcurrencyHelpers

/// Least-recently-used eviction over an intrusive doubly linked list of page indices:
/// resident pages enter at the hot end, GPU accesses move them back there, victims are
/// taken from the cold end (and moved to the hot end, so a page that could not be
/// evicted is not offered again at once).
///
/// Models the LRU of resident VRAM allocations a driver keeps for eviction (TTM's LRU
/// of buffer objects, per page here). Allocation-free after init: two `Int32` links per page.
///
/// Threads: any; one lock.
public final class LRUEvictionPolicy: EvictionPolicy, @unchecked Sendable {
    private let lock = NIOLock()
    private let capacity: Int
    private let countsAccesses: Bool
    // Guarded by `lock`. -1 ends the list; `prev[i] == -2` marks "not on the list".
    private let prev: UnsafeMutablePointer<Int32>
    private let next: UnsafeMutablePointer<Int32>
    private var cold: Int32 = -1
    private var hot: Int32 = -1
    private var count = 0

    /// - Parameter countsAccesses: false gives FIFO (migration order only).
    public init(capacity: Int, countsAccesses: Bool = true) {
        self.capacity = max(capacity, 0)
        self.countsAccesses = countsAccesses
        prev = .allocate(capacity: max(capacity, 1))
        next = .allocate(capacity: max(capacity, 1))
        prev.initialize(repeating: -2, count: max(capacity, 1))
        next.initialize(repeating: -1, count: max(capacity, 1))
    }

    deinit {
        prev.deallocate()
        next.deallocate()
    }

    /// Pages on the list.
    public var residentCount: Int { lock.withLock { count } }

    public func pageBecameResident(_ page: Int) {
        guard page >= 0, page < capacity else { return }
        lock.withLock { moveToHot(Int32(page)) }
    }

    public func pagesBecameResident(_ pages: UnsafeBufferPointer<Int>) {
        lock.withLock {
            for page in pages where page >= 0 && page < capacity { moveToHot(Int32(page)) }
        }
    }

    public func pageAccessed(_ page: Int) {
        guard countsAccesses, page >= 0, page < capacity else { return }
        lock.withLock { if prev[page] != -2 { moveToHot(Int32(page)) } }
    }

    public func pageFreed(_ page: Int) {
        guard page >= 0, page < capacity else { return }
        lock.withLock { unlink(Int32(page)) }
    }

    public func selectVictims(into out: UnsafeMutableBufferPointer<Int>) -> Int {
        lock.withLock {
            let n = min(out.count, count)
            for k in 0..<n {
                let page = cold
                out[k] = Int(page)
                moveToHot(page)
            }
            return n
        }
    }

    /// Walks from the cold end past ineligible pages (which keep their place); the pages
    /// taken move to the hot end. O(resident pages) at worst, under the lock.
    public func selectVictims(into out: UnsafeMutableBufferPointer<Int>, where eligible: (Int) -> Bool) -> Int {
        lock.withLock {
            var n = 0
            var p = cold
            while p >= 0 && n < out.count {
                if eligible(Int(p)) {
                    out[n] = Int(p)
                    n += 1
                }
                p = next[Int(p)]
            }
            for k in 0..<n { moveToHot(Int32(out[k])) }
            return n
        }
    }

    /// The list from cold to hot (for tests and traces).
    public var coldToHot: [Int] {
        lock.withLock {
            var out: [Int] = []
            var p = cold
            while p >= 0 { out.append(Int(p)); p = next[Int(p)] }
            return out
        }
    }

    private func unlink(_ p: Int32) {
        let i = Int(p)
        guard prev[i] != -2 else { return }
        let before = prev[i], after = next[i]
        if before >= 0 { next[Int(before)] = after } else { cold = after }
        if after >= 0 { prev[Int(after)] = before } else { hot = before }
        prev[i] = -2
        next[i] = -1
        count -= 1
    }

    private func moveToHot(_ p: Int32) {
        unlink(p)
        let i = Int(p)
        prev[i] = hot
        next[i] = -1
        if hot >= 0 { next[Int(hot)] = p } else { cold = p }
        hot = p
        count += 1
    }
}
