import DMAEngine
import DeviceEmu
import HostMM
import Synchronization
import Testing

/// A minimal driver over `DeviceMemory`, as another device model (test_hmm's dmirror) would be.
final class ChunkOnlyDriver: DevicePagemapOps, @unchecked Sendable {
    var memory: DeviceMemory!
    let freed = Atomic<Int>(0)
    func pageFree(_ pfn: PFN, pagemap: DevicePagemap) {
        freed.add(1, ordering: .relaxed)
        memory.freePage(pfn)
    }
    func migrateToRAM(_ fault: VMFault) -> VMFaultResult { .sigbus }
}

@Suite struct DeviceMemoryTests {
    func make(_ memory: PhysicalMemory, _ engine: DMAEngine, size: Int, chunk: Int = 2 << 20, pool: Int = 1 << 30,
              type: MemoryType = .devicePrivate) throws -> (DeviceMemory, ChunkOnlyDriver) {
        let driver = ChunkOnlyDriver()
        let owner = PgmapOwner(driver)
        let vram = try DeviceMemory(memory: memory, engine: engine,
                                    configuration: .init(size: size, chunkSize: chunk, poolSize: pool, type: type),
                                    owner: owner, ops: driver)
        driver.memory = vram
        return (vram, driver)
    }

    @Test func chunksAreRegisteredOnDemandAndPagesComeOutAscendingAndLocked() throws {
        let memory = try makeMemory(mib: 16)
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        let (vram, _) = try make(memory, engine, size: 8 << 20)
        #expect(vram.chunks.isEmpty && vram.pageCount == 2048 && vram.maxChunks == 4)
        #expect(vram.availablePageCount == 2048)
        var pages = [PFN](repeating: PFN(0), count: 600)
        let got = pages.withUnsafeMutableBufferPointer { vram.allocPages(into: $0) }
        #expect(got == 600)
        #expect(vram.chunks.count == 2)   // 512 + 88 pages
        for k in 1..<600 where k != 512 { #expect(pages[k] == pages[k - 1] + 1) }
        for p in pages {
            #expect(memory.refcount(p) == 1 && memory.isPageLocked(p) && memory.isDevicePrivate(p))
            #expect(memory.pagemap(of: p)?.owner == vram.owner)
        }
        #expect(vram.inUsePageCount == 600 && vram.freePageCount == 424 && vram.availablePageCount == 1448)
        // Chunk k lives at byte k × 2 MiB of the pool.
        #expect(vram.dmaAddress(of: pages[0])?.offset == 0)
        #expect(vram.dmaAddress(of: pages[513])?.offset == (2 << 20) + 4096)
        #expect(vram.dmaAddress(of: pages[0])?.region == vram.pools[0].region)
        #expect(vram.bytes(of: pages[1]) == vram.pools[0].mapping.baseAddress! + 4096)
        #expect(vram.pageIndex(of: pages[513]) == 513 && vram.pfn(atIndex: 513) == pages[513])
        #expect(vram.dmaAddress(of: PFN(5)) == nil && !vram.contains(PFN(5)))
        for p in pages { memory.unlockPage(p); memory.putPage(p) }
        #expect(vram.inUsePageCount == 0 && vram.freePageCount == 1024)
        #expect(memory.diagnostics.refcountUnderflowCount == 0)
    }

    /// A batch comes out in ascending PFN order however its pages were freed (front to back,
    /// back to front, shuffled), so a migration's destinations stay contiguous in VRAM
    /// and the copy engine coalesces them.
    @Test(arguments: ["ascending", "descending", "shuffled"])
    func batchesComeOutAscendingWhateverTheFreeOrder(_ order: String) throws {
        let memory = try makeMemory(mib: 16)
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        let (vram, _) = try make(memory, engine, size: 4 << 20)
        var pages = [PFN](repeating: PFN(0), count: 512)
        #expect(pages.withUnsafeMutableBufferPointer { vram.allocPages(into: $0) } == 512)
        var freeOrder = pages
        switch order {
        case "descending": freeOrder.reverse()
        case "shuffled":
            var rng = SplitMix64(seed: 5)
            freeOrder.shuffle(using: &rng)
        default: break
        }
        for p in freeOrder { memory.unlockPage(p); memory.putPage(p) }
        var again = [PFN](repeating: PFN(0), count: 300)
        #expect(again.withUnsafeMutableBufferPointer { vram.allocPages(into: $0) } == 300)
        #expect(zip(again, again.dropFirst()).allSatisfy { $0 < $1 }, "\(order): \(again.prefix(8))")
        #expect(Set(again).isSubset(of: Set(pages)), "freed pages are reused before a new chunk")
        #expect(vram.chunks.count == 1)
    }

    /// The migration that follows a CPU read-back (which frees VRAM front to back) lands
    /// ascending in VRAM, one run per chunk, not one copy per page.
    @Test func migrationIntoVRAMFreedByFaultsIsContiguous() throws {
        let memory = try makeMemory(mib: 32)
        let gpu = try makeDevice(memory, vramMiB: 4)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 512, seed: 7)
        let b = try mm.mmap(length: 512 * pageSize)
        try pattern.fill(mm, b, pages: 512)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 512)).migrated == 512)
        #expect(try pattern.cpuMismatches(mm, a, pages: 512).isEmpty)  // faults free the pages front to back
        #expect(gpu.vram.inUsePageCount == 0)
        #expect(try gpu.migrateToDevice(mm, range: range(b, pages: 512)).migrated == 512)
        let pfns = (0..<512).map { mm.pageTableEntry(b + UInt64($0 * pageSize)).pfn }
        #expect(zip(pfns, pfns.dropFirst()).allSatisfy { $1 == $0 + 1 }, "\(pfns.prefix(4)) … \(pfns.suffix(4))")
        #expect(try pattern.cpuMismatches(mm, b, pages: 512).isEmpty)
    }

    @Test func vramIsExhaustedAtItsSizeAndFreedPagesComeBack() throws {
        let memory = try makeMemory(mib: 16)
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        let (vram, driver) = try make(memory, engine, size: 4 << 20)
        var pages = [PFN](repeating: PFN(0), count: 1100)
        let got = pages.withUnsafeMutableBufferPointer { vram.allocPages(into: $0) }
        #expect(got == 1024 && vram.availablePageCount == 0 && vram.allocPage() == nil)
        memory.unlockPage(pages[7])
        memory.putPage(pages[7])
        #expect(driver.freed.load(ordering: .relaxed) == 1)
        #expect(vram.allocPage() == pages[7])
        #expect(vram.strayFreeCount == 0)
    }

    @Test func poolsSplitVRAMAndBigChunksWork() throws {
        let memory = try makeMemory(mib: 16)
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        // dmirror's shape: 256 MiB chunks; here 2 pools of 256 MiB.
        let (vram, _) = try make(memory, engine, size: 512 << 20, chunk: 256 << 20, pool: 256 << 20)
        #expect(vram.pools.count == 2 && vram.pools.allSatisfy { $0.size == 256 << 20 })
        var pages = [PFN](repeating: PFN(0), count: 65537)
        let got = pages.withUnsafeMutableBufferPointer { vram.allocPages(into: $0) }
        #expect(got == 65537 && vram.chunks.count == 2)
        #expect(vram.dmaAddress(of: pages[65536]) == DMAAddress(region: vram.pools[1].region, offset: 0))
        for p in pages { memory.unlockPage(p); memory.putPage(p) }
        try vram.retire()
    }

    /// Chunks smaller than 2 MiB share their 2 MiB section with the PFNs just past them
    /// (HostMM starts every pgmap on a section): those PFNs are not this memory's, so
    /// translation refuses them, while a chunk's last page translates.
    @Test func thePFNJustPastASmallChunkIsNotTranslated() throws {
        let memory = try makeMemory(mib: 16)
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        let (vram, _) = try make(memory, engine, size: 2 << 20, chunk: 1 << 20)
        var pages = [PFN](repeating: PFN(0), count: 257)
        #expect(pages.withUnsafeMutableBufferPointer { vram.allocPages(into: $0) } == 257)
        #expect(vram.chunks.count == 2)
        for (k, chunk) in vram.chunks.enumerated() {
            let last = chunk.pfns.upperBound + (-1), past = chunk.pfns.upperBound
            #expect(vram.contains(last) && vram.pageIndex(of: last) == k * 256 + 255)
            #expect(vram.dmaAddress(of: last) != nil && vram.bytes(of: last) != nil)
            #expect(past.rawValue >> 9 == chunk.pfns.lowerBound.rawValue >> 9, "the premise: one section")
            #expect(!vram.contains(past) && vram.pageIndex(of: past) == nil)
            #expect(vram.dmaAddress(of: past) == nil && vram.bytes(of: past) == nil)
        }
        for p in pages { memory.unlockPage(p); memory.putPage(p) }
        try vram.retire()
    }

    @Test func badSizesAreRejected() throws {
        let memory = try makeMemory(mib: 16)
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        #expect(throws: DeviceError.invalidArgument) { try make(memory, engine, size: (2 << 20) + 4096) }
        #expect(throws: DeviceError.invalidArgument) { try make(memory, engine, size: 4 << 20, chunk: 1000) }
        #expect(throws: DeviceError.invalidArgument) { try make(memory, engine, size: 12 << 20, chunk: 4 << 20, pool: 6 << 20) }
        #expect(throws: DeviceError.invalidArgument) { try make(memory, engine, size: 0) }
    }

    @Test func retireRefusesWhilePagesAreInUseThenUnregistersEveryChunk() throws {
        let memory = try makeMemory(mib: 16)
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        let (vram, _) = try make(memory, engine, size: 4 << 20)
        let page = try #require(vram.allocPage())
        #expect(throws: DeviceError.busy) { try vram.retire() }
        #expect(memory.pagemap(of: page) != nil)
        memory.unlockPage(page)
        memory.putPage(page)
        try vram.retire()
        #expect(memory.pagemap(of: page) == nil && vram.chunks.isEmpty && vram.allocPage() == nil)
        try vram.retire()   // idempotent
    }

    @Test func coherentChunksExposeTheirBytesToTheCPU() throws {
        let memory = try makeMemory(mib: 16)
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        let (vram, _) = try make(memory, engine, size: 2 << 20, type: .deviceCoherent)
        let page = try #require(vram.allocPage())
        #expect(memory.isDeviceCoherent(page))
        #expect(memory.bytes(page) == vram.bytes(of: page))
        memory.unlockPage(page)
        memory.putPage(page)
    }

    @Test func twoDevicesGetDistinctOwnersAndPFNs() throws {
        let memory = try makeMemory(mib: 16)
        let a = try makeDevice(memory, vramMiB: 4, name: "a")
        let b = try makeDevice(memory, vramMiB: 4, name: "b")
        #expect(a.owner != b.owner)
        let pa = try #require(a.vram.allocPage()), pb = try #require(b.vram.allocPage())
        #expect(a.vram.contains(pa) && !a.vram.contains(pb) && b.vram.contains(pb) && !b.vram.contains(pa))
        #expect(memory.pagemap(of: pa)?.owner == a.owner && memory.pagemap(of: pb)?.owner == b.owner)
        for p in [pa, pb] { memory.unlockPage(p); memory.putPage(p) }
        try a.shutdown()
        try b.shutdown()
    }
}
