import NIOConcurrencyHelpers
import Testing
@testable import HostMM

/// Checked mode's `hole-mapped-with-copy-in-flight`: `migrate_vma_pages` maps a hole's
/// destination at once, present for the CPU when the page is CPU-reachable (device-coherent
/// VRAM), so the driver's clear must have landed before the pages step. Device-private
/// destinations stay out of the CPU's reach (a device-private entry, the page locked until
/// finalize), so the fence may be waited for later, as nouveau does.
@Suite struct CheckedHoleTests {
    /// A copy engine that has not completed the copy into one page.
    final class StuckCopy: InFlightCopyOracle, @unchecked Sendable {
        let page = NIOLockedValueBox<PFN?>(nil)
        func copiesInFlight(_ pfn: PFN) -> CopyDirections { page.withLockedValue { $0 } == pfn ? .into : [] }
    }

    /// Migrates a 4-page range that was never touched (holes) to `type`, with the clear of
    /// dst[0] still in flight at the pages step; returns the rules broken.
    private func migrateHoles(to type: MemoryType) throws -> [ProtocolRule: Int] {
        let memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 16, checked: .on)
        let device = try TestDevice(memory: memory, pageCount: 64, type: type)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let engine = StuckCopy()
        memory.checker!.register(engine)
        defer { memory.checker!.unregister(engine) }
        try withBuffers(4) { src, dst in
            var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + UInt64(4 * pageSize), src: src, dst: dst,
                                  pgmapOwner: device.owner, flags: .selectSystem)
            mm.mmapLock.readLock()
            defer { mm.mmapLock.readUnlock() }
            try migrateVMASetup(&args)
            #expect(args.cpages == 4 && (0..<4).allSatisfy { src[$0].page == nil })
            device.copyToDevice(src, dst, args.npages)
            engine.page.withLockedValue { $0 = dst[0].page }
            try migrateVMAPages(&args)
            engine.page.withLockedValue { $0 = nil }                        // the fence signals before finalize
            migrateVMAFinalize(&args)
        }
        #expect(try mm.read(at: a, count: pageSize) == [UInt8](repeating: 0, count: pageSize))
        mm.exit()
        return memory.checker!.countsByRule
    }

    @Test func aCoherentHoleMappedBeforeItsClearLandedIsReported() throws {
        #expect(try migrateHoles(to: .deviceCoherent) == [.holeMappedWithCopyInFlight: 1])
    }

    @Test func aDevicePrivateHoleMayWaitForItsClearUntilFinalize() throws {
        #expect(try migrateHoles(to: .devicePrivate) == [:])
    }
}
