import NIOConcurrencyHelpers
import Synchronization

/// What a region is: emulated System RAM, or a device pool.
public enum RegionKind: String, Sendable {
    case host
    case vram
}

/// A snapshot of one registered region, as `DMAEngine.region(_:)` reports it.
public struct RegionInfo: Sendable, Equatable {
    public var id: RegionID
    public var kind: RegionKind
    public var name: String
    public var length: Int
}

/// One row of the region table: trivial, so channels copy it without ARC.
struct RegionEntry: @unchecked Sendable {
    var base: UnsafeMutableRawPointer?
    var length: Int
    /// The files the engine reaches the bytes through (VRAM memfds), or `.memory`.
    var layout: FileLayout
    var kind: RegionKind
    /// False once unregistration began: new descriptors naming it are refused.
    var active: Bool

    static let empty = RegionEntry(base: nil, length: 0, layout: .memory, kind: .host, active: false)
}

/// The engine's table of regions, indexed by `RegionID.rawValue`.
///
/// Writers (register/unregister) take `lock` and bump `generation`;
/// channels keep a private copy (`RegionSnapshot`) and refresh it when the
/// generation moved, so the per-descriptor path reads one atomic and no lock.
/// Threads: any; methods without a `Locked` suffix take the lock themselves.
final class RegionTable: @unchecked Sendable {
    let lock = NIOLock()
    /// Guarded by `lock`.
    private var entries: [RegionEntry] = []
    private var names: [String] = []
    let generation = Synchronization.Atomic<UInt64>(0)

    /// A copy of the table and the generation it belongs to.
    func copy() -> ([RegionEntry], UInt64) {
        lock.withLock { (entries, generation.load(ordering: .acquiring)) }
    }

    func info(_ id: RegionID) -> RegionInfo? {
        lock.withLock {
            let i = Int(id.rawValue)
            guard i < entries.count, entries[i].base != nil else { return nil }
            return RegionInfo(id: id, kind: entries[i].kind, name: names[i], length: entries[i].length)
        }
    }

    /// A fresh id (never reused) whose entry stays empty until `fill`; nil when ids are exhausted.
    func reserveID() -> RegionID? {
        lock.withLock {
            guard entries.count <= Int(UInt32.max) else { return nil }
            entries.append(.empty)
            names.append("")
            return RegionID(rawValue: UInt32(entries.count - 1))
        }
    }

    /// Publishes the entry of a reserved id.
    func fill(_ id: RegionID, _ entry: RegionEntry, name: String) {
        lock.withLock {
            entries[Int(id.rawValue)] = entry
            names[Int(id.rawValue)] = name
            generation.add(1, ordering: .releasing)
        }
    }

    /// Marks a region (in)active; returns false if it is not registered.
    func setActive(_ id: RegionID, _ active: Bool) -> Bool {
        lock.withLock {
            let i = Int(id.rawValue)
            guard i < entries.count, entries[i].base != nil else { return false }
            entries[i].active = active
            generation.add(1, ordering: .releasing)
            return true
        }
    }

    func remove(_ id: RegionID) {
        lock.withLock {
            entries[Int(id.rawValue)] = .empty
            generation.add(1, ordering: .releasing)
        }
    }

    var registeredIDs: [RegionID] {
        lock.withLock {
            entries.indices.filter { entries[$0].base != nil }.map { RegionID(rawValue: UInt32($0)) }
        }
    }
}

/// A channel's private copy of the region table (owned by one channel, read under its lock).
struct RegionSnapshot: ~Copyable {
    private(set) var storage: UnsafeMutableBufferPointer<RegionEntry>
    private(set) var count = 0
    var generation: UInt64 = .max

    init() { storage = .allocate(capacity: 16) }

    mutating func refresh(from entries: [RegionEntry], generation: UInt64) {
        if entries.count > storage.count {
            storage.deallocate()
            storage = .allocate(capacity: max(entries.count, storage.count * 2))
        }
        _ = storage.initialize(fromContentsOf: entries)
        count = entries.count
        self.generation = generation
    }

    @inline(__always)
    func lookup(_ id: RegionID) -> RegionEntry? {
        let i = Int(id.rawValue)
        guard i < count else { return nil }
        let e = storage[i]
        return e.active && e.base != nil ? e : nil
    }

    deinit { storage.deallocate() }
}
