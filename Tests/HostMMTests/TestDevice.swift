import Foundation
import NIOConcurrencyHelpers
import Synchronization
@testable import HostMM

/// A memcpy-backed device pgmap (private by default, or coherent with its heap buffer as
/// the CPU-visible bytes), like the kernel's lib/test_hmm.c "dmirror":
/// device memory is a plain heap buffer, copies are memcpy, and the dmem flow is the
/// textbook setup → copy → pages → finalize.
final class TestDevice: DevicePagemapOps, @unchecked Sendable {
    let memory: PhysicalMemory
    private(set) var pagemap: DevicePagemap!
    let vram: UnsafeMutableRawPointer
    let pageCount: Int
    private let lock = NIOLock()
    private var freeList: [PFN] = []
    let freed = Atomic<Int>(0)
    let cpuFaults = Atomic<Int>(0)
    /// When set, `migrateToRAM` returns SIGBUS.
    let failMigrateToRAM = Atomic<Bool>(false)
    /// Called inside `migrateToRAM` after setup, before copying (for race tests).
    nonisolated(unsafe) var afterFaultSetup: (() -> Void)?
    /// When set, `migrateToRAM` runs this instead of its own flow (a driver of another shape).
    nonisolated(unsafe) var migrateToRAMOverride: ((VMFault) -> VMFaultResult)?
    /// Called in `pageFree` once the page is back on the free list (for race tests: another
    /// thread of the driver may allocate it from then on).
    nonisolated(unsafe) var afterPageFree: ((PFN) -> Void)?

    var owner: PgmapOwner { PgmapOwner(self) }

    init(memory: PhysicalMemory, pageCount: Int = 1024, type: MemoryType = .devicePrivate) throws {
        self.memory = memory
        self.pageCount = pageCount
        vram = UnsafeMutableRawPointer.allocate(byteCount: pageCount * pageSize, alignment: pageSize)
        pagemap = try memory.registerPagemap(type: type, pageCount: pageCount, owner: PgmapOwner(self), ops: self,
                                             coherentBytes: type == .deviceCoherent ? vram : nil)
        freeList = Array(pagemap.pfns.reversed())
    }

    deinit { vram.deallocate() }

    var freePageCount: Int { lock.withLock { freeList.count } }

    func bytes(_ pfn: PFN) -> UnsafeMutableRawPointer { vram + (pfn - pagemap.firstPFN) * pageSize }

    /// Takes a free device page: refcount 1, locked.
    func allocPage() -> PFN? {
        guard let pfn = lock.withLock({ freeList.popLast() }) else { return nil }
        try! memory.zoneDevicePageInit(pfn)
        return pfn
    }

    func pageFree(_ pfn: PFN, pagemap: DevicePagemap) {
        freed.add(1, ordering: .relaxed)
        lock.withLock { freeList.append(pfn) }
        afterPageFree?(pfn)
    }

    func migrateToRAM(_ fault: VMFault) -> VMFaultResult {
        cpuFaults.add(1, ordering: .relaxed)
        if failMigrateToRAM.load(ordering: .relaxed) { return .sigbus }
        if let migrateToRAMOverride { return migrateToRAMOverride(fault) }
        return withBuffers(1) { src, dst in
            var args = MigrateVMA(vma: fault.vma, start: fault.address, end: fault.address + UInt64(pageSize),
                                  src: src, dst: dst, pgmapOwner: owner, flags: .selectDevicePrivate, faultPage: fault.page)
            do { try migrateVMASetup(&args) } catch { return .sigbus }
            guard args.cpages > 0 else { return .done }
            afterFaultSetup?()
            if let page = src[0].page, src[0].contains(.migrate) {
                guard let ram = memory.allocPage() else {
                    migrateVMAFinalize(&args)   // restore before failing: never leave the page locked
                    return .oom
                }
                memory.lockPage(ram)
                memcpy(memory.bytes(ram)!, bytes(page), pageSize)
                dst[0] = MigratePFN(pfn: ram)
            }
            try! migrateVMAPages(&args)
            migrateVMAFinalize(&args)
            return .done
        }
    }

    /// Migrates `[start, end)` of `mm` to device memory in batches; returns pages moved.
    @discardableResult
    func migrateToDevice(_ mm: AddressSpace, _ start: UInt64, _ end: UInt64, batch: Int = 512,
                         flags: MigrateVMA.Flags = .selectSystem) throws -> Int {
        try mm.mmapLock.withReadLock { () throws -> Int in
            var moved = 0
            var addr = start
            while addr < end {
                guard let vma = mm.findVMA(addr) else { throw HostMMError.fault }
                let next = min(end, vma.end, addr + UInt64(batch * pageSize))
                moved += try withBuffers(batch) { src, dst in
                    var args = MigrateVMA(vma: vma, start: addr, end: next, src: src, dst: dst,
                                          pgmapOwner: owner, flags: flags)
                    try migrateVMASetup(&args)
                    guard args.cpages > 0 else { return 0 }
                    copyToDevice(args.src, args.dst, args.npages)
                    try migrateVMAPages(&args)
                    migrateVMAFinalize(&args)
                    return (0..<args.npages).filter { args.src[$0].contains(.migrate) }.count
                }
                addr = next
            }
            return moved
        }
    }

    /// The driver's alloc-and-copy step for a migration to the device.
    func copyToDevice(_ src: UnsafeMutableBufferPointer<MigratePFN>, _ dst: UnsafeMutableBufferPointer<MigratePFN>, _ n: Int) {
        for i in 0..<n where src[i].contains(.migrate) {
            guard let d = allocPage() else { continue }
            if let s = src[i].page, let from = memory.bytes(s) {
                memcpy(bytes(d), from, pageSize)
            } else {
                memset(bytes(d), 0, pageSize)
            }
            dst[i] = MigratePFN(pfn: d)
        }
    }

    /// Evicts every device page back to RAM through `migrateDevice*`; returns pages moved.
    @discardableResult
    func evictAll() throws -> Int {
        try withBuffers(pageCount) { src, dst in
            try memory.migrateDeviceRange(src, start: pagemap.firstPFN, npages: pageCount)
            for i in 0..<pageCount where src[i].contains(.migrate) {
                guard let page = src[i].page, let ram = memory.allocPage() else { continue }
                memory.lockPage(ram)
                memcpy(memory.bytes(ram)!, bytes(page), pageSize)
                dst[i] = MigratePFN(pfn: ram)
            }
            try memory.migrateDevicePages(src: src, dst: dst, npages: pageCount)
            let moved = (0..<pageCount).filter { src[$0].contains(.migrate) }.count
            memory.migrateDeviceFinalize(src: src, dst: dst, npages: pageCount)
            return moved
        }
    }
}

/// Runs `body` with zeroed src/dst buffers of `n` entries (the public `withMigrateBuffers`),
/// passing on whatever `body` throws. Tests give literal counts of a few pages, which the
/// count check always accepts: a refusal here is a broken test, so it stops the run.
func withBuffers<T, E: Error>(_ n: Int, _ body: (UnsafeMutableBufferPointer<MigratePFN>, UnsafeMutableBufferPointer<MigratePFN>) throws(E) -> T) throws(E) -> T {
    let result: Result<T, E>
    do {
        result = try withMigrateBuffers(npages: n) { (src, dst) throws(HostMMError) -> Result<T, E> in
            do throws(E) { return .success(try body(src, dst)) } catch { return .failure(error) }
        }
    } catch {
        fatalError("withBuffers(\(n)): \(error)")
    }
    return try result.get()
}

/// A deterministic byte pattern for page `i` of a test.
func pattern(_ seed: Int, count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 31) ^ (seed &* 131) ^ ($0 >> 8)) }
}

/// A small machine for tests: 64 MiB of RAM, room for device pages.
func makeMemory() throws -> PhysicalMemory {
    try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 16)
}
