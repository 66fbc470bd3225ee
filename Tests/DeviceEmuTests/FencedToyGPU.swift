#if canImport(Glibc)
import Glibc
#endif
import DMAEngine
import DeviceEmu
import HostMM

/// The driver guide's `ToyGPU` (section 11) grown the way its "Things the toy leaves out"
/// list suggests: VRAM from `DeviceMemory` behind a `PagemapOpsForwarder`, copies on a
/// `DMAChannel` whose `Fence` gates `migrateVMAFinalize` (nouveau's
/// `nouveau_dmem_migrate_chunk` / `nouveau_dmem_migrate_to_ram` / `nouveau_dmem_evict_chunk`),
/// and an `InFlightCopyOracle` so that checked mode sees its copies. Written, as a driver
/// author would, against the public API only.
///
/// `finalizeBeforeFence` is the deliberate bug of the experiment: finalize right after
/// the pages step, waiting for the copy only afterwards.
///
/// Threads: any; one migration at a time per address space (the toy takes no lock of its own).
final class FencedToyGPU: DevicePagemapOps, InFlightCopyOracle, @unchecked Sendable {
    let memory: PhysicalMemory
    let engine: DMAEngine
    let channel: DMAChannel
    let hostRegion: RegionID
    let vram: DeviceMemory
    let finalizeBeforeFence: Bool
    /// Told of the steps of `migrateToDevice` (guide section 13: a probe can hold them).
    let observer: (any MigrationObserver)?
    var owner: PgmapOwner { vram.owner }
    private let token = OwnerToken()
    private final class OwnerToken: Sendable {}

    init(memory: PhysicalMemory, vramBytes: Int, backend: CopyBackendKind, finalizeBeforeFence: Bool = false,
         observer: (any MigrationObserver)? = nil) throws {
        self.memory = memory
        self.finalizeBeforeFence = finalizeBeforeFence
        self.observer = observer
        // Tracking in-flight copies answers the checked-mode oracle.
        engine = try DMAEngine(configuration: .init(backend: backend, tracksInFlightCopies: true))
        hostRegion = try engine.registerHostMemory(
            UnsafeMutableRawBufferPointer(start: memory.baseAddress, count: memory.byteCount), name: "toy-ram")
        channel = try engine.makeChannel(name: "toy")
        let forwarder = PagemapOpsForwarder()
        vram = try DeviceMemory(memory: memory, engine: engine, configuration: .init(size: vramBytes, name: "toy"),
                                owner: PgmapOwner(token), ops: forwarder)
        forwarder.memory = vram
        forwarder.target = self
        memory.checker?.register(self)
    }

    /// The engine address of any PFN: a RAM frame in the host region, or a VRAM page.
    func dmaAddress(_ pfn: PFN) -> DMAAddress {
        vram.dmaAddress(of: pfn) ?? DMAAddress(region: hostRegion, offset: Int(pfn.physicalAddress))
    }

    private func report(_ kind: MigrationEvent.Kind, at address: UInt64) {
        observer?.observe(MigrationEvent(kind: kind, direction: .toDevice, time: MonotonicTime.now(), address: address))
    }

    // MARK: dev_pagemap_ops

    func pageFree(_ pfn: PFN, pagemap: DevicePagemap) { vram.freePage(pfn) }

    /// `nouveau_dmem_migrate_to_ram`, one page, copied by the engine.
    func migrateToRAM(_ fault: VMFault) -> VMFaultResult {
        let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 1)
        let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: 1)
        defer { src.deallocate(); dst.deallocate() }
        src.initialize(repeating: []); dst.initialize(repeating: [])
        var args = MigrateVMA(vma: fault.vma, start: fault.address, end: fault.address + UInt64(pageSize),
                              src: src, dst: dst, pgmapOwner: owner, flags: .selectDevicePrivate, faultPage: fault.page)
        do { try migrateVMASetup(&args) } catch { return .sigbus }
        defer { migrateVMAFinalize(&args) }
        guard src[0].contains(.migrate), let device = src[0].page else { return .done }
        guard let ram = memory.allocPage() else { src[0].remove(.migrate); return .oom }
        memory.lockPage(ram)
        dst[0] = MigratePFN(pfn: ram)
        let fence: Fence
        do {
            try channel.enqueueCopy(from: dmaAddress(device), to: dmaAddress(ram), length: pageSize)
            fence = try channel.submit()
        } catch {
            _ = channel.discardPending()
            src[0].remove(.migrate)
            return .sigbus
        }
        do { try migrateVMAPages(&args) } catch { src[0].remove(.migrate) }
        do { try fence.wait() } catch { src[0].remove(.migrate); return .sigbus }
        return .done
    }

    // MARK: InFlightCopyOracle

    func copiesInFlight(_ pfn: PFN) -> CopyDirections {
        let access = engine.copiesInFlight(at: dmaAddress(pfn), length: pageSize)
        var directions: CopyDirections = []
        if access.contains(.writes) { directions.insert(.into) }
        if access.contains(.reads) { directions.insert(.outOf) }
        return directions
    }

    // MARK: The driver's own operations

    /// `nouveau_dmem_migrate_vma` for one VMA, one batch: returns how many pages moved.
    func migrateToDevice(_ mm: AddressSpace, _ start: UInt64, _ end: UInt64) throws -> Int {
        let n = Int((end - start) >> 12)
        let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: n)
        let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: n)
        defer { src.deallocate(); dst.deallocate() }
        src.initialize(repeating: []); dst.initialize(repeating: [])
        mm.mmapLock.readLock()
        defer { mm.mmapLock.readUnlock() }
        var args = MigrateVMA(vma: mm.findVMA(start), start: start, end: end, src: src, dst: dst,
                              pgmapOwner: owner, flags: .selectSystem)
        report(.setupBegin, at: start)
        try migrateVMASetup(&args)
        var submitted: Fence?
        do {
            for i in 0..<args.npages where src[i].contains(.migrate) {
                guard let page = vram.allocPage() else { src[i].remove(.migrate); continue }
                dst[i] = MigratePFN(pfn: page)
                if let from = src[i].page {
                    try channel.enqueueCopy(from: dmaAddress(from), to: dmaAddress(page), length: pageSize)
                } else {
                    try channel.enqueueFill(dmaAddress(page), length: pageSize, value: 0)
                }
            }
            submitted = try channel.submit()                  // migrate->fence
            try migrateVMAPages(&args)                        // may run under the copies
        } catch {
            // Nothing is committed: restore every source, free every destination (guide §11, rule 5).
            _ = channel.discardPending()
            try? submitted?.wait()                            // never free a page under a copy
            for i in 0..<args.npages { src[i].remove(.migrate) }
            migrateVMAFinalize(&args)
            throw error
        }
        guard let fence = submitted else { preconditionFailure("submitted above") }
        if finalizeBeforeFence {
            report(.finalizeBegin, at: start)
            migrateVMAFinalize(&args)                         // the bug: unlocks and frees under the copy
            report(.fenceWaitBegin, at: start)
            try fence.wait()
        } else {
            report(.fenceWaitBegin, at: start)
            try fence.wait()
            report(.finalizeBegin, at: start)
            migrateVMAFinalize(&args)
        }
        return (0..<args.npages).reduce(0) { $0 + (src[$1].contains(.migrate) ? 1 : 0) }
    }

    /// `nouveau_dmem_evict_chunk` for every chunk, then `memunmap_pages` and the engine.
    func shutdown() throws {
        for chunk in vram.chunks {
            let n = chunk.pfns.count
            let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: n)
            let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: n)
            defer { src.deallocate(); dst.deallocate() }
            src.initialize(repeating: []); dst.initialize(repeating: [])
            try memory.migrateDeviceRange(src, start: chunk.pfns.lowerBound, npages: n)
            for i in 0..<n where src[i].contains(.migrate) {
                guard let device = src[i].page, let ram = memory.allocPage() else { src[i].remove(.migrate); continue }
                memory.lockPage(ram)
                dst[i] = MigratePFN(pfn: ram)
                try channel.enqueueCopy(from: dmaAddress(device), to: dmaAddress(ram), length: pageSize)
            }
            let fence = try channel.submit()
            try memory.migrateDevicePages(src: src, dst: dst, npages: n)
            try fence.wait()
            memory.migrateDeviceFinalize(src: src, dst: dst, npages: n)
        }
        try vram.retire()
        memory.checker?.unregister(self)
        engine.shutdown()
    }
}
