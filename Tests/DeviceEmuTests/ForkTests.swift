import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// `fork()` of an address space whose pages live in VRAM: `copy_nonpresent_pte` shares
/// each device-private page read-only between parent and child, and copy-on-write keeps
/// their views apart from then on.
@Suite struct ForkTests {
    /// Writes first, while the pages are still shared in VRAM: each side's write (CPU or
    /// the parent's GPU) breaks copy-on-write for itself only.
    /// Every CPU-fault granularity: a child's fault-around or whole-allocation window moves
    /// the shared pages back for both sides.
    @Test(arguments: [false, true], [MigrationPolicy.CPUFaultGranularity.page, .faultAround(pages: 8), .wholeAllocation])
    func writesWhileSharedInVRAMStayOnTheirSide(checked: Bool, granularity: MigrationPolicy.CPUFaultGranularity) throws {
        let f = try ForkFixture(seed: 71, checked: checked, granularity: granularity)
        defer { try? f.gpu.shutdown() }
        let child = try f.mm.fork()
        // Both map the same device pages, read-only.
        for p in [0, 17, 63] {
            let address = f.a + UInt64(p * pageSize)
            let (pe, ce) = (f.mm.pageTableEntry(address), child.pageTableEntry(address))
            #expect(pe.kind == .devicePrivate && ce.kind == .devicePrivate && pe.pfn == ce.pfn)
            #expect(!pe.isWritable && !ce.isWritable && f.memory.mapcount(pe.pfn) == 2)
        }
        let other = PagePattern(seed: 99)
        try child.write(at: f.address(5), bytes: other.page(5))            // child CPU
        try f.mm.write(at: f.address(9), bytes: other.page(9))             // parent CPU
        try f.space.write(at: f.address(20), bytes: other.page(20))        // parent GPU
        #expect(try f.space.read(at: f.address(5), count: pageSize) == f.pattern.page(5))
        #expect(try f.mm.read(at: f.address(5), count: pageSize) == f.pattern.page(5))
        #expect(try child.read(at: f.address(5), count: pageSize) == other.page(5))
        #expect(try child.read(at: f.address(9), count: pageSize) == f.pattern.page(9))
        #expect(try f.space.read(at: f.address(9), count: pageSize) == other.page(9))
        #expect(try child.read(at: f.address(20), count: pageSize) == f.pattern.page(20))
        #expect(try f.mm.read(at: f.address(20), count: pageSize) == other.page(20))
        let changed: Set = [5, 9, 20]
        for p in 0..<f.pages where !changed.contains(p) {
            #expect(try child.read(at: f.address(p), count: pageSize) == f.pattern.page(p), "child page \(p)")
            #expect(try f.space.read(at: f.address(p), count: pageSize) == f.pattern.page(p), "parent GPU page \(p)")
            #expect(try f.mm.read(at: f.address(p), count: pageSize) == f.pattern.page(p), "parent page \(p)")
        }
        #expect(f.gpu.checkInvariants().isEmpty)
        try f.finish(child)
    }

    /// Reads first (the shared pages come back to RAM, then the parent's GPU pulls them
    /// into VRAM again, for both), then writes.
    @Test(arguments: [false, true]) func readsThenWritesKeepEachSidesView(checked: Bool) throws {
        let f = try ForkFixture(seed: 72, checked: checked)
        defer { try? f.gpu.shutdown() }
        let child = try f.mm.fork()
        #expect(try f.pattern.gpuMismatches(f.space, f.a, pages: f.pages).isEmpty)
        #expect(try f.pattern.cpuMismatches(child, f.a, pages: f.pages).isEmpty)
        #expect(try f.pattern.cpuMismatches(f.mm, f.a, pages: f.pages).isEmpty)
        #expect(f.gpu.counters[.cpuFaults] > 0)
        #expect(try f.pattern.gpuMismatches(f.space, f.a, pages: f.pages).isEmpty)
        #expect(f.gpu.residentPages(child, f.a, pages: f.pages) > 0)        // the GPU fault moved the child's view too
        let other = PagePattern(seed: 98)
        try child.write(at: f.address(5), bytes: other.page(5))
        try f.mm.write(at: f.address(9), bytes: other.page(9))
        try f.space.write(at: f.address(20), bytes: other.page(20))
        #expect(try f.mm.read(at: f.address(5), count: pageSize) == f.pattern.page(5))
        #expect(try f.space.read(at: f.address(5), count: pageSize) == f.pattern.page(5))
        #expect(try child.read(at: f.address(5), count: pageSize) == other.page(5))
        #expect(try child.read(at: f.address(9), count: pageSize) == f.pattern.page(9))
        #expect(try child.read(at: f.address(20), count: pageSize) == f.pattern.page(20))
        #expect(try f.mm.read(at: f.address(20), count: pageSize) == other.page(20))
        #expect(f.gpu.checkInvariants().isEmpty)
        try f.finish(child)
    }

    /// The child binds the GPU too: two device page tables map the same VRAM pages
    /// read-only; the child's GPU writes are its own, and eviction by PFN moves a
    /// shared page to one RAM page both still share.
    @Test(arguments: [false, true]) func childGPUWritesAndEvictionOfSharedPages(checked: Bool) throws {
        let f = try ForkFixture(seed: 73, checked: checked)
        defer { try? f.gpu.shutdown() }
        let child = try f.mm.fork()
        let childSpace = try f.gpu.bind(child)
        #expect(try f.pattern.gpuMismatches(childSpace, f.a, pages: f.pages).isEmpty)
        #expect(childSpace.entry(at: f.address(3)).kind == .vram && !childSpace.entry(at: f.address(3)).isWritable)
        let other = PagePattern(seed: 97)
        try childSpace.write(at: f.address(3), bytes: other.page(3))
        #expect(try f.space.read(at: f.address(3), count: pageSize) == f.pattern.page(3))
        #expect(try child.read(at: f.address(3), count: pageSize) == other.page(3))
        #expect(try childSpace.atomicAdd(at: f.address(4) + 8, 1) == f.pattern.page(4).withUnsafeBytes { $0.load(fromByteOffset: 8, as: UInt64.self) })
        #expect(try f.mm.read(at: f.address(4), count: pageSize) == f.pattern.page(4))
        f.gpu.evictAll()
        #expect(f.gpu.vram.inUsePageCount == 0 && f.space.mappedPageCount == 0)
        // The child's COW copy of page 3 went to VRAM with the atomic's fault window and was
        // evicted with the rest; only the page it holds exclusive stays mapped.
        #expect((0..<f.pages).map { childSpace.entry(at: f.address($0)).kind }.filter { $0 != .none } == [.exclusive])
        let shared = f.mm.pageTableEntry(f.address(10))
        #expect(shared.kind == .present && child.pageTableEntry(f.address(10)).pfn == shared.pfn)
        #expect(try f.pattern.cpuMismatches(f.mm, f.a, pages: f.pages).isEmpty)
        #expect(try f.pattern.gpuMismatches(f.space, f.a, pages: f.pages).isEmpty)
        #expect(try child.read(at: f.address(10), count: pageSize) == f.pattern.page(10))
        #expect(f.gpu.checkInvariants().isEmpty)
        f.gpu.unbind(child)
        try f.finish(child)
    }

    /// The child goes first: the parent's entries stay read-only device-private with one
    /// mapping left; its writes (GPU and CPU) take the pages back without a copy for anyone else.
    @Test(arguments: [false, true]) func childExitFirstLeavesTheParentItsPages(checked: Bool) throws {
        let f = try ForkFixture(seed: 74, checked: checked)
        defer { try? f.gpu.shutdown() }
        let child = try f.mm.fork()
        #expect(try child.read(at: f.address(1), count: pageSize) == f.pattern.page(1))   // page 1 back to RAM, shared
        child.exit()
        #expect(f.gpu.vram.inUsePageCount == f.pages - 1)
        let pte = f.mm.pageTableEntry(f.address(2))
        #expect(pte.kind == .devicePrivate && !pte.isWritable && f.memory.mapcount(pte.pfn) == 1)
        let other = PagePattern(seed: 96)
        try f.space.write(at: f.address(2), bytes: other.page(2))
        try f.mm.write(at: f.address(1), bytes: other.page(1))
        #expect(try f.mm.read(at: f.address(2), count: pageSize) == other.page(2))
        #expect(try f.space.read(at: f.address(1), count: pageSize) == other.page(1))
        #expect(try f.pattern.cpuMismatches(f.mm, f.a, first: 3, pages: f.pages - 3).isEmpty)
        #expect(f.gpu.checkInvariants().isEmpty)
        try f.finish(child)
    }
}

/// A parent address space with `pages` pattern pages migrated to a device it is bound to.
private struct ForkFixture {
    let memory: PhysicalMemory
    let gpu: Device
    let mm: AddressSpace
    let space: GPUAddressSpace
    let pattern: PagePattern
    let a: UInt64
    let pages = 64
    /// Registered device pages once the range is in VRAM (free + in use).
    let registered: Int

    /// - Parameter checked: HostMM's checked mode (protocol sanitizer) on.
    init(seed: UInt64, checked: Bool, granularity: MigrationPolicy.CPUFaultGranularity = .page) throws {
        memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 17, checked: checked ? .on : .off)
        var policy = MigrationPolicy()
        policy.cpuFaultGranularity = granularity
        gpu = try makeDevice(memory, vramMiB: 4, policy: policy)
        mm = AddressSpace(memory: memory)
        a = try mm.mmap(length: pages * pageSize)
        pattern = PagePattern(seed: seed)
        try pattern.fill(mm, a, pages: pages)
        space = try gpu.bind(mm)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: pages)).migrated == pages)
        registered = gpu.vram.freePageCount + gpu.vram.inUsePageCount
    }

    func address(_ page: Int) -> UInt64 { a + UInt64(page * pageSize) }

    /// munmap in the parent, exit of the child: every device page is free again.
    func finish(_ child: AddressSpace) throws {
        try mm.munmap(a, length: pages * pageSize)
        #expect(gpu.vram.inUsePageCount == gpu.residentPages(child, a, pages: pages))
        child.exit()
        #expect(gpu.vram.inUsePageCount == 0)
        #expect(gpu.vram.freePageCount == registered)
        #expect(space.mappedPageCount == 0)
        #expect(gpu.checkInvariants().isEmpty)
        #expect(memory.diagnostics.refcountUnderflowCount == 0 && memory.diagnostics.unlocksOfUnlockedPages == 0)
        if let checker = memory.checker {
            #expect(checker.violationCount == 0, "\(checker.violations.prefix(5))")
        }
    }
}
