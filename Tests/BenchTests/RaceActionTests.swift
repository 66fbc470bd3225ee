import DeviceEmu
import HostMM
import Testing
@testable import dmem_bench

/// The racing actions that change what the checks look at — `pin` (a pinned page that must
/// stay put), `mremap` and `mremap-dontunmap` (the range at a new address, the old one
/// unmapped or emptied), `cow-write` and `cow-write-child` (parent and child diverge): each
/// does what it says on a world, its checks pass on the model, and they fail when the
/// model is broken behind their back.
@Suite(.serialized, .timeLimit(.minutes(2))) struct RaceActionTests {
    /// A cell's checks as `RaceCell.run` makes them, after `action` ran on `w`.
    private func check(_ w: RaceWorld, _ flow: RaceFlow, _ action: RaceAction, _ r: RaceFlowResult) -> RaceCheck {
        var c = RaceCheck(world: w, flow: flow, action: action)
        c.flowResult(r)
        c.gpuPages()
        c.pages()
        c.pinnedPages()
        c.childAndInvariants()
        c.tearDown()
        return c
    }

    /// The range in VRAM, then a long-term pin of the target: the pin brings it back to RAM
    /// (a device-private page cannot be pinned), and a migration leaves it there.
    @Test func aPinnedPageStaysInRAMAndTheChecksPass() throws {
        let (w, r) = try raceDryWorld(RaceConfiguration(), .evict)
        _ = try w.gpu.migrateToDevice(w.mm, range: w.range)
        guard case .done = RaceAction.pin.perform(w) else { Issue.record("pin failed"); return }
        let pinned = try #require(w.pinned.first)
        #expect(w.memory.isRAM(pinned))
        #expect(try w.gpu.migrateToDevice(w.mm, range: w.range).migrated == 0)   // the rest is already there
        let c = check(w, .evict, .pin, r)
        #expect(c.problems.isEmpty, "\(c.problems)")
        #expect(w.pinned.isEmpty)
    }

    /// A pinned page that is no longer the one mapped at its address (as if a migration
    /// had taken it: here DONTNEED and a store of the same data behind the model's back)
    /// fails the check, as does one whose bytes differ from what the process reads.
    @Test func aPinnedPageThatIsNotTheMappedPageFails() throws {
        let (w, r) = try raceDryWorld(RaceConfiguration(), .evict)
        guard case .done = RaceAction.pin.perform(w) else { Issue.record("pin failed"); return }
        let pinned = try #require(w.pinned.first)
        let t = w.address(w.target)
        try w.mm.madvise(t, length: pageSize, advice: .dontNeed)
        try w.mm.write(at: t, bytes: RacePage.pattern.bytes(page: w.target)!)
        w.memory.bytes(pinned)!.storeBytes(of: 0xA5, as: UInt8.self)
        let c = check(w, .evict, .pin, r)
        #expect(c.problems.contains { $0.contains("not its pinned page") }, "\(c.problems)")
        #expect(c.problems.contains { $0.contains("does not hold what page 1 reads") }, "\(c.problems)")
        #expect(!c.problems.contains { $0.hasPrefix("page 1 is not") }, "\(c.problems)")
    }

    /// `mremap` moves the range: the old addresses fault for the CPU and through the GPU
    /// view (whose entries for them the move invalidated), the new ones hold the pattern.
    @Test func mremapMovesTheRangeAndTheOldAddressesFault() throws {
        let (w, r) = try raceDryWorld(RaceConfiguration(), .gpuFault)   // the target's window in VRAM, GPU-mapped
        let old = w.address(w.target)
        guard case .done = RaceAction.mremap.perform(w) else { Issue.record("mremap failed"); return }
        #expect(w.moved && w.address(w.target) != old)
        let space = try #require(w.gpu.addressSpace(for: w.mm))
        #expect(throws: DeviceError.fault(address: old)) { try space.read(at: old, count: pageSize) }
        #expect(try w.mm.read(at: w.address(w.target), count: pageSize) == RacePage.pattern.bytes(page: w.target))
        let c = check(w, .gpuFault, .mremap, r)
        #expect(c.problems.isEmpty, "\(c.problems)")
    }

    /// `mremap-dontunmap` leaves the old range mapped and empty: it reads zeros, CPU and GPU.
    @Test func mremapDontUnmapLeavesTheOldRangeEmpty() throws {
        let (w, r) = try raceDryWorld(RaceConfiguration(), .gpuFault)
        let old = w.address(w.target)
        guard case .done = RaceAction.mremapDontUnmap.perform(w) else { Issue.record("mremap failed"); return }
        let space = try #require(w.gpu.addressSpace(for: w.mm))
        #expect(try space.read(at: old, count: pageSize) == RacePage.zeros.bytes(page: w.target))
        #expect(try space.read(at: w.address(w.target), count: pageSize) == RacePage.pattern.bytes(page: w.target))
        let c = check(w, .gpuFault, .mremapDontUnmap, r)
        #expect(c.problems.isEmpty, "\(c.problems)")
    }

    /// An old address that still reads after `mremap` fails the check: the range mapped
    /// back at its old place behind the model's back.
    @Test func anOldAddressThatStillReadsFails() throws {
        let (w, r) = try raceDryWorld(RaceConfiguration(), .toDevice)
        guard case .done = RaceAction.mremap.perform(w) else { Issue.record("mremap failed"); return }
        _ = try w.mm.mmap(length: pageSize, at: w.originalAddress(0))
        let c = check(w, .toDevice, .mremap, r)
        #expect(c.problems.contains { $0.contains("page 0 still reads at its old address") }, "\(c.problems)")
    }

    /// `cow-write` stores the marker in the parent, the child keeps the pattern;
    /// `cow-write-child` the other way round, with the range in VRAM when they fork.
    @Test func copyOnWriteStoresDivergeParentAndChild() throws {
        for action in [RaceAction.cowWrite, .cowWriteChild] {
            let (w, r) = try raceDryWorld(RaceConfiguration(), .toDevice)
            guard case .done = action.perform(w) else { Issue.record("\(action) failed"); continue }
            let child = try #require(w.child)
            let t = w.address(w.target)
            let (parentWants, childWants) = action == .cowWrite ? (RacePage.marker, RacePage.pattern) : (.pattern, .marker)
            #expect(try w.mm.read(at: t, count: pageSize) == parentWants.bytes(page: w.target), "\(action)")
            #expect(try child.read(at: t, count: pageSize) == childWants.bytes(page: w.target), "\(action)")
            let c = check(w, .toDevice, action, r)
            #expect(c.problems.isEmpty, "\(action): \(c.problems)")
        }
    }
}
