import Testing
@testable import HostMM

/// `PhysicalMemory.checkInvariants` (the quiescent-state audit): each broken invariant is
/// named, so the audit itself can fail.
@Suite struct InvariantsTests {
    /// A page left locked at a quiescent moment is a problem; unlocked, the audit is clean.
    @Test func aPageLeftLockedIsReported() throws {
        let memory = try PhysicalMemory(ramBytes: 1 << 20, maxDevicePages: 16, checked: .off)
        let p = try #require(memory.allocPage())
        #expect(memory.checkInvariants(addressSpaces: []) == [])
        memory.lockPage(p)
        #expect(memory.checkInvariants(addressSpaces: []) == ["\(p): locked at a quiescent moment"])
        memory.unlockPage(p)
        memory.putPage(p)
        #expect(memory.checkInvariants(addressSpaces: []) == [])
    }

    /// A free frame that gained a reference behind the allocator's back (`get_page` on a
    /// free page): the count of frames with refcount 0 no longer matches the allocator's.
    @Test func aFreeFrameReferencedBehindTheAllocatorIsReported() throws {
        let memory = try PhysicalMemory(ramBytes: 1 << 20, maxDevicePages: 16, checked: .off)
        let p = try #require(memory.allocPage())
        memory.putPage(p)
        let free = memory.freeRAMPageCount
        memory.getPage(p)
        #expect(memory.checkInvariants(addressSpaces: [])
                == ["\(free - 1) RAM frames have refcount 0 but the allocator counts \(free) free"])
    }
}
