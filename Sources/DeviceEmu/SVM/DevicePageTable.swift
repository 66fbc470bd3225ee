public import HostMM

/// One entry of a device page table, as a GPU MMU would hold it.
///
/// Layout: flags in the low bits, PFN from bit 12. Zero is "not mapped".
@frozen
public struct DevicePageTableEntry: Equatable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Where a mapped page lives.
    public enum Kind: Sendable, Equatable {
        case none
        /// A System-RAM page (or another device's coherent page) reached over the bus.
        case system
        /// A page of this device's VRAM.
        case vram
        /// A System-RAM page this device holds exclusively for atomics (`make_device_exclusive`).
        case exclusive
    }

    static let validBit: UInt64 = 1
    static let writeBit: UInt64 = 2
    static let vramBit: UInt64 = 4
    static let exclusiveBit: UInt64 = 8

    public static let none = DevicePageTableEntry(rawValue: 0)

    init(pfn: PFN, kind: Kind, write: Bool) {
        var v = pfn.rawValue << 12 | Self.validBit
        if write { v |= Self.writeBit }
        if kind == .vram { v |= Self.vramBit }
        if kind == .exclusive { v |= Self.exclusiveBit }
        rawValue = v
    }

    @inlinable public var isValid: Bool { rawValue & 1 != 0 }
    @inlinable public var isWritable: Bool { rawValue & 2 != 0 }
    @inlinable public var pfn: PFN { PFN(rawValue: rawValue >> 12) }
    public var kind: Kind {
        guard isValid else { return .none }
        if rawValue & Self.vramBit != 0 { return .vram }
        if rawValue & Self.exclusiveBit != 0 { return .exclusive }
        return .system
    }

    public var description: String {
        switch kind {
        case .none: return "none"
        case .system: return "system(\(pfn)\(isWritable ? ",w" : ""))"
        case .vram: return "vram(\(pfn)\(isWritable ? ",w" : ""))"
        case .exclusive: return "exclusive(\(pfn))"
        }
    }
}

/// The GPU's page table for one address space: 2 MiB leaves of 512 entries, created on
/// first use and found through a dictionary (the sparse shape of dmirror's xarray, with
/// the leaf granularity of a GPU page table). The last leaf used is cached, so a batch
/// walking one 2 MiB region hashes once.
///
/// Threads: none of its own; every call is made with the owning `GPUAddressSpace`'s lock held.
struct DevicePageTable: ~Copyable {
    private var leaves: [UInt64: UnsafeMutablePointer<UInt64>] = [:]
    private var cachedKey: UInt64 = .max
    private var cachedLeaf: UnsafeMutablePointer<UInt64>?
    /// Valid entries.
    private(set) var count = 0
    /// Checked mode only: the device's reverse map, kept up to date by every change.
    private var reverse: ReverseMappings?

    deinit {
        for (key, leaf) in leaves {
            reverse?.forget(leaf, key)
            leaf.deallocate()
        }
    }

    @inline(__always)
    private mutating func leaf(_ key: UInt64, create: Bool) -> UnsafeMutablePointer<UInt64>? {
        if key == cachedKey, let cachedLeaf { return cachedLeaf }
        var leaf = leaves[key]
        if leaf == nil {
            guard create else { return nil }
            let fresh = UnsafeMutablePointer<UInt64>.allocate(capacity: 512)
            fresh.initialize(repeating: 0, count: 512)
            leaves[key] = fresh
            leaf = fresh
        }
        cachedKey = key
        cachedLeaf = leaf
        return leaf
    }

    @inline(__always)
    mutating func entry(_ address: UInt64) -> DevicePageTableEntry {
        guard let leaf = leaf(address >> 21, create: false) else { return .none }
        return DevicePageTableEntry(rawValue: leaf[Int((address >> 12) & 511)])
    }

    mutating func set(_ address: UInt64, _ entry: DevicePageTableEntry) {
        guard let leaf = leaf(address >> 21, create: entry.isValid) else { return }
        let i = Int((address >> 12) & 511)
        let wasValid = leaf[i] & 1 != 0
        if let reverse { reverse.replace(DevicePageTableEntry(rawValue: leaf[i]), with: entry, at: address) }
        leaf[i] = entry.rawValue
        count += (entry.isValid ? 1 : 0) - (wasValid ? 1 : 0)
    }

    /// Clears `[start, end)`; returns how many valid entries were removed.
    mutating func zap(_ start: UInt64, _ end: UInt64) -> Int {
        guard start < end, count > 0 else { return 0 }
        let firstKey = start >> 21, lastKey = (end - 1) >> 21
        var removed = 0
        if lastKey - firstKey >= UInt64(leaves.count) {
            for (key, leaf) in leaves where key >= firstKey && key <= lastKey {
                if let reverse { reverse.forget(leaf, key, start, end) }
                removed += Self.zapLeaf(leaf, key, start, end)
            }
        } else {
            for key in firstKey...lastKey {
                guard let leaf = leaves[key] else { continue }
                if let reverse { reverse.forget(leaf, key, start, end) }
                removed += Self.zapLeaf(leaf, key, start, end)
            }
        }
        count -= removed
        return removed
    }

    private static func zapLeaf(_ leaf: UnsafeMutablePointer<UInt64>, _ key: UInt64, _ start: UInt64, _ end: UInt64) -> Int {
        let base = key << 21
        let from = start > base ? Int((start - base) >> 12) : 0
        let to = end < base + (1 << 21) ? Int((end - base + 4095) >> 12) : 512
        var removed = 0
        for i in from..<to where leaf[i] != 0 {
            if leaf[i] & 1 != 0 { removed += 1 }
            leaf[i] = 0
        }
        return removed
    }

    /// Calls `body(leaf, firstIndex, k0, n)` for each 2 MiB leaf overlapping the `npages`
    /// pages from `start`: entries `firstIndex ..< firstIndex + n` of `leaf` are pages
    /// `k0 ..< k0 + n` of the run. Leaves are created only with `create`.
    private mutating func forEachLeaf(_ start: UInt64, _ npages: Int, create: Bool,
                                      _ body: (UnsafeMutablePointer<UInt64>, Int, Int, Int) -> Void) {
        var k = 0
        while k < npages {
            let address = start + UInt64(k) << 12
            let first = Int((address >> 12) & 511)
            let n = min(512 - first, npages - k)
            if let leaf = leaf(address >> 21, create: create) { body(leaf, first, k, n) }
            k += n
        }
    }

    /// Clears the entries of the run's pages `k` for which `include(k, entry)`; returns how
    /// many valid entries were removed.
    mutating func zap(_ start: UInt64, _ npages: Int, where include: (Int, DevicePageTableEntry) -> Bool) -> Int {
        guard count > 0 else { return 0 }
        var removed = 0
        let reverse = self.reverse
        forEachLeaf(start, npages, create: false) { leaf, first, k0, n in
            for j in 0..<n where leaf[first + j] != 0 && include(k0 + j, DevicePageTableEntry(rawValue: leaf[first + j])) {
                if leaf[first + j] & 1 != 0 { removed += 1 }
                if let reverse { reverse.replace(DevicePageTableEntry(rawValue: leaf[first + j]), with: .none, at: 0) }
                leaf[first + j] = 0
            }
        }
        count -= removed
        return removed
    }

    /// Writes `entry(k)` for each page `k` of the run where it is not nil; returns how many.
    mutating func map(_ start: UInt64, _ npages: Int, _ entry: (Int) -> DevicePageTableEntry?) -> Int {
        var written = 0, added = 0
        let reverse = self.reverse
        forEachLeaf(start, npages, create: true) { leaf, first, k0, n in
            for j in 0..<n {
                guard let e = entry(k0 + j) else { continue }
                added += (e.isValid ? 1 : 0) - (leaf[first + j] & 1 != 0 ? 1 : 0)
                if let reverse {
                    reverse.replace(DevicePageTableEntry(rawValue: leaf[first + j]), with: e,
                                    at: start + UInt64(k0 + j) << 12)
                }
                leaf[first + j] = e.rawValue
                written += 1
            }
        }
        count += added
        return written
    }

    mutating func removeAll() {
        for (key, leaf) in leaves {
            reverse?.forget(leaf, key)
            leaf.deallocate()
        }
        leaves.removeAll()
        cachedKey = .max
        cachedLeaf = nil
        count = 0
    }

    /// Calls `body(address, entry)` for every valid entry (invariant checks).
    func forEachValid(_ body: (UInt64, DevicePageTableEntry) -> Void) {
        for (key, leaf) in leaves {
            for i in 0..<512 where leaf[i] & 1 != 0 {
                body(key << 21 | UInt64(i) << 12, DevicePageTableEntry(rawValue: leaf[i]))
            }
        }
    }

    /// Checked mode: report every change to `shared` from now on; call on an empty table.
    mutating func trackReverseMappings(in shared: ReverseMappings) { reverse = shared }
}
