import Synchronization
import NIOConcurrencyHelpers

/// Kind of device memory behind a pgmap (`enum memory_type`).
public enum MemoryType: Sendable, Equatable {
    /// `MEMORY_DEVICE_PRIVATE`: metadata only; the CPU cannot touch the bytes, and
    /// page-table entries for it are special swap-like entries.
    case devicePrivate
    /// `MEMORY_DEVICE_COHERENT`: CPU-addressable device memory mapped by normal PTEs.
    case deviceCoherent
}

/// A registered range of device PFNs (`struct dev_pagemap` after `memremap_pages`).
///
/// Immutable after registration but for `faultsInFlight` (atomic); any thread may read it.
public final class DevicePagemap: @unchecked Sendable {
    public let type: MemoryType
    /// First PFN of the range.
    public let firstPFN: PFN
    /// Number of 4 KiB pages.
    public let pageCount: Int
    /// `dev_pagemap.owner`: matched against `MigrateVMA.pgmapOwner` and `HMMRange.devicePrivateOwner`.
    public let owner: PgmapOwner
    /// `dev_pagemap.ops`.
    public let ops: any DevicePagemapOps
    /// CPU-visible bytes of a device-coherent range (`pageCount * pageSize`), nil for private.
    public let coherentBytes: UnsafeMutableRawPointer?
    let slot: Int
    /// CPU faults holding a reference on one of this pgmap's pages (see `faultsInFlight`).
    let faultReferences = Synchronization.Atomic<Int>(0)

    /// CPU faults on this pgmap's pages in flight: counted from before the fault takes its
    /// page reference until after it drops it (`do_swap_page`'s `get_page` … `put_page`
    /// around `migrate_to_ram`), so that while a fault holds a page, this is not 0. A
    /// driver evicting the pgmap waits for it, as `memunmap_pages` waits for the
    /// pgmap's references (`pgmap->ref`): such a page is busy for a moment, not pinned.
    public var faultsInFlight: Int { faultReferences.load(ordering: .sequentiallyConsistent) }

    init(type: MemoryType, firstPFN: PFN, pageCount: Int, owner: PgmapOwner,
         ops: any DevicePagemapOps, coherentBytes: UnsafeMutableRawPointer?, slot: Int) {
        self.type = type
        self.firstPFN = firstPFN
        self.pageCount = pageCount
        self.owner = owner
        self.ops = ops
        self.coherentBytes = coherentBytes
        self.slot = slot
    }

    /// The PFNs of this pgmap.
    public var pfns: Range<PFN> { firstPFN ..< firstPFN + pageCount }
}

/// The table of registered pgmaps, indexed by a slot stored in each page's metadata
/// (`page->pgmap`). Slots are read lock-free; registration takes a lock.
final class PagemapRegistry: @unchecked Sendable {
    static let capacity = 4096
    private let slots: UnsafeMutablePointer<Synchronization.Atomic<UInt>>
    private let lock = NIOLock()
    private var nextPFN: Int
    private let maxPFN: Int

    init(firstPFN: Int, maxPFN: Int) {
        slots = UnsafeMutableRawPointer.allocate(byteCount: Self.capacity * 8, alignment: 8)
            .initializeMemory(as: UInt.self, repeating: 0, count: Self.capacity)
            .withMemoryRebound(to: Synchronization.Atomic<UInt>.self, capacity: Self.capacity) { $0 }
        // Device ranges start on a 2 MiB (section) boundary above RAM.
        nextPFN = (firstPFN + 511) & ~511
        self.maxPFN = maxPFN
    }

    deinit {
        for i in 0..<Self.capacity {
            let bits = slots[i].load(ordering: .relaxed)
            if bits != 0 { Unmanaged<DevicePagemap>.fromOpaque(UnsafeRawPointer(bitPattern: bits)!).release() }
        }
        UnsafeMutableRawPointer(slots).deallocate()
    }

    func pagemap(slot: Int) -> DevicePagemap? {
        let bits = slots[slot].load(ordering: .acquiring)
        guard let p = UnsafeRawPointer(bitPattern: bits) else { return nil }
        return Unmanaged<DevicePagemap>.fromOpaque(p).takeUnretainedValue()
    }

    /// Reserves a PFN range and a slot; `make` builds the pgmap for them.
    func register(pageCount: Int, _ make: (PFN, Int) -> DevicePagemap) throws(HostMMError) -> DevicePagemap {
        lock.lock()
        defer { lock.unlock() }
        do {
            guard nextPFN + pageCount <= maxPFN else { throw .outOfMemory }
            guard let slot = (0..<Self.capacity).first(where: { slots[$0].load(ordering: .relaxed) == 0 }) else {
                throw .outOfMemory
            }
            let pgmap = make(PFN(nextPFN), slot)
            nextPFN = (nextPFN + pageCount + 511) & ~511
            slots[slot].store(UInt(bitPattern: Unmanaged.passRetained(pgmap).toOpaque()), ordering: .releasing)
            return pgmap
        }
    }

    func unregister(_ pgmap: DevicePagemap) {
        lock.withLock {
            let bits = slots[pgmap.slot].exchange(0, ordering: .acquiringAndReleasing)
            if let p = UnsafeRawPointer(bitPattern: bits) { Unmanaged<DevicePagemap>.fromOpaque(p).release() }
        }
    }
}

extension PhysicalMemory {
    /// Registers `pageCount` device pages and returns their pgmap (`memremap_pages`).
    ///
    /// Device-private pgmaps must not pass `coherentBytes`; device-coherent ones must
    /// pass `pageCount * pageSize` CPU-reachable bytes. All pages start free
    /// (refcount 0); take one with `zoneDevicePageInit`.
    /// - Throws: `.invalidArgument` for a zero count or a bytes/type mismatch,
    ///   `.outOfMemory` when the device PFN space is exhausted.
    public func registerPagemap(type: MemoryType, pageCount: Int, owner: PgmapOwner,
                                ops: any DevicePagemapOps,
                                coherentBytes: UnsafeMutableRawPointer? = nil) throws(HostMMError) -> DevicePagemap {
        guard pageCount > 0 else { throw .invalidArgument(reason: "pageCount \(pageCount) is not positive") }
        guard (type == .deviceCoherent) == (coherentBytes != nil) else {
            throw .invalidArgument(reason: type == .deviceCoherent ? "a device-coherent pgmap needs coherentBytes"
                                   : "a device-private pgmap must not pass coherentBytes")
        }
        let pgmap = try pagemaps.register(pageCount: pageCount) { first, slot in
            DevicePagemap(type: type, firstPFN: first, pageCount: pageCount, owner: owner,
                          ops: ops, coherentBytes: coherentBytes, slot: slot)
        }
        let zone: Zone = type == .devicePrivate ? .devicePrivate : .deviceCoherent
        let word = UInt32(pgmap.slot + 1) << 8 | UInt32(zone.rawValue)
        for pfn in pgmap.pfns {
            meta[Int(pfn.rawValue)].zoneAndPgmap.store(word, ordering: .relaxed)
            meta[Int(pfn.rawValue)].refcount.store(0, ordering: .relaxed)
        }
        return pgmap
    }

    /// Removes a pgmap (`memunmap_pages`). Its pages must all be free.
    /// - Throws: `.busy` if any page still has a reference (in checked mode, each such page
    ///   is reported as `devicePageLeaked`); `.invalidArgument` for a pgmap that is not
    ///   registered (already unregistered, or registered with another memory).
    public func unregisterPagemap(_ pgmap: DevicePagemap, fileID: StaticString = #fileID, line: UInt = #line) throws(HostMMError) {
        guard pagemap(of: pgmap.firstPFN) === pgmap else {
            throw .invalidArgument(reason: "the pgmap at \(pgmap.firstPFN) is not registered with this memory")
        }
        if pgmap.pfns.contains(where: { refcount($0) != 0 }) {
            checker?.reportLeaks(self, pgmap, site: CallSite(fileID: fileID, line: line))
            throw .busy
        }
        for pfn in pgmap.pfns { meta[Int(pfn.rawValue)].zoneAndPgmap.store(0, ordering: .relaxed) }
        pagemaps.unregister(pgmap)
    }

    /// Hands a free device page to its driver: refcount 1 and locked, ready to be a
    /// migration destination (`zone_device_page_init`: `set_page_count(1)`, `lock_page`).
    ///
    /// Once the count is 1, an evictor sweeping PFNs (`migrateDeviceRange`'s
    /// `get_page_unless_zero` + trylock) may take a reference and the lock before this
    /// does; like the kernel's `lock_page`, this then sleeps until the evictor finds the
    /// page has nothing to move and lets go (it must not undo the evictor's reference).
    /// - Throws: `.invalidArgument` for a non-device PFN, `.busy` if the page is in use.
    public func zoneDevicePageInit(_ pfn: PFN) throws(HostMMError) {
        guard pfn.rawValue < pfnLimit, isZoneDevice(pfn) else { throw .invalidArgument(reason: "\(pfn) is not a device page") }
        let (exchanged, _) = meta[Int(pfn.rawValue)].refcount.compareExchange(
            expected: 0, desired: 1, ordering: .acquiringAndReleasing)
        guard exchanged else { throw .busy }
        lockPage(pfn)
    }
}
