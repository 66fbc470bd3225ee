import DeviceEmu
import HostMM
import Testing
@testable import dmem_bench

/// The flows that write the target or leave VRAM without a fault (`gpu-atomic`,
/// `gpu-write`, `migrate-to-ram`, `suspend`) across the driver configurations that change
/// them: per configuration a reduced matrix passes, and the configuration shows in what
/// the flow did. The shadow model's rules for two writers are checked on their own.
@Suite(.serialized, .timeLimit(.minutes(2))) struct RaceFlowConfigurationTests {
    private let writers: [RaceAction] = [.none, .cpuRead, .cpuWrite, .gpuAtomic, .munmap, .dontNeed, .mprotect, .fork,
                                         .cowWrite, .mremapDontUnmap]

    /// Two writers of the target end as one applied after the other, in either order; a
    /// writer that failed changed nothing.
    @Test func theShadowModelAppliesBothWritersInEitherOrder() {
        let markerPlus1 = RacePage(base: .marker, adds: 1)
        #expect(RaceShadow.target(.pattern, flow: .gpuAtomic, flowTookEffect: true, action: .cpuWrite, actionTookEffect: true)
            == [.marker, markerPlus1])
        #expect(RaceShadow.target(.pattern, flow: .gpuAtomic, flowTookEffect: true, action: .gpuAtomic, actionTookEffect: true)
            == [RacePage(base: .pattern, adds: 2)])
        #expect(RaceShadow.target(.pattern, flow: .gpuWrite, flowTookEffect: true, action: .dontNeed, actionTookEffect: true)
            == [.zeros, .marker])
        #expect(RaceShadow.target(.pattern, flow: .gpuWrite, flowTookEffect: true, action: .munmap, actionTookEffect: true) == [.unmapped])
        #expect(RaceShadow.target(.zeros, flow: .gpuAtomic, flowTookEffect: false, action: .cpuRead, actionTookEffect: true) == [.zeros])
        #expect(RaceShadow.target(.pattern, flow: .evict, flowTookEffect: true, action: .gpuAtomic, actionTookEffect: true) == [.incremented])
        #expect(RaceShadow.inChild(.pattern, flow: .gpuWrite, flowTookEffect: true, action: .fork, actionTookEffect: true)
            == [.pattern, .marker])
        // cow-write stores in the parent only; cow-write-child in the child only.
        #expect(RaceShadow.target(.pattern, flow: .evict, flowTookEffect: true, action: .cowWrite, actionTookEffect: true) == [.marker])
        #expect(RaceShadow.inChild(.pattern, flow: .evict, flowTookEffect: true, action: .cowWrite, actionTookEffect: true) == [.pattern])
        #expect(RaceShadow.target(.pattern, flow: .evict, flowTookEffect: true, action: .cowWriteChild, actionTookEffect: true) == [.pattern])
        #expect(RaceShadow.inChild(.pattern, flow: .gpuWrite, flowTookEffect: true, action: .cowWriteChild, actionTookEffect: true) == [.marker])
        // After mremap-dontunmap the flow's store lands on the moved page or in the emptied old range.
        #expect(RaceShadow.target(.pattern, flow: .gpuWrite, flowTookEffect: true, action: .mremapDontUnmap, actionTookEffect: true)
            == [.pattern, .marker])
        #expect(RaceShadow.inOldRange(flow: .gpuAtomic, flowTookEffect: true) == [.zeros, RacePage(base: .zeros, adds: 1)])
        #expect(RaceShadow.seenByFlow(.pattern, action: .mremapDontUnmap) == [.pattern, .zeros])
        #expect(RaceShadow.seenByFlow(.pattern, action: .dontNeed) == [.pattern, .zeros])
        #expect(RacePage(base: .zeros, adds: 1).firstWord(0) == 1 && RacePage.unmapped.incremented == .unmapped)
    }

    /// A read racing a store of the marker may see it half done only where the CPU and the
    /// GPU map the same bytes (coherent VRAM, GPU-mapped system pages, dmirror), and only as
    /// a word-wise mix of before and after. (The race that showed it: `race --flow
    /// gpu-fault --action cpu-write --memory coherent --vram 16`, about 1 run in 25, the
    /// GPU read finding pattern and marker interleaved after the CPU store was released by
    /// finalize.)
    @Test func aReadRacingAStoreOfPagesBothSidesMapMaySeeItHalfDone() {
        let page = 1
        let pattern = RacePage.pattern.bytes(page: page)!, marker = RacePage.marker.bytes(page: page)!
        let torn = Array(marker[0 ..< 1024] + pattern[1024 ..< 3488] + marker[3488 ..< 4096])
        #expect(RaceShadow.isTornMix(torn, of: [.pattern, .marker], page: page))
        #expect(!RaceShadow.isTornMix(torn, of: [.pattern], page: page))
        var stray = torn
        stray[2000] ^= 0xff   // a word neither before nor after: not a tear
        #expect(!RaceShadow.isTornMix(stray, of: [.pattern, .marker], page: page))
        let zerosAndPattern = Array(RacePage.zeros.bytes(page: page)![0 ..< 2048] + pattern[2048 ..< 4096])
        #expect(!RaceShadow.isTornMix(zerosAndPattern, of: [.pattern, .marker], page: page))

        var coherent = RaceConfiguration()
        coherent.memory = .coherent
        var mapping = RaceConfiguration()
        mapping.gpuFault = .map
        var mirror = RaceConfiguration()
        mirror.driver = .mirror
        for c in [coherent, mapping, mirror] {
            #expect(RaceShadow.readMayTear(c, storer: .cpuWrite))
            #expect(RaceShadow.readMayTear(c, storer: .gpuWrite, reader: .cpuRead))
            #expect(!RaceShadow.readMayTear(c, storer: .dontNeed))   // a new page: nothing half done
            #expect(!RaceShadow.readMayTear(c, storer: .gpuFault, reader: .cpuRead))
        }
        // Private VRAM migrated on GPU faults: the CPU's store first takes the page back.
        #expect(!RaceShadow.readMayTear(RaceConfiguration(), storer: .cpuWrite))
        #expect(!RaceShadow.readMayTear(RaceConfiguration(), storer: .gpuWrite, reader: .cpuRead))
    }

    /// The default policy migrates the atomic's window; the flows' stores land once.
    @Test func theGPUStoresByDefault() async throws {
        _ = try await raceMatrix(RaceConfiguration(), flows: [.gpuAtomic, .gpuWrite], actions: writers + [.unbind, .suspendResume])
        let (w, r) = try raceDryWorld(RaceConfiguration(), .gpuAtomic)
        defer { raceShutDown(w) }
        guard case .value(let old) = r else { Issue.record("gpu-atomic: \(r)"); return }
        #expect(old == RacePage.pattern.firstWord(w.target))
        #expect(try w.mm.read(at: w.address(w.target), count: pageSize) == RacePage.incremented.bytes(page: w.target))
    }

    /// `--gpu-fault map`: the atomic takes the system page device-exclusive, and the matrix
    /// holds it at `make_device_exclusive` (every action; `DeviceExclusiveRaceTests`).
    @Test func atomicsOnMappedSystemPagesTakeThemDeviceExclusive() async throws {
        for hole in [false, true] {
            var c = RaceConfiguration()
            c.gpuFault = .map
            let m = try await raceMatrix(c, flows: [.gpuAtomic, .gpuWrite], actions: RaceAction.allCases, hole: hole)
            let steps = try #require(m.flows.first?.steps)
            #expect(steps == [RaceStep(kind: .gpuFault, direction: .none), RaceStep(kind: .deviceExclusive, direction: .none),
                              RaceStep(kind: .gpuFaultResolved, direction: .none)])
            let (w, _) = try raceDryWorld(c, .gpuAtomic, hole: hole)
            defer { raceShutDown(w) }
            #expect(w.gpu.addressSpace(for: w.mm)?.entry(at: w.address(w.target)).kind == .exclusive)
            #expect(w.mm.pageTableEntry(w.address(w.target)).kind == .deviceExclusive)
            #expect(w.gpu.vram.inUsePageCount == 0)
        }
    }

    @Test func thrashingDetection() async throws {
        var c = RaceConfiguration()
        c.gpuFault = .thrashing
        _ = try await raceMatrix(c, flows: [.gpuAtomic, .gpuWrite], actions: [.none, .cpuWrite, .munmap, .dontNeed, .mprotect])
    }

    /// Coherent VRAM: `migrateRangeToRAM` selects it (`CoherentMigrateToRAMTests`), and
    /// suspend evicts it.
    @Test func coherentVRAM() async throws {
        var c = RaceConfiguration()
        c.memory = .coherent
        _ = try await raceMatrix(c, flows: [.migrateToRAM, .suspend, .gpuAtomic], actions: [.none, .cpuRead, .cpuWrite, .gpuAtomic, .fork])
        let (w, r) = try raceDryWorld(c, .migrateToRAM)
        defer { raceShutDown(w) }
        guard case .migrated(let n) = r else { Issue.record("migrate-to-ram: \(r)"); return }
        #expect(n == w.pages && w.gpu.vram.inUsePageCount == 0)
    }

    @Test func theCallbackAPIOf2017AndPipelinedBatches() async throws {
        var c = RaceConfiguration()
        c.api = .callbacks2017
        let m = try await raceMatrix(c, flows: [.gpuAtomic, .gpuWrite, .cpuFault, .migrateToRAM],
                                     actions: [.none, .cpuWrite, .munmap, .migrateToDevice])
        // CPU faults and the migration back to RAM go through the 2017 fault ops with the
        // three-step path's steps, each of which the probe reached (checked by `raceMatrix`).
        for flow in [RaceFlow.cpuFault, .migrateToRAM] {
            let steps = try #require(m.flows.first { $0.flow == flow }?.steps)
            let kinds: [MigrationEvent.Kind] = [.setupBegin, .setupEnd, .migratePagesBegin, .migratePagesEnd,
                                                .fenceWaitBegin, .fenceWaitEnd, .finalizeBegin, .finalizeEnd]
            for kind in kinds { #expect(steps.contains(RaceStep(kind: kind, direction: .toRAM)), "\(flow): \(kind)") }
        }
        c = RaceConfiguration()
        c.pipeline = 2
        _ = try await raceMatrix(c, flows: [.suspend, .migrateToRAM, .gpuWrite], actions: [.none, .cpuWrite, .gpuRead, .evictAll])
    }

    /// VRAM of one batch: the GPU flows evict inside the flow; migrate-to-ram and suspend
    /// move what was resident.
    @Test func vramPressure() async throws {
        var c = RaceConfiguration()
        c.vramPages = 16
        let m = try await raceMatrix(c, flows: [.gpuAtomic, .gpuWrite, .migrateToRAM, .suspend], actions: [.none, .cpuRead, .munmap, .gpuAtomic])
        for flow in [RaceFlow.gpuAtomic, .gpuWrite] {
            let steps = try #require(m.flows.first { $0.flow == flow }?.steps)
            #expect(steps.contains(RaceStep(kind: .setupBegin, direction: .evict)), "\(flow): no eviction in \(steps)")
        }
        let (w, r) = try raceDryWorld(c, .suspend)
        defer { raceShutDown(w) }
        guard case .migrated(let n) = r else { Issue.record("suspend: \(r)"); return }
        #expect(n == 16 && w.residentAtStart == 16 && !w.gpu.isSuspended)
    }

    @Test func aHoleAndTheMappedBackend() async throws {
        _ = try await raceMatrix(RaceConfiguration(), flows: [.gpuAtomic, .gpuWrite], actions: [.none, .cpuRead, .dontNeed, .gpuAtomic, .fork], hole: true)
        _ = try await raceMatrix(RaceConfiguration(), flows: [.migrateToRAM, .suspend], actions: [.none, .cpuWrite, .gpuWrite, .shutdown], backend: .mapped)
    }

    /// `--occurrence 2 --target 20`: migrate-to-ram and suspend move two batches; the matrix
    /// holds the second while the action races on its pages.
    @Test func theSecondBatch() async throws {
        var o = RaceOptions()
        o.flows = [.migrateToRAM, .suspend]
        o.actions = [.none, .cpuWrite, .munmap, .gpuAtomic]
        o.occurrence = 2
        o.target = 20
        o.hold = .milliseconds(5)
        let m = try await runMatrix(o)
        #expect(m.failureLines.isEmpty, "\(m.failureLines.prefix(10).joined(separator: "\n"))")
        for f in m.flows { #expect(!f.steps.isEmpty, "\(f.flow)") }
        #expect(m.cells.allSatisfy { $0.fired })
        // Held at the second batch: migrate-to-ram's setup, pages and finalize steps report
        // the batch's first address (the fence steps report none).
        let w = try RaceWorld(o)
        defer { raceShutDown(w) }
        let held = m.cells.filter { $0.cell.flow == .migrateToRAM }.compactMap { $0.event?.address }.filter { $0 != 0 }
        #expect(!held.isEmpty && held.allSatisfy { $0 == w.address(16) }, "\(held) vs \(w.address(16))")
    }
}
