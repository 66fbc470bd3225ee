import Testing
@testable import HostMM

/// Behaviours of `mm/migrate_device.c` (seed 004) that a fidelity audit found the model
/// getting wrong, pinned here once fixed.
@Suite struct MigrateFidelityTests {
    /// `migrate_vma_setup` clears `src` for the range only (its `memset` covers
    /// `nr_pages` entries, the walk writes one `src`/`dst` pair per page): a caller's
    /// larger buffer keeps whatever it holds past the range.
    @Test func setupWritesNoEntryPastTheRange() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 8 * pageSize)
        try mm.touch(a, length: 8 * pageSize, write: true)
        let sentinel = MigratePFN(rawValue: 0xdead << MigratePFN.shift)   // no .valid: never a page
        try mm.mmapLock.withReadLock {
            try withBuffers(8) { src, dst in
                src.update(repeating: sentinel)
                dst.update(repeating: sentinel)
                var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + UInt64(2 * pageSize),
                                      src: src, dst: dst, flags: .selectSystem)
                try migrateVMASetup(&args)
                #expect(args.npages == 2 && args.cpages == 2)
                #expect(src[0].contains(.migrate) && src[1].contains(.migrate))
                #expect(dst[0] == [] && dst[1] == [])
                #expect(src[2...].allSatisfy { $0 == sentinel })
                #expect(dst[2...].allSatisfy { $0 == sentinel })
                migrateVMAFinalize(&args)
            }
        }
        #expect(mm.pageTableEntry(a).isPresent && mm.pageTableEntry(a + UInt64(pageSize)).isPresent)
    }
}
