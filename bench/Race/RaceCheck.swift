import DeviceEmu
import HostMM

/// Judges one race-matrix cell after its flow and action returned: collects every
/// difference from the shadow model as a problem.
///
/// Threads: the matrix's thread, after the action thread finished.
struct RaceCheck {
    let world: RaceWorld
    let flow: RaceFlow
    let action: RaceAction
    private(set) var problems: [String] = []
    /// Documented errors the flow or the action met (`RaceExpectations`): not failures, but
    /// worth seeing.
    private(set) var notes: [String] = []
    /// False when the action failed (with an expected error): it then changed nothing.
    private var actionTookEffect = true

    init(world: RaceWorld, flow: RaceFlow, action: RaceAction) {
        self.world = world
        self.flow = flow
        self.action = action
    }

    private var target: Int { world.target }
    private func hex(_ a: UInt64) -> String { "0x" + String(a, radix: 16) }

    /// The flow's own result: a migration of every page when nothing raced; a read of the
    /// target page seeing it before or after the action; an error only where expected.
    mutating func flowResult(_ r: RaceFlowResult) {
        switch r {
        case .migrated(let n):
            // `evict` moves what was in VRAM when it started: the whole range, or under VRAM
            // pressure (`--vram` below the range) only what fit.
            let want = flow == .evict ? world.residentAtStart : world.pages
            if action == .none && n != want { problems.append("\(flow.rawValue) moved \(n) of \(want) pages") }
        case .read(let bytes):
            let before = world.targetBase.bytes(page: target)
            let after = action.targetAfter(world.targetBase).bytes(page: target)
            if bytes != before && bytes != after {
                problems.append("the flow read page \(target) as neither \(world.targetBase) nor \(action.targetAfter(world.targetBase))")
            }
        case .failed(let error):
            if RaceExpectations.flowMayFail(flow, action, error, at: world.address(target)) {
                notes.append("the flow failed as documented: \(error)")
            } else {
                problems.append("the flow failed: \(error)")
            }
        }
    }

    /// The action's own result: reads see the pattern (the flows write nothing), the
    /// atomic returns the pattern's word, errors only where expected.
    mutating func actionResult(_ r: RaceActionResult) {
        switch r {
        case .done: break
        case .read(let bytes):
            if bytes != world.targetBase.bytes(page: target) {
                problems.append("\(action.rawValue) read page \(target) as not \(world.targetBase)\(describe(bytes, page: target))")
            }
        case .value(let v):
            let want = world.targetBase.firstWord(target)
            if v != want { problems.append("gpu-atomic returned \(hex(v)), the page held \(hex(want))") }
        case .failed(let error):
            actionTookEffect = false
            if RaceExpectations.actionMayFail(flow, action, error) {
                notes.append("\(action.rawValue) failed as documented: \(error)")
            } else {
                problems.append("\(action.rawValue) failed: \(error)")
            }
        }
    }

    /// What page `p` must hold now: the target what the action left of its start
    /// (`world.targetBase`: the pattern, or zeros when it started as a hole).
    private func expected(_ p: Int) -> RacePage {
        guard p == target else { return .pattern }
        return actionTookEffect ? action.targetAfter(world.targetBase) : world.targetBase
    }

    /// Every page through the process's GPU view, when one is bound (by the flow or the
    /// action): a stale device entry — to a freed, migrated or unmapped page — reads wrong
    /// here. Runs before the CPU reads, which fault pages back to RAM.
    mutating func gpuPages() {
        guard let space = world.gpu.addressSpace(for: world.mm) else { return }
        for p in 0..<world.pages {
            let want = expected(p)
            let a = world.address(p)
            do {
                let bytes = try space.read(at: a, count: pageSize)
                if want == .unmapped {
                    problems.append("GPU: page \(p) still reads after munmap")
                } else if bytes != want.bytes(page: p) {
                    problems.append("GPU: page \(p) is not \(want)\(describe(bytes, page: p))")
                }
            } catch {
                if want != .unmapped || error != .fault(address: a) {
                    problems.append("GPU read of page \(p) (\(want)): \(error)")
                }
            }
        }
        if action == .mprotect && actionTookEffect {
            let a = world.address(target)
            do {
                try space.write(at: a, bytes: [1])
                problems.append("a GPU store to page \(target) succeeded after mprotect(PROT_READ)")
            } catch {
                if error != .permissionDenied(address: a) {
                    problems.append("a GPU store after mprotect(PROT_READ) failed with \(error), not a permission fault")
                }
            }
        }
    }

    /// Every page by a CPU read: the pattern, or for the target what the action left.
    mutating func pages() {
        for p in 0..<world.pages {
            let want = expected(p)
            let a = world.address(p)
            do {
                let bytes = try world.mm.read(at: a, count: pageSize)
                if want == .unmapped {
                    problems.append("page \(p) still reads after munmap")
                } else if bytes != want.bytes(page: p) {
                    problems.append("page \(p) is not \(want)\(describe(bytes, page: p))")
                }
            } catch {
                if want != .unmapped || error != .segmentationFault(address: a, reason: .notMapped) {
                    problems.append("CPU read of page \(p) (\(want)): \(error)")
                }
            }
        }
        if action == .mprotect && actionTookEffect {
            let a = world.address(target)
            do {
                try world.mm.write(at: a, bytes: [1])
                problems.append("a CPU store to page \(target) succeeded after mprotect(PROT_READ)")
            } catch {
                if error != .segmentationFault(address: a, reason: .accessDenied) {
                    problems.append("a CPU store after mprotect(PROT_READ) failed with \(error), not SEGV_ACCERR")
                }
            }
        }
    }

    /// What else the page holds, when it is something the shadow model knows.
    private func describe(_ bytes: [UInt8], page: Int) -> String {
        for other in [RacePage.pattern, .marker, .incremented, .zeros, .zerosIncremented] where bytes == other.bytes(page: page) {
            return " (it is \(other))"
        }
        return ""
    }

    /// A forked child sees the pattern on every page (nothing writes after the fork);
    /// then HostMM's invariants over both processes and the device's. The child exits.
    mutating func childAndInvariants() {
        let child = world.child
        if let child {
            for p in 0..<world.pages {
                do {
                    let want = p == target ? world.targetBase : .pattern
                    if try child.read(at: world.address(p), count: pageSize) != want.bytes(page: p) {
                        problems.append("the forked child's page \(p) is not \(want)")
                    }
                } catch { problems.append("the forked child's read of page \(p): \(error)") }
            }
        }
        let invariants = world.memory.checkInvariants(addressSpaces: [world.mm] + (child.map { [$0] } ?? []))
            + world.gpu.checkInvariants() + (world.otherDeviceIfMade?.checkInvariants() ?? [])
        problems += invariants.prefix(5).map { "invariant: \($0)" }
        child?.exit()
        world.child = nil
    }

    /// Teardown (munmap, unbind, exit, device shutdown) must return every VRAM page and RAM
    /// frame and finish every migration; the checker must have seen no broken rule.
    mutating func tearDown() {
        let w = world
        do { try w.mm.munmap(w.base, length: w.pages * pageSize) } catch { problems.append("munmap at teardown: \(error)") }
        w.gpu.unbind(w.mm)
        w.mm.exit()
        do { try w.gpu.shutdown() } catch { problems.append("device shutdown: \(error)") }
        let other = w.otherDeviceIfMade
        do { try other?.shutdown() } catch { problems.append("second device shutdown: \(error)") }
        let vram = w.gpu.vram.inUsePageCount + (other?.vram.inUsePageCount ?? 0)
        let ram = max(0, w.freeRAMAtStart - w.memory.freeRAMPageCount)
        let checker = w.memory.checker!
        if vram + ram + checker.unfinishedMigrations > 0 {
            problems.append("leaked: VRAM pages \(vram), RAM frames \(ram), unfinished migrations \(checker.unfinishedMigrations)")
        }
        problems += checker.violations.prefix(5).map { "protocol: \($0)" }
    }
}
