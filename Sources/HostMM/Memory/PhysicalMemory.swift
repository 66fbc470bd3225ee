#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import NIOConcurrencyHelpers

/// Emulated physical memory: System RAM as one large anonymous mapping cut into 4 KiB
/// frames, the PFN-indexed `struct page` table, the shared zero page, and the device
/// page ranges registered by drivers (`memremap_pages`).
///
/// PFN layout: `0` is the shared zero page, `1 ..< ramPageCount` are allocatable RAM
/// frames, device pgmaps get ranges above RAM. RAM and the metadata table are reserved
/// with `MAP_NORESERVE`, so a 4 GiB machine costs only what is touched.
///
/// Thread-safety: every method may be called from any thread. Per-page state is made
/// of atomics in the metadata table; the frame allocator and registries have locks.
public final class PhysicalMemory: @unchecked Sendable {
    /// Number of RAM frames, including the zero page at PFN 0.
    public let ramPageCount: Int
    /// First byte of emulated RAM (PFN 0). A driver may register
    /// `baseAddress ..< baseAddress + byteCount` with a DMA engine.
    public let baseAddress: UnsafeMutableRawPointer
    /// Bytes of emulated RAM (`ramPageCount * pageSize`).
    public let byteCount: Int
    /// The shared zero page (`ZERO_PAGE(0)`): mapped read-only on anonymous read faults.
    public let zeroPFN = PFN(0)
    /// One past the highest PFN the metadata table covers.
    public let maxPFN: Int
    /// `ramPageCount` and `maxPFN` as raw PFN values: bounds checks compare a caller's PFN
    /// without a conversion (any 64-bit value is a PFN a caller may pass).
    @usableFromInline let ramPFNLimit: UInt64
    @usableFromInline let pfnLimit: UInt64

    @usableFromInline let meta: UnsafeMutablePointer<PageMetadata>
    private let metaBytes: Int
    let frames: FrameAllocator
    let waitQueues: [WaitQueue]
    let pagemaps: PagemapRegistry
    let roots = MappingRootRegistry()
    /// Counters of protocol violations seen (unlock of an unlocked page, refcount underflow).
    public let diagnostics = Diagnostics()
    /// Checked mode's state (violations, oracles), or nil when checked mode is off: every
    /// check is behind one test of this immutable reference.
    public let checker: ProtocolChecker?

    /// Creates emulated RAM of `ramBytes` (a multiple of 4 KiB) and room for
    /// `maxDevicePages` device PFNs. RAM is reserved lazily, so a frame's first use costs a
    /// host page fault; `prefault` backs it all up front (`MAP_POPULATE`), which benchmarks want.
    /// `checked` turns on checked mode (the protocol sanitizer, see `ProtocolChecker`); by
    /// default it follows the `DMEM_CHECKED` environment variable.
    public init(ramBytes: Int = 4 << 30, maxDevicePages: Int = 1 << 24, prefault: Bool = false,
                checked: CheckedMode = .fromEnvironment) throws(HostMMError) {
        guard ramBytes >= 2 * pageSize else {
            throw .invalidArgument(reason: "ramBytes \(ramBytes) is less than 2 pages (\(2 * pageSize))")
        }
        guard ramBytes % pageSize == 0 else {
            throw .invalidArgument(reason: "ramBytes \(ramBytes) is not a multiple of the page size \(pageSize)")
        }
        guard maxDevicePages >= 0 else { throw .invalidArgument(reason: "negative maxDevicePages \(maxDevicePages)") }
        guard maxDevicePages < Int(UInt32.max) - ramBytes / pageSize else {
            throw .invalidArgument(reason: "\(ramBytes / pageSize) RAM pages + maxDevicePages \(maxDevicePages) "
                                   + "do not fit 32-bit PFNs (< \(UInt32.max))")
        }
        ramPageCount = ramBytes / pageSize
        byteCount = ramBytes
        maxPFN = ramPageCount + maxDevicePages
        ramPFNLimit = UInt64(ramPageCount)
        pfnLimit = UInt64(maxPFN)
        let populate = prefault ? MAP_POPULATE : 0
        guard let ram = mmap(nil, ramBytes, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | populate, -1, 0),
              ram != MAP_FAILED else { throw .outOfMemory }
        metaBytes = maxPFN * MemoryLayout<PageMetadata>.stride
        guard let table = mmap(nil, metaBytes, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              table != MAP_FAILED else {
            munmap(ram, ramBytes)
            throw .outOfMemory
        }
        baseAddress = ram
        meta = table.bindMemory(to: PageMetadata.self, capacity: maxPFN)
        frames = try FrameAllocator(firstPFN: 1, endPFN: UInt32(ramPageCount))
        waitQueues = (0..<128).map { _ in WaitQueue() }
        pagemaps = PagemapRegistry(firstPFN: ramPageCount, maxPFN: maxPFN)
        checker = checked.isEnabled ? ProtocolChecker(mode: checked, diagnostics: diagnostics, pfnLimit: pfnLimit) : nil
        meta[0].refcount.store(1, ordering: .relaxed)
        meta[0].flags.store(PageFlags([.reserved, .uptodate]).rawValue, ordering: .relaxed)
    }

    deinit {
        munmap(baseAddress, byteCount)
        munmap(UnsafeMutableRawPointer(meta), metaBytes)
    }

    /// Counters of broken driver-protocol rules; all zero in a correct run. They count
    /// whether or not checked mode is on; checked mode adds the page and call site.
    public final class Diagnostics: Sendable {
        let badUnlocks = Atomic<Int>(0)
        let refcountUnderflows = Atomic<Int>(0)
        let badPFNs = Atomic<Int>(0)
        let violations = Atomic<Int>(0)
        /// Public page calls that named a PFN outside the metadata table (ignored).
        public var invalidPFNCount: Int { badPFNs.load(ordering: .relaxed) }
        /// `unlockPage` called on a page that was not locked.
        public var unlocksOfUnlockedPages: Int { badUnlocks.load(ordering: .relaxed) }
        /// `putPage` called on a page whose refcount was already 0.
        public var refcountUnderflowCount: Int { refcountUnderflows.load(ordering: .relaxed) }
        /// Protocol violations checked mode found (`checker.violationCount`; 0 when it is off).
        public var protocolViolationCount: Int { violations.load(ordering: .relaxed) }
    }

    // MARK: PFN classification

    /// True when `pfn` is RAM or belongs to a registered pgmap.
    public func isValid(_ pfn: PFN) -> Bool {
        pfn.rawValue < ramPFNLimit || pagemap(of: pfn) != nil
    }

    /// True for System-RAM frames (including the zero page).
    @inlinable public func isRAM(_ pfn: PFN) -> Bool { pfn.rawValue < ramPFNLimit }

    /// The zone of a frame (`page_zonenum` / `is_device_private_page` …).
    public func zone(_ pfn: PFN) -> Zone {
        guard pfn.rawValue < pfnLimit else { return .normal }
        return Zone(rawValue: UInt8(meta[Int(truncatingIfNeeded: pfn.rawValue)].zoneAndPgmap.load(ordering: .relaxed) & 0xff)) ?? .normal
    }

    /// `is_zone_device_page()`.
    func isZoneDevice(_ pfn: PFN) -> Bool {
        pfn.rawValue < pfnLimit && meta[Int(truncatingIfNeeded: pfn.rawValue)].zoneAndPgmap.load(ordering: .relaxed) & 0xff != 0
    }

    /// `is_device_private_page()`.
    public func isDevicePrivate(_ pfn: PFN) -> Bool { zone(pfn) == .devicePrivate }

    /// `is_device_coherent_page()`.
    public func isDeviceCoherent(_ pfn: PFN) -> Bool { zone(pfn) == .deviceCoherent }

    /// The pgmap owning a device frame (`page_pgmap`), or nil for RAM.
    public func pagemap(of pfn: PFN) -> DevicePagemap? {
        guard pfn.rawValue < pfnLimit else { return nil }
        let slot = meta[Int(truncatingIfNeeded: pfn.rawValue)].zoneAndPgmap.load(ordering: .relaxed) >> 8
        return slot == 0 ? nil : pagemaps.pagemap(slot: Int(slot) - 1)
    }

    /// Pointer to the 4 KiB the CPU reaches at `pfn`: RAM and device-coherent frames;
    /// nil for device-private frames (no CPU-visible bytes) and invalid PFNs.
    public func bytes(_ pfn: PFN) -> UnsafeMutableRawPointer? {
        if isRAM(pfn) { return baseAddress + Int(pfn.rawValue) * pageSize }
        guard let pgmap = pagemap(of: pfn), let base = pgmap.coherentBytes else { return nil }
        return base + (pfn - pgmap.firstPFN) * pageSize
    }

    /// Number of RAM frames still free.
    public var freeRAMPageCount: Int { frames.freeCount }

    /// Bounds check for the public per-page calls: a PFN past the table is ignored and counted.
    @inline(__always) func checked(_ pfn: PFN) -> Bool {
        if pfn.rawValue < pfnLimit { return true }
        diagnostics.badPFNs.wrappingAdd(1, ordering: .relaxed)
        return false
    }

    // MARK: struct page fields

    /// `page_ref_count()`.
    public func refcount(_ pfn: PFN) -> Int { guard checked(pfn) else { return 0 }; return Int(meta[Int(truncatingIfNeeded: pfn.rawValue)].refcount.load(ordering: .acquiring)) }
    /// `page_mapcount()` (0-based: number of page-table entries mapping the page).
    public func mapcount(_ pfn: PFN) -> Int { guard checked(pfn) else { return 0 }; return Int(meta[Int(truncatingIfNeeded: pfn.rawValue)].mapcount.load(ordering: .acquiring)) }
    /// `page->flags`.
    public func flags(_ pfn: PFN) -> PageFlags { guard checked(pfn) else { return [] }; return PageFlags(rawValue: meta[Int(truncatingIfNeeded: pfn.rawValue)].flags.load(ordering: .acquiring)) }
    /// True when `page->mapping` names an anonymous VMA family (`PageAnon`).
    public func isAnon(_ pfn: PFN) -> Bool { checked(pfn) && PageMapping.isAnon(mapping(pfn)) }
    /// `page->index`.
    public func index(_ pfn: PFN) -> UInt64 { guard checked(pfn) else { return 0 }; return meta[Int(truncatingIfNeeded: pfn.rawValue)].index.load(ordering: .relaxed) }
    /// The driver's private word (`page->zone_device_data`).
    public func zoneDeviceData(_ pfn: PFN) -> UInt64 { guard checked(pfn) else { return 0 }; return meta[Int(truncatingIfNeeded: pfn.rawValue)].zoneDeviceData.load(ordering: .acquiring) }
    /// Sets the driver's private word (`page->zone_device_data = …`).
    public func setZoneDeviceData(_ pfn: PFN, _ value: UInt64) {
        guard checked(pfn) else { return }
        meta[Int(truncatingIfNeeded: pfn.rawValue)].zoneDeviceData.store(value, ordering: .releasing)
    }

    func mapping(_ pfn: PFN) -> UInt64 { meta[Int(truncatingIfNeeded: pfn.rawValue)].mapping.load(ordering: .acquiring) }
    func setMapping(_ pfn: PFN, _ word: UInt64, index: UInt64) {
        meta[Int(truncatingIfNeeded: pfn.rawValue)].index.store(index, ordering: .relaxed)
        meta[Int(truncatingIfNeeded: pfn.rawValue)].mapping.store(word, ordering: .releasing)
    }
    func setFlags(_ pfn: PFN, _ f: PageFlags) { meta[Int(truncatingIfNeeded: pfn.rawValue)].flags.bitwiseOr(f.rawValue, ordering: .acquiringAndReleasing) }
    func clearFlags(_ pfn: PFN, _ f: PageFlags) { meta[Int(truncatingIfNeeded: pfn.rawValue)].flags.bitwiseAnd(~f.rawValue, ordering: .acquiringAndReleasing) }
    /// Atomically clears `f`, returning whether it was set (`TestClearPage…`).
    func testAndClearFlags(_ pfn: PFN, _ f: PageFlags) -> Bool {
        meta[Int(truncatingIfNeeded: pfn.rawValue)].flags.bitwiseAnd(~f.rawValue, ordering: .acquiringAndReleasing).oldValue & f.rawValue != 0
    }
    func addMapcount(_ pfn: PFN, _ delta: Int32) {
        meta[Int(truncatingIfNeeded: pfn.rawValue)].mapcount.wrappingAdd(delta, ordering: .acquiringAndReleasing)
    }
}
