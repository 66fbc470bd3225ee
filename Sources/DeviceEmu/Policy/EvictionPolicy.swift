/// Chooses which resident device pages to evict when VRAM runs out: the seam where
/// eviction strategies vary (LRU by default).
///
/// Pages are named by their dense index in the device's memory (`DeviceMemory.pageIndex`),
/// `0 ..< capacity`. The device reports every page that starts holding migrated data,
/// each GPU access to one, and each page freed; it asks for victims when a migration
/// needs room. A victim that cannot be evicted right now (locked, pinned) stays resident
/// and may be offered again. The device asks through `selectVictims(into:where:)`: it
/// passes over pages whose data already left VRAM (waiting for their last reference) and,
/// with `MigrationPolicy.minimumResidency` set, pages resident for less than that.
///
/// Threads: called from any thread, concurrently; implementations lock internally and
/// never call back into the device.
public protocol EvictionPolicy: AnyObject, Sendable {
    /// The page now holds data migrated to VRAM.
    func pageBecameResident(_ page: Int)
    /// A batch of pages now holds migrated data (one call per migration batch).
    func pagesBecameResident(_ pages: UnsafeBufferPointer<Int>)
    /// The GPU accessed the page.
    func pageAccessed(_ page: Int)
    /// The page was freed (migrated away, unmapped, evicted). May name a page never reported resident.
    func pageFreed(_ page: Int)
    /// Writes up to `out.count` pages to evict, coldest first; returns how many. The device
    /// reads a count outside `0...out.count` as the nearest bound and skips indices that
    /// name no device page.
    func selectVictims(into out: UnsafeMutableBufferPointer<Int>) -> Int
    /// Like `selectVictims(into:)`, taking only pages for which `eligible(page)` holds
    /// (the device passes its departed and minimum-residency tests, Xe's timeslice); pages passed over
    /// keep their place. `eligible` only reads atomics, so it may run under the policy's
    /// lock. The default asks `selectVictims(into:)` and drops the ineligible pages.
    func selectVictims(into out: UnsafeMutableBufferPointer<Int>, where eligible: (Int) -> Bool) -> Int
}

extension EvictionPolicy {
    public func selectVictims(into out: UnsafeMutableBufferPointer<Int>, where eligible: (Int) -> Bool) -> Int {
        let n = min(max(selectVictims(into: out), 0), out.count)
        var kept = 0
        for k in 0..<n where eligible(out[k]) {
            out[kept] = out[k]
            kept += 1
        }
        return kept
    }

    public func pagesBecameResident(_ pages: UnsafeBufferPointer<Int>) {
        for page in pages { pageBecameResident(page) }
    }
}

/// Which eviction policy a device builds for its VRAM.
public enum EvictionPolicyKind: Sendable {
    /// Least recently migrated or GPU-accessed first (`LRUEvictionPolicy`).
    case leastRecentlyUsed
    /// Oldest migration first; GPU accesses do not count (`LRUEvictionPolicy` ignoring accesses).
    case firstInFirstOut
    /// Your own; called with the number of device pages.
    case custom(@Sendable (Int) -> any EvictionPolicy)

    func make(capacity: Int) -> any EvictionPolicy {
        switch self {
        case .leastRecentlyUsed: return LRUEvictionPolicy(capacity: capacity)
        case .firstInFirstOut: return LRUEvictionPolicy(capacity: capacity, countsAccesses: false)
        case .custom(let make): return make(capacity)
        }
    }
}
