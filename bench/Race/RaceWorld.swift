import DMAEngine
import DeviceEmu
import HostMM
import NIOConcurrencyHelpers

/// The fresh machine of one race-matrix cell: checked-mode emulated RAM, one device (in the
/// matrix's `RaceConfiguration`) whose observer is a `StepProbe` (forwarding to a `RaceStepRecorder`), and a process whose
/// `pages` pages carry a known pattern, migrated in batches of 16 so a flow has two batches.
///
/// Threads: the matrix's thread builds and tears it down; the probe's action thread reads
/// it and sets `child` (locked).
final class RaceWorld: @unchecked Sendable {
    /// Pages per migrate_vma batch: the racing action aims at the first of the batches.
    static let batchPages = 16

    let memory: PhysicalMemory
    /// The nouveau-style device: the driver under test, or with `--driver mirror` only the
    /// device some actions use (no probe).
    let gpu: Device
    /// `--driver mirror`: the dmirror device, whose observer is the probe, and the one
    /// open of it that mirrors the process (closed by `unbind`).
    let dmirror: MirrorDevice?
    let mirror: Mirror?
    let probe: StepProbe
    let recorder = RaceStepRecorder()
    let mm: AddressSpace
    /// Where the range was mapped at first (the `mremap` action moves it away from here).
    let originalBase: UInt64
    let pages: Int
    /// The page the racing actions aim at (and the faulting page of the fault flows).
    let target: Int
    /// What the target page starts as: the pattern, or zeros when it is a hole
    /// (`RaceOptions.targetHole`: never touched, so migrations populate it).
    let targetBase: RacePage
    /// The driver configuration the device was built with.
    let configuration: RaceConfiguration
    /// VRAM pages in use once the flow was prepared (what `evict` must move): set by
    /// `RaceFlow.prepare` on the matrix's thread before the probe is armed.
    var residentAtStart = 0
    /// RAM frames free before the process existed: all of them must come back.
    let freeRAMAtStart: Int
    private let forked = NIOLockedValueBox<AddressSpace?>(nil)
    /// Where the range is mapped now (`originalBase` until an `mremap` action moved it).
    private let movedBase = NIOLockedValueBox<UInt64?>(nil)
    /// The pages a `pin` action pinned (unpinned by the cell's check).
    private let pins = NIOLockedValueBox<[PFN]>([])
    /// The frames `squeezeRAM` took (`--ram`), until `releaseRAM`.
    private let ballast = NIOLockedValueBox<[PFN]>([])
    /// The `other-device` action's device, made on first use.
    private let other = NIOLockedValueBox<Device?>(nil)
    private let backend: MigrateOptions.Backend

    init(_ o: RaceOptions) throws {
        pages = o.pages
        target = o.target
        configuration = o.configuration
        targetBase = o.targetHole ? .zeros : .pattern
        backend = o.copyBackend
        let vramPages = o.configuration.vramPages ?? RaceConfiguration.defaultVRAMPages
        do {
            // The process, a forked child's copies, and migration destinations in flight.
            memory = try PhysicalMemory(ramBytes: (16 << 20) + 3 * pages * pageSize,
                                        maxDevicePages: 2 * vramPages + 4096, checked: .on)
        } catch { throw RaceFailure("cannot create emulated RAM: \(error)") }
        probe = StepProbe(forwardingTo: recorder)
        var c = o.configuration.device(policy: try o.configuration.policy(batchPages: Self.batchPages), backend: o.copyBackend)
        let onMirror = o.configuration.driver == .mirror
        c.observer = onMirror ? nil : probe
        do { gpu = try Device(memory: memory, configuration: c) } catch {
            throw RaceFailure("cannot create the device: \(error)")   // an io_uring setup error says how to fall back
        }
        if onMirror {
            let kind: MemoryType = o.configuration.memory == .coherent ? .deviceCoherent : .devicePrivate
            do {
                dmirror = try MirrorDevice(memory: memory, kind: kind,
                                           configuration: .init(name: "race-dmirror", vramSize: vramPages * pageSize,
                                                                chunkSize: 2 << 20, observer: probe))
            } catch { throw RaceFailure("cannot create the dmirror device: \(error)") }
        } else {
            dmirror = nil
        }
        freeRAMAtStart = memory.freeRAMPageCount
        mm = AddressSpace(memory: memory)
        do {
            originalBase = try mm.mmap(length: pages * pageSize)
            for p in 0..<pages where !(o.targetHole && p == target) {
                try mm.write(at: originalBase + UInt64(p * pageSize), bytes: RacePage.pattern.bytes(page: p)!)
            }
        } catch { throw RaceFailure("cannot map the process: \(error)") }
        do { mirror = try dmirror?.open(mm) } catch { throw RaceFailure("cannot open the dmirror device: \(error)") }
    }

    /// With `--ram N`, takes every free RAM frame but N (after the flow's preparation): the
    /// flow and the action run short of System RAM. Nothing without `--ram`.
    func squeezeRAM() {
        guard let leave = configuration.ramPages else { return }
        var taken: [PFN] = []
        while memory.freeRAMPageCount > leave, let p = memory.allocPage() { taken.append(p) }
        ballast.withLockedValue { $0 += taken }
    }

    /// Gives back what `squeezeRAM` took (before the checks, which fault every page back).
    func releaseRAM() {
        for p in ballast.withLockedValue({ b in defer { b = [] }; return b }) { memory.putPage(p) }
    }

    /// Where the range is mapped now: a flow reads it once, when it starts (a racing
    /// `mremap` moves the range under it); the checks read it after the action.
    var base: UInt64 { movedBase.withLockedValue { $0 } ?? originalBase }
    /// Whether an `mremap` action moved the range.
    var moved: Bool { base != originalBase }
    var range: Range<UInt64> { base ..< base + UInt64(pages * pageSize) }
    func address(_ page: Int) -> UInt64 { base + UInt64(page * pageSize) }
    /// Page `page`'s address before an `mremap` action moved the range.
    func originalAddress(_ page: Int) -> UInt64 { originalBase + UInt64(page * pageSize) }

    /// The `mremap` actions: `MREMAP_MAYMOVE|MREMAP_FIXED` onto a new range of the same size
    /// (mapped first, finding free address space as a process would); or with `dontUnmap`,
    /// `MREMAP_MAYMOVE|MREMAP_DONTUNMAP`, which leaves the old range mapped and empty.
    func moveRange(dontUnmap: Bool = false) throws(HostMMError) {
        let length = pages * pageSize
        if dontUnmap {
            let to = try mm.mremap(originalBase, oldLength: length, newLength: length, flags: [.mayMove, .dontUnmap])
            movedBase.withLockedValue { $0 = to }
            return
        }
        let to = try mm.mmap(length: length)
        do {
            _ = try mm.mremap(originalBase, oldLength: length, newLength: length, flags: [.mayMove, .fixed], newAddress: to)
        } catch {
            try? mm.munmap(to, length: length)
            throw error
        }
        movedBase.withLockedValue { $0 = to }
    }

    /// The pages a `pin` action pinned and has not released.
    var pinned: [PFN] {
        get { pins.withLockedValue { $0 } }
        set { pins.withLockedValue { $0 = newValue } }
    }
    /// The GPU-fault window of `batchPages` holding the target page: aligned in the address
    /// space, clamped to the range (as `GPUFault.window` cuts it).
    var window: Range<UInt64> {
        let span = UInt64(Self.batchPages * pageSize)
        let start = max(address(target) / span * span, base)
        return start ..< min(start / span * span + span, range.upperBound)
    }

    /// The child a `fork` action made, if any.
    var child: AddressSpace? {
        get { forked.withLockedValue { $0 } }
        set { forked.withLockedValue { $0 = newValue } }
    }

    /// A second device on the same machine (its own pgmap owner, the same configuration,
    /// no probe), made now if no action made it yet; nil until then.
    func otherDevice() throws -> Device {
        try other.withLockedValue { (d: inout Device?) throws -> Device in
            if let d { return d }
            var c = configuration.device(policy: try configuration.policy(batchPages: Self.batchPages), backend: backend)
            c.name = "race-other"
            do { d = try Device(memory: memory, configuration: c) } catch { throw RaceFailure("cannot create the second device: \(error)") }
            return d!
        }
    }

    /// The second device, if the `other-device` action made it.
    var otherDeviceIfMade: Device? { other.withLockedValue { $0 } }

    /// The GPU view of the process, bound now if the flow had not.
    func space() throws(DeviceError) -> GPUAddressSpace { try gpu.bind(mm) }
}

/// Records the distinct (kind, direction) steps a flow reports, in order of first report,
/// and every event.
///
/// Threads: any (locked).
final class RaceStepRecorder: MigrationObserver, @unchecked Sendable {
    private let seen = NIOLockedValueBox<(steps: [RaceStep], events: [MigrationEvent])>(([], []))

    func observe(_ event: MigrationEvent) {
        let step = RaceStep(kind: event.kind, direction: event.direction)
        seen.withLockedValue {
            if !$0.steps.contains(step) { $0.steps.append(step) }
            $0.events.append(event)
        }
    }

    /// Forgets what was seen (the flow's preparation) and records from now on.
    func reset() { seen.withLockedValue { $0 = ([], []) } }

    var steps: [RaceStep] { seen.withLockedValue { $0.steps } }
    /// Every event in order of report (which batch reached which step when: what tells a
    /// pipelined configuration from a strict sequence).
    var events: [MigrationEvent] { seen.withLockedValue { $0.events } }
}

/// One step of a driver flow: a `MigrationEvent` kind in one direction.
struct RaceStep: Hashable, Sendable, CustomStringConvertible {
    var kind: MigrationEvent.Kind
    var direction: MigrationEvent.Direction
    var description: String { direction == .none ? "\(kind)" : "\(kind).\(direction)" }
}

/// A race matrix that could not run (its machine could not be built); a cell's findings
/// are in its record, not thrown.
struct RaceFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
