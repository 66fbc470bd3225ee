import DeviceEmu
import Foundation
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
    /// False when the flow failed (with an expected error): its store, if any, did not happen.
    private var flowTookEffect = true
    /// What the target was found to hold by the first read that matched the shadow model:
    /// every later read must agree (the GPU view and the CPU must see the same page).
    private var settledTarget: RacePage?

    init(world: RaceWorld, flow: RaceFlow, action: RaceAction) {
        self.world = world
        self.flow = flow
        self.action = action
    }

    private var target: Int { world.target }
    private func hex(_ a: UInt64) -> String { "0x" + String(a, radix: 16) }
    private func names(_ pages: [RacePage]) -> String { pages.map(\.description).joined(separator: " or ") }

    /// The flow's own result: a migration of every page when nothing raced; a read (or the
    /// old word of an atomic) of the target page seeing it before or after the action; an
    /// error only where expected.
    mutating func flowResult(_ r: RaceFlowResult) {
        let seen = RaceShadow.seenByFlow(world.targetBase, action: action)
        switch r {
        case .migrated(let n):
            // A migrating flow moves the whole range, or back what was in VRAM when it
            // started (under VRAM pressure, `--vram` below the range, only what fit).
            let want = flow.pagesMoved(world)
            if action == .none && n != want { problems.append("\(flow.rawValue) moved \(n) of \(want) pages") }
        case .read(let bytes):
            if !seen.contains(where: { $0.bytes(page: target) == bytes }) {
                if RaceShadow.readMayTear(world.configuration, storer: action),
                   RaceShadow.isTornMix(bytes, of: seen, page: target) {
                    notes.append("the flow read page \(target) while \(action.rawValue) stored it: a mix of \(names(seen))")
                    break
                }
                problems.append("the flow read page \(target) as not \(names(seen))\(describe(bytes, page: target))")
            }
        case .value(let v):
            if !seen.contains(where: { $0.firstWord(target) == v }) {
                problems.append("the flow's atomic returned \(hex(v)), the page held \(seen.map { hex($0.firstWord(target)) }.joined(separator: " or "))")
            }
        case .wrote: break
        case .failed(let error):
            flowTookEffect = false
            // The flow aimed at the target where it was when the flow started.
            if RaceExpectations.flowMayFail(flow, action, error, at: world.originalAddress(target))
                || RaceExpectations.outOfRAM(error, world.configuration, at: world.originalAddress(target)) {
                notes.append("the flow failed as documented: \(error)")
            } else {
                problems.append("the flow failed: \(error)")
            }
        }
    }

    /// The action's own result: reads see the start (or the flow's store), the atomic
    /// returns the word found there, errors only where expected.
    mutating func actionResult(_ r: RaceActionResult) {
        let seen = RaceShadow.seenByAction(world.targetBase, flow: flow)
        switch r {
        case .done: break
        case .read(let bytes):
            if !seen.contains(where: { $0.bytes(page: target) == bytes }) {
                if RaceShadow.readMayTear(world.configuration, storer: flow, reader: action),
                   RaceShadow.isTornMix(bytes, of: seen, page: target) {
                    notes.append("\(action.rawValue) read page \(target) while \(flow.rawValue) stored it: a mix of \(names(seen))")
                    break
                }
                problems.append("\(action.rawValue) read page \(target) as not \(names(seen))\(describe(bytes, page: target))")
            }
        case .value(let v):
            if !seen.contains(where: { $0.firstWord(target) == v }) {
                problems.append("gpu-atomic returned \(hex(v)), the page held \(seen.map { hex($0.firstWord(target)) }.joined(separator: " or "))")
            }
        case .failed(let error):
            actionTookEffect = false
            if RaceExpectations.actionMayFail(flow, action, error, memory: world.configuration.memory)
                || RaceExpectations.outOfRAM(error, world.configuration, at: world.address(target)) {
                notes.append("\(action.rawValue) failed as documented: \(error)")
            } else {
                problems.append("\(action.rawValue) failed: \(error)")
            }
        }
    }

    /// What page `p` may hold now: the pattern, or for the target what the flow and the
    /// action left of its start (`world.targetBase`: the pattern, or zeros for a hole).
    private func expected(_ p: Int) -> [RacePage] {
        guard p == target else { return [.pattern] }
        if let settledTarget { return [settledTarget] }
        return RaceShadow.target(world.targetBase, flow: flow, flowTookEffect: flowTookEffect,
                                 action: action, actionTookEffect: actionTookEffect)
    }

    /// Checks the bytes a read of page `p` returned against the shadow model; returns the
    /// problem, if any. The target's first match settles it.
    private mutating func judge(_ p: Int, _ bytes: [UInt8], by who: String) -> String? {
        let want = expected(p)
        if want.contains(.unmapped) { return "\(who)page \(p) still reads after munmap" }
        guard let match = want.first(where: { $0.bytes(page: p) == bytes }) else {
            return "\(who)page \(p) is not \(names(want))\(describe(bytes, page: p))"
        }
        if p == target { settledTarget = match }
        return nil
    }

    /// Every page through the process's GPU view, when one is bound (by the flow or the
    /// action): a stale device entry — to a freed, migrated or unmapped page — reads wrong
    /// here. Runs before the CPU reads, which fault pages back to RAM.
    mutating func gpuPages() {
        if world.mirror != nil { return mirrorPages() }
        guard let space = world.gpu.addressSpace(for: world.mm) else { return }
        if world.moved {
            // Read the old addresses first, while no fault at the new ones has refreshed
            // anything: a device entry the move did not invalidate still reads there.
            for p in 0..<world.pages { oldAddress(p, by: "GPU: ") { a throws(DeviceError) in try space.read(at: a, count: pageSize) } }
        }
        for p in 0..<world.pages {
            let a = world.address(p)
            do {
                if let problem = judge(p, try space.read(at: a, count: pageSize), by: "GPU: ") { problems.append(problem) }
            } catch {
                if expected(p) != [.unmapped] || error != .fault(address: a) {
                    problems.append("GPU read of page \(p) (\(names(expected(p)))): \(error)")
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

    /// `--driver mirror`: every page by the mirror's READ, while the open is open. An entry
    /// it kept is read without a fault, so a stale one — to a freed or migrated page —
    /// reads wrong here; a missing one is faulted in from the CPU page table.
    private mutating func mirrorPages() {
        guard let m = world.mirror, m.isOpen else { return }
        for p in 0..<world.pages {
            do {
                if let problem = judge(p, try world.mirrorRead(m, page: p), by: "mirror: ") { problems.append(problem) }
            } catch {
                if expected(p) != [.unmapped] || error != .fault {
                    problems.append("mirror READ of page \(p) (\(names(expected(p)))): \(error)")
                }
            }
        }
        if action == .mprotect && actionTookEffect {
            // On the device, the page is this device's read-only private entry, which
            // `hmm_range_fault` reports as it is, without faulting (`hmm_vma_handle_pte`:
            // "Don't fault in device private pages owned by the caller"); dmirror_do_fault
            // then finds a write fault not writable: WARN_ON and -EFAULT. Elsewhere the
            // write fault meets the VMA without VM_WRITE: -EPERM (`hmm_vma_fault`).
            let onDevice = world.mm.pageTableEntry(world.address(target)).kind == .devicePrivate
            let want: MirrorError = onDevice ? .fault : .permissionDenied
            do throws(MirrorError) {
                try world.mirrorWrite(m, page: target, [UInt8](repeating: 1, count: pageSize))
                problems.append("a mirror WRITE to page \(target) succeeded after mprotect(PROT_READ)")
            } catch {
                if error != want {
                    problems.append("a mirror WRITE after mprotect(PROT_READ) failed with \(error), not \(want)")
                }
            }
        }
    }

    /// Every page by a CPU read: the pattern, or for the target what the action left.
    mutating func pages() {
        if world.moved {
            let mm = world.mm
            for p in 0..<world.pages { oldAddress(p, by: "") { a throws(HostMMError) in try mm.read(at: a, count: pageSize) } }
        }
        for p in 0..<world.pages {
            let a = world.address(p)
            do {
                if let problem = judge(p, try world.mm.read(at: a, count: pageSize), by: "") { problems.append(problem) }
            } catch {
                if expected(p) != [.unmapped] || error != .segmentationFault(address: a, reason: .notMapped) {
                    problems.append("CPU read of page \(p) (\(names(expected(p)))): \(error)")
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

    /// Page `p`'s address before the range moved, read by `read`: after `mremap` nothing is
    /// mapped there (SIGSEGV for the CPU, a GPU fault — no device entry may survive the
    /// move); after `mremap-dontunmap` the old range is mapped and empty (zeros, or what
    /// the flow's access wrote there after the move).
    private mutating func oldAddress<E: Error & Equatable>(_ p: Int, by who: String, _ read: (UInt64) throws(E) -> [UInt8]) {
        let a = world.originalAddress(p)
        let mapped = action == .mremapDontUnmap
        let want = p == target ? RaceShadow.inOldRange(flow: flow, flowTookEffect: flowTookEffect) : [.zeros]
        do {
            let bytes = try read(a)
            if !mapped {
                problems.append("\(who)page \(p) still reads at its old address \(hex(a)) after mremap\(describe(bytes, page: p))")
            } else if !want.contains(where: { $0.bytes(page: p) == bytes }) {
                problems.append("\(who)page \(p)'s old address \(hex(a)) is not \(names(want)) after mremap-dontunmap\(describe(bytes, page: p))")
            }
        } catch {
            let unmapped: any Error = who.isEmpty ? HostMMError.segmentationFault(address: a, reason: .notMapped) : DeviceError.fault(address: a)
            if mapped || (unmapped as? E) != error {
                problems.append("\(who)read of page \(p)'s old address \(hex(a)) after \(action.rawValue): \(error)")
            }
        }
    }

    /// A page the `pin` action pinned is still the page the process maps at the target
    /// (migration must refuse a page with references it cannot account for, and a pin
    /// takes a device-private page back to RAM first), and it holds what the CPU reads
    /// there; then the pin is released.
    mutating func pinnedPages() {
        let w = world
        let pinned = w.pinned
        guard !pinned.isEmpty else { return }
        defer {
            w.memory.unpinUserPages(pinned)
            w.pinned = []
        }
        let a = w.address(target)
        for page in pinned {
            guard let from = w.memory.bytes(page) else {
                problems.append("the pinned page \(page) of page \(target) is not CPU-reachable (zone \(w.memory.zone(page)))")
                continue
            }
            do {
                let mapped = try w.mm.getUserPages(a, count: 1, write: false)
                defer { for m in mapped { w.memory.putPage(m) } }
                if mapped != [page] { problems.append("page \(target) maps \(mapped), not its pinned page \(page): a pinned page moved") }
                let bytes = try w.mm.read(at: a, count: pageSize)
                if !bytes.withUnsafeBytes({ memcmp($0.baseAddress!, from, pageSize) == 0 }) {
                    problems.append("the pinned page \(page) does not hold what page \(target) reads\(describe(bytes, page: target))")
                }
            } catch {
                problems.append("checking the pinned page of page \(target): \(error)")
            }
        }
    }

    /// What else the page holds, when it is something the shadow model knows, or else the
    /// known contents it is stitched from (a store torn by a concurrent read), 8 bytes at a
    /// time: "bytes 0..<2048 the marker, 2048..<4096 the pattern"; `?` where none matches.
    private func describe(_ bytes: [UInt8], page: Int) -> String {
        let known = RacePage.known.compactMap { k in k.bytes(page: page).map { (k, $0) } }
        for (other, b) in known where bytes == b { return " (it is \(other))" }
        guard bytes.count == pageSize else { return " (\(bytes.count) bytes)" }
        var runs: [(start: Int, end: Int, name: String)] = []
        for word in stride(from: 0, to: pageSize, by: 8) {
            let name = known.first { $0.1[word ..< word + 8] == bytes[word ..< word + 8] }.map { "\($0.0)" } ?? "?"
            if let last = runs.last, last.name == name, last.end == word { runs[runs.count - 1].end = word + 8 }
            else { runs.append((word, word + 8, name)) }
        }
        let shown = runs.prefix(8).map { "\($0.start)..<\($0.end) \($0.name)" }.joined(separator: ", ")
        return " (bytes \(shown)\(runs.count > 8 ? ", … \(runs.count) runs" : ""))"
    }

    /// A forked child sees the pattern on every page, and the target as it started or as
    /// the flow's store left it (the actions never write the child);
    /// then HostMM's invariants over both processes and the device's. The child exits.
    mutating func childAndInvariants() {
        let child = world.child
        if let child {
            for p in 0..<world.pages {
                do {
                    let want = p == target ? RaceShadow.inChild(world.targetBase, flow: flow, flowTookEffect: flowTookEffect,
                                                                 action: action, actionTookEffect: actionTookEffect) : [.pattern]
                    let bytes = try child.read(at: world.address(p), count: pageSize)
                    if !want.contains(where: { $0.bytes(page: p) == bytes }) {
                        problems.append("the forked child's page \(p) is not \(names(want))\(describe(bytes, page: p))")
                    }
                } catch { problems.append("the forked child's read of page \(p): \(error)") }
            }
        }
        let invariants = world.memory.checkInvariants(addressSpaces: [world.mm] + (child.map { [$0] } ?? []))
            + world.gpu.checkInvariants() + (world.otherDeviceIfMade?.checkInvariants() ?? [])
            + (world.dmirror?.checkInvariants() ?? [])
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
        // The open's release evicts the dmirror device; its shutdown waits for what is in flight.
        w.mirror?.close()
        w.dmirror?.shutdown()
        let vram = w.gpu.vram.inUsePageCount + (other?.vram.inUsePageCount ?? 0) + (w.dmirror?.inUsePageCount ?? 0)
        let ram = max(0, w.freeRAMAtStart - w.memory.freeRAMPageCount)
        let checker = w.memory.checker!
        if vram + ram + checker.unfinishedMigrations > 0 {
            problems.append("leaked: VRAM pages \(vram), RAM frames \(ram), unfinished migrations \(checker.unfinishedMigrations)")
        }
        problems += checker.violations.prefix(5).map { "protocol: \($0)" }
        excuseFaithfulQuirks()
    }

    /// Moves the problems a `RaceQuirk` of lib/test_hmm.c explains to the notes.
    private mutating func excuseFaithfulQuirks() {
        guard let quirk = RaceQuirk.known(flow, action, target: target) else { return }
        let excused = problems.filter(quirk.covers)
        guard !excused.isEmpty else { return }
        problems.removeAll(where: quirk.covers)
        notes.append(quirk.why + " (" + excused.joined(separator: "; ") + ")")
    }
}
