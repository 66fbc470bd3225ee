import Testing
@testable import HostMM

/// Objects a driver may keep past the end of the address space they came from.
@Suite struct LifetimeTests {
    @Test func vmaKeptAfterItsAddressSpaceIsGoneIsRefusedByMigration() throws {
        let memory = try makeMemory()
        var mm: AddressSpace? = AddressSpace(memory: memory)
        let a = try mm!.mmap(length: pageSize)
        try mm!.write(at: a, bytes: [1])
        let vma = try #require(mm!.vmaList.first)
        let free = memory.freeRAMPageCount
        mm = nil
        #expect(vma.mm == nil && !vma.isAttached)
        #expect(memory.freeRAMPageCount == free + 1)
        withBuffers(1) { src, dst in
            var args = MigrateVMA(vma: vma, start: a, end: a + UInt64(pageSize), src: src, dst: dst, flags: .selectSystem)
            #expect(throws: HostMMError.invalidArgument) { try migrateVMASetup(&args) }
            migrateVMAFinalize(&args)                              // nothing set up: a no-op
        }
    }

    @Test func notifierKeptAfterItsAddressSpaceIsGoneIsInert() throws {
        let memory = try makeMemory()
        var mm: AddressSpace? = AddressSpace(memory: memory)
        let a = try mm!.mmap(length: pageSize)
        let mirror = RecordingMirror()
        let n = try mm!.notifiers.insert(start: a, length: UInt64(pageSize), ops: mirror)
        let seq = n.readBegin()
        mm = nil
        #expect(mirror.kinds == [.release, .unmap])
        #expect(n.mm == nil)
        #expect(n.readRetry(seq))                                  // the exit invalidated it
        let buf = UnsafeMutableBufferPointer<HMMPFN>.allocate(capacity: 1)
        defer { buf.deallocate() }
        buf.initialize(repeating: [])
        var range = HMMRange(notifier: n, notifierSeq: n.readBegin(), start: a, end: a + UInt64(pageSize), hmmPFNs: buf)
        #expect(throws: HostMMError.fault) { try hmmRangeFault(&range) }
        n.remove()                                                 // a no-op, no trap
    }

    @Test func exitedAddressSpaceRefusesNewWorkButKeepsAnswering() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize)
        mm.exit()
        #expect(mm.hasExited)
        #expect(throws: HostMMError.invalidArgument) { try mm.mmap(length: pageSize) }
        #expect(throws: HostMMError.segmentationFault(address: a, reason: .notMapped)) { try mm.read(at: a, count: 1) }
        #expect(throws: HostMMError.invalidArgument) { try mm.fork() }
    }
}
