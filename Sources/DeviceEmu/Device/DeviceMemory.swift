public import DMAEngine
public import HostMM
import NIOConcurrencyHelpers
import Synchronization

/// A device's memory: VRAM pools (memfds registered with a copy engine) cut into chunks,
/// each chunk registered with HostMM as a device pgmap the first time a page of it is
/// needed, and a free list of device pages.
///
/// Models the chunk allocator of `nouveau_dmem.c` (`nouveau_dmem_chunk_alloc`,
/// `nouveau_dmem_page_alloc_locked`, `nouveau_dmem_page_free`) and of lib/test_hmm.c
/// (`dmirror_allocate_chunk`, with 256 MiB chunks). It is the reusable half of a device
/// model: the pgmap callbacks go to the `ops` object given at init, whose `pageFree` must
/// hand the page back with `freePage(_:)`.
///
/// Pages come out of `allocPages` with refcount 1 and locked (`zone_device_page_init`):
/// ready to be migration destinations. A fresh chunk hands its pages out in ascending
/// PFN (and VRAM offset) order, so a batch lands contiguous in VRAM and the copy engine
/// coalesces it.
///
/// Threads: any. Allocation, freeing and chunk growth take one lock; translating a PFN
/// (`dmaAddress(of:)`, `bytes(of:)`, `pageIndex(of:)`) is lock-free.
public final class DeviceMemory: @unchecked Sendable {
    /// Sizes and kind of the memory.
    public struct Configuration: Sendable, Equatable {
        /// Total VRAM bytes (a multiple of `chunkSize`).
        public var size: Int
        /// Bytes per chunk, the unit registered as one pgmap (a multiple of 4 KiB that divides `poolSize`).
        public var chunkSize: Int
        /// Bytes per memfd pool; VRAM is split into `ceil(size / poolSize)` pools.
        public var poolSize: Int
        /// `.devicePrivate` (nouveau, dmirror) or `.deviceCoherent` (CPU-reachable through the pool mapping).
        public var type: MemoryType
        /// Prefix of the memfd names.
        public var name: String
        /// How each pool is laid out in files (see `VRAMPool.Layout`).
        public var layout: VRAMPool.Layout

        public init(size: Int, chunkSize: Int = 2 << 20, poolSize: Int = 1 << 30,
                    type: MemoryType = .devicePrivate, name: String = "vram", layout: VRAMPool.Layout = .default) {
            self.size = size
            self.chunkSize = chunkSize
            self.poolSize = poolSize
            self.type = type
            self.name = name
            self.layout = layout
        }
    }

    /// One registered chunk.
    public struct Chunk: Sendable {
        /// The pgmap HostMM registered for it.
        public let pagemap: DevicePagemap
        /// The pool holding its bytes.
        public let pool: VRAMPool
        /// Byte offset of the chunk in `pool`.
        public let poolOffset: Int
        /// Its PFNs.
        public var pfns: Range<PFN> { pagemap.pfns }
    }

    public let memory: PhysicalMemory
    public let configuration: Configuration
    /// `dev_pagemap.owner` of every chunk.
    public let owner: PgmapOwner
    /// The memfd pools, registered with the engine given at init.
    public let pools: [VRAMPool]
    /// Device pages in all of VRAM (`size / 4096`).
    public let pageCount: Int
    /// Pages per chunk.
    public let chunkPageCount: Int
    /// Chunks VRAM can hold.
    public let maxChunks: Int

    let ops: any DevicePagemapOps
    let table: ChunkTable
    private let engine: DMAEngine
    private let lock = NIOLock()
    // Guarded by `lock`:
    private let freeStack: UnsafeMutablePointer<PFN>
    private var freeCount = 0
    private var chunkList: [Chunk] = []
    private var isRetired = false
    /// Pages handed back that were not ours, or taken while still in use (protocol errors).
    private let strayFrees = Synchronization.Atomic<Int>(0)
    /// Checked mode only (nil otherwise): which pages (dense index) are on the free list,
    /// to catch a page handed back twice. Guarded by `lock`.
    var freeBits: FreeBitmap?

    /// Creates the pools and registers them with `engine`; no chunk is registered yet.
    /// - Throws: `.invalidArgument` for sizes that do not divide as documented,
    ///   `.outOfMemory` for more pages than `memory` has device PFNs for (`maxDevicePages`),
    ///   `.dma` if a pool cannot be created.
    public init(memory: PhysicalMemory, engine: DMAEngine, configuration: Configuration,
                owner: PgmapOwner, ops: any DevicePagemapOps) throws(DeviceError) {
        let c = configuration
        guard c.size > 0, c.chunkSize > 0, c.chunkSize % pageSize == 0, c.size % c.chunkSize == 0,
              c.poolSize >= c.chunkSize, c.poolSize % c.chunkSize == 0 else {
            throw .invalidArgument(reason: "VRAM size \(c.size) must be a positive multiple of chunkSize \(c.chunkSize) "
                                   + "(itself a positive multiple of \(pageSize)), and poolSize \(c.poolSize) a multiple of chunkSize")
        }
        // More VRAM than HostMM has device PFNs for could never be registered: refuse it
        // before creating (and populating) pools for it.
        guard c.size / pageSize <= memory.maxPFN - memory.ramPageCount else { throw .hostMM(.outOfMemory) }
        self.memory = memory
        self.configuration = c
        self.owner = owner
        self.ops = ops
        self.engine = engine
        pageCount = c.size / pageSize
        chunkPageCount = c.chunkSize / pageSize
        maxChunks = c.size / c.chunkSize
        var pools: [VRAMPool] = []
        var remaining = c.size
        do {
            while remaining > 0 {
                let size = min(remaining, c.poolSize)
                pools.append(try engine.createVRAMPool(size: size, name: "\(c.name)-\(pools.count)", layout: c.layout))
                remaining -= size
            }
        } catch {
            for pool in pools { try? engine.unregister(pool.region) }
            throw .dma(error)
        }
        self.pools = pools
        table = ChunkTable(memory: memory, capacity: maxChunks, chunkPages: chunkPageCount)
        freeStack = .allocate(capacity: pageCount)
        if memory.checker != nil { freeBits = FreeBitmap(pages: pageCount) }
    }

    deinit {
        _ = try? retire()
        freeStack.deallocate()
    }

    // MARK: Allocation

    /// Takes up to `out.count` free device pages (`nouveau_dmem_page_alloc_locked`, for a
    /// batch), registering new chunks while VRAM has room; each page is returned with
    /// refcount 1 and locked. Returns how many were taken (fewer when VRAM is exhausted).
    public func allocPages(into out: UnsafeMutableBufferPointer<PFN>) -> Int {
        var n = lock.withLock { () -> Int in
            var n = 0
            while n < out.count {
                if freeCount == 0 && !growLocked() { break }
                let take = min(freeCount, out.count - n)
                for _ in 0..<take {
                    freeCount -= 1
                    out[n] = freeStack[freeCount]
                    if freeBits != nil { checkedTake(out[n]) }
                    n += 1
                }
            }
            return n
        }
        // zone_device_page_init outside the lock; a page found in use is a driver bug
        // (freed twice): count it and leave it out.
        var i = 0
        while i < n {
            do {
                try memory.zoneDevicePageInit(out[i])
                i += 1
            } catch {
                strayFrees.add(1, ordering: .relaxed)
                n -= 1
                out[i] = out[n]
            }
        }
        Self.ascend(UnsafeMutableBufferPointer(rebasing: out[0..<n]))
        return n
    }

    /// Puts a batch of pages in ascending PFN (so VRAM offset) order. The free stack hands
    /// back a range freed in ascending order reversed (faults free pages front to back), and
    /// destinations that run backwards would cost the copy engine one operation per page
    /// instead of one per contiguous run. An ascending or reversed batch costs one pass and
    /// no allocation; only a shuffled one (VRAM freed in random order) is sorted. The
    /// driver sorts the RAM pages it copies into the same way, so that their iovecs merge.
    static func ascend(_ batch: UnsafeMutableBufferPointer<PFN>) {
        var pages = batch
        guard pages.count > 1 else { return }
        var ascending = true, descending = true
        for i in 1..<pages.count {
            if pages[i] < pages[i - 1] { ascending = false } else { descending = false }
            if !ascending && !descending { break }
        }
        if ascending { return }
        if descending { pages.reverse() } else { pages.sort() }
    }

    /// One free device page, locked with refcount 1, or nil when VRAM is exhausted
    /// (`nouveau_dmem_page_alloc_locked`).
    public func allocPage() -> PFN? {
        var pfn = PFN(0)
        let got = withUnsafeMutablePointer(to: &pfn) { allocPages(into: UnsafeMutableBufferPointer(start: $0, count: 1)) }
        return got == 1 ? pfn : nil
    }

    /// Returns a page to the free list (`nouveau_dmem_page_free`); call it from the pgmap's
    /// `pageFree` (the page's refcount is 0 then). PFNs of other memory, and pages that
    /// still have references (a later allocation would hand out a page in use), are counted
    /// and ignored.
    public func freePage(_ pfn: PFN) {
        guard table.chunkIndex(of: pfn) != nil, memory.refcount(pfn) == 0 else {
            strayFrees.add(1, ordering: .relaxed)
            return
        }
        let twice = lock.withLock { () -> Bool in
            guard !isRetired else { return false }
            if freeBits != nil, !checkedGiveBack(pfn) { return true }
            guard freeCount < pageCount else { return false }
            freeStack[freeCount] = pfn
            freeCount += 1
            return false
        }
        if twice { reportFreedTwice(pfn) }
    }

    /// Registers the next chunk (the lock is held). False when VRAM is fully registered
    /// or HostMM has no device PFN range left.
    private func growLocked() -> Bool {
        guard !isRetired, chunkList.count < maxChunks else { return false }
        let index = chunkList.count
        let byteOffset = index * configuration.chunkSize
        let pool = pools[byteOffset / configuration.poolSize]
        let poolOffset = byteOffset % configuration.poolSize
        let base = pool.mapping.baseAddress! + poolOffset
        let pagemap: DevicePagemap
        do {
            pagemap = try memory.registerPagemap(
                type: configuration.type, pageCount: chunkPageCount, owner: owner, ops: ops,
                coherentBytes: configuration.type == .deviceCoherent ? base : nil)
        } catch {
            return false
        }
        table.publish(index, firstPFN: pagemap.firstPFN, region: pool.region, poolOffset: poolOffset, base: base)
        chunkList.append(Chunk(pagemap: pagemap, pool: pool, poolOffset: poolOffset))
        // Highest PFN first on the stack: pops hand out ascending PFNs.
        for k in stride(from: chunkPageCount - 1, through: 0, by: -1) {
            freeStack[freeCount] = pagemap.firstPFN + k
            freeCount += 1
        }
        freeBits?.setRange(index * chunkPageCount ..< (index + 1) * chunkPageCount)
        return true
    }

    // MARK: State

    /// Pages on the free list.
    public var freePageCount: Int { lock.withLock { freeCount } }
    /// Pages of registered chunks that are not free (in use or being migrated).
    public var inUsePageCount: Int { lock.withLock { chunkList.count * chunkPageCount - freeCount } }
    /// Pages that `allocPages` could still hand out, counting chunks not registered yet.
    public var availablePageCount: Int {
        lock.withLock { isRetired ? 0 : freeCount + (maxChunks - chunkList.count) * chunkPageCount }
    }
    /// The pages on the free list (for invariant checks; takes the lock).
    var freeListSnapshot: [PFN] { lock.withLock { (0..<freeCount).map { freeStack[$0] } } }
    /// The chunks registered so far, in registration order.
    public var chunks: [Chunk] { lock.withLock { chunkList } }
    /// CPU faults holding one of this memory's pages right now (`DevicePagemap.faultsInFlight`
    /// summed over the chunks): an eviction that finds pages busy waits while it is not 0.
    public var faultsInFlight: Int { chunks.reduce(0) { $0 + $1.pagemap.faultsInFlight } }
    /// `freePage` calls for foreign PFNs and pages found in use when allocated: 0 in a correct driver.
    public var strayFreeCount: Int { strayFrees.load(ordering: .relaxed) }

    /// Unregisters every chunk (`memunmap_pages`) once all pages are free, and the pools
    /// from the copy engine; afterwards the memory hands out nothing (the pools' mappings
    /// stay valid while this object lives). Idempotent.
    /// - Throws: `.busy` (nothing unregistered) while any device page is still in use.
    ///   In checked mode each page still in use (or lost by the driver) is reported as a
    ///   `devicePageLeaked` violation.
    public func retire(fileID: StaticString = #fileID, line: UInt = #line) throws(DeviceError) {
        var leakCheck: (chunks: [Chunk], free: FreeBitmap)?
        lock.lock()
        let outcome = retireLocked(&leakCheck)
        lock.unlock()
        if let leakCheck { reportLeaks(leakCheck.chunks, leakCheck.free, fileID: fileID, line: line) }
        try outcome.get()
    }

    /// The body of `retire` (the lock is held); hands back what a leak report needs.
    private func retireLocked(_ leakCheck: inout (chunks: [Chunk], free: FreeBitmap)?) -> Result<Void, DeviceError> {
        guard !isRetired else { return .success(()) }
        guard freeCount == chunkList.count * chunkPageCount else {
            if let freeBits { leakCheck = (chunkList, freeBits) }
            return .failure(.busy)
        }
        while let chunk = chunkList.last {
            do { try memory.unregisterPagemap(chunk.pagemap) } catch { return .failure(.busy) }
            chunkList.removeLast()
        }
        table.clear()
        freeCount = 0
        isRetired = true
        for pool in pools { try? engine.unregister(pool.region) }
        return .success(())
    }

    // MARK: Translation (lock-free)

    /// The copy-engine address of a device page of this memory (`nouveau_dmem_page_addr`).
    @inline(__always)
    public func dmaAddress(of pfn: PFN) -> DMAAddress? {
        guard let (slot, offset) = table.locate(pfn) else { return nil }
        return DMAAddress(region: slot.region, offset: slot.poolOffset + offset * pageSize)
    }

    /// The bytes of a device page through the pool's shared mapping: what the GPU's own
    /// loads and stores reach (and the CPU, for device-coherent memory).
    @inline(__always)
    public func bytes(of pfn: PFN) -> UnsafeMutableRawPointer? {
        guard let (slot, offset) = table.locate(pfn) else { return nil }
        return slot.base + offset * pageSize
    }

    /// A dense index `0 ..< pageCount` for a page of this memory (chunk order), for
    /// per-page driver tables (LRU lists, residency times).
    @inline(__always)
    public func pageIndex(of pfn: PFN) -> Int? {
        guard let chunk = table.chunkIndex(of: pfn) else { return nil }
        return chunk * chunkPageCount + (pfn - table.slot(chunk).firstPFN)
    }

    /// The page with dense index `index`, if its chunk is registered.
    public func pfn(atIndex index: Int) -> PFN? {
        guard index >= 0, index < pageCount else { return nil }
        let chunk = index / chunkPageCount
        guard chunk < table.published else { return nil }
        return table.slot(chunk).firstPFN + index % chunkPageCount
    }

    /// True for pages of this memory.
    public func contains(_ pfn: PFN) -> Bool { table.chunkIndex(of: pfn) != nil }
}
