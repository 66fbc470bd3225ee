import DeviceEmu
import HostMM
import NIOConcurrencyHelpers
import Testing

/// The pinned-race harness of `MirrorRaceTests`: a checked-mode machine with one dmirror
/// device observed by a `StepProbe`, one process whose `pages` pages hold a `PagePattern`,
/// and two opens of the device on it (`fd0` runs the flow, `fd1` is "another open of the
/// same mm"). Threads: the test thread and one probe action at a time.
final class MirrorRaceRig: @unchecked Sendable {
    static let pages = 16
    /// The page the CPU-side races touch.
    static let hot = 3
    let memory: PhysicalMemory
    let probe = StepProbe()
    let device: MirrorDevice
    let mm: AddressSpace
    let a: UInt64
    let pattern: PagePattern
    let fd0: Mirror
    let fd1: Mirror
    /// Processes forked by an action (exited at teardown).
    let children = NIOLockedValueBox<[AddressSpace]>([])
    /// Checked-mode rules the kernel itself breaks in this interleaving, at pages of the
    /// range only: two opens of one device share its owner, so one open's migration never
    /// invalidates the other, whose entries keep naming pages that moved
    /// (`device-pte-maps-migrated-page`, reproduced faithfully: see `CheckedDeviceTests`).
    var kernelQuirks: Set<ProtocolRule> = []

    /// The violations that are not an expected kernel quirk at a page of the range.
    var unexpectedViolations: [ProtocolViolation] {
        let range = a ..< a + UInt64(Self.pages * pageSize)
        return (memory.checker?.violations ?? []).filter { v in
            !(kernelQuirks.contains(v.rule) && v.address.map { range.contains($0) } == true)
        }
    }

    init(kind: MemoryType = .devicePrivate, seed: UInt64 = 7) throws {
        memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        device = try MirrorDevice(memory: memory, kind: kind,
                                  configuration: .init(vramSize: 4 << 20, chunkSize: 4 << 20, observer: probe))
        (mm, a, pattern) = try makeProcess(memory, pages: Self.pages, seed: seed)
        fd0 = try device.open(mm)
        fd1 = try device.open(mm)
    }

    func address(_ page: Int) -> UInt64 { a + UInt64(page * pageSize) }

    /// A page of `byte`s.
    static func filled(_ byte: UInt8) -> [UInt8] { [UInt8](repeating: byte, count: pageSize) }

    /// The CPU's view of page `p` (a fault brings it back from the device); nil when the
    /// access fails.
    func cpuPage(_ p: Int, in space: AddressSpace? = nil) -> [UInt8]? {
        try? (space ?? mm).read(at: address(p), count: pageSize)
    }

    /// Pages of the process (`first ..< pages`, all but `except`) that do not hold the pattern.
    func patternMismatches(in space: AddressSpace? = nil, except: Set<Int> = []) -> [Int] {
        (0..<Self.pages).filter { !except.contains($0) && cpuPage($0, in: space) != pattern.page($0) }
    }

    /// Waits for the probe's action, then checks HostMM's and the device's invariants and
    /// checked mode at this quiescent point. `note` names the interleaving in failures.
    func checkQuiescent(_ note: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(probe.waitForAction(timeout: .seconds(20)), "\(note): the action never returned", sourceLocation: sourceLocation)
        let spaces = [mm] + children.withLockedValue { $0 }
        let problems = memory.checkInvariants(addressSpaces: spaces)
        #expect(problems.isEmpty, "\(note): \(problems.prefix(3))", sourceLocation: sourceLocation)
        let own = device.checkInvariants()
        #expect(own.isEmpty, "\(note): \(own.prefix(3))", sourceLocation: sourceLocation)
        let violations = unexpectedViolations
        #expect(violations.isEmpty, "\(note): \(violations.prefix(3))", sourceLocation: sourceLocation)
    }

    /// Closes both opens, ends every process and shuts the device down: every device page
    /// must have come back, and checked mode must have seen nothing wrong.
    func teardown(_ note: String, sourceLocation: SourceLocation = #_sourceLocation) {
        fd0.close()
        fd1.close()
        #expect(device.inUsePageCount == 0, "\(note): \(device.inUsePageCount) device pages left after close",
                sourceLocation: sourceLocation)
        for child in children.withLockedValue({ $0 }) { child.exit() }
        mm.exit()
        device.shutdown()
        #expect(device.inUsePageCount == 0, "\(note): device pages leaked", sourceLocation: sourceLocation)
        let violations = unexpectedViolations
        #expect(violations.isEmpty, "\(note): \(violations.prefix(3))", sourceLocation: sourceLocation)
        #expect(memory.diagnostics.refcountUnderflowCount == 0 && memory.diagnostics.unlocksOfUnlockedPages == 0,
                "\(note)", sourceLocation: sourceLocation)
    }
}

/// The flows a race pins, and the steps each reports (see `MirrorDevice`).
enum MirrorFlow: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// `HMM_DMIRROR_MIGRATE_TO_DEV` of the whole range through `fd0`.
    case migrateToDevice
    /// `HMM_DMIRROR_MIGRATE_TO_SYS` of the whole range through `fd0` (migrated first).
    case migrateToSystem
    /// A CPU read of the hot page, migrated first (`dmirror_devmem_fault`).
    case cpuFault

    var testDescription: String { rawValue }

    var direction: MigrationEvent.Direction { self == .migrateToDevice ? .toDevice : .toRAM }

    /// Every step the flow reports, in order.
    var steps: [MigrationEvent.Kind] {
        switch self {
        case .migrateToDevice:
            return [.setupBegin, .setupEnd, .copiesSubmitted, .migratePagesBegin, .migratePagesEnd, .deviceMap,
                    .finalizeBegin, .finalizeEnd]
        case .migrateToSystem:
            return [.setupBegin, .setupEnd, .copiesSubmitted, .migratePagesBegin, .migratePagesEnd,
                    .finalizeBegin, .finalizeEnd]
        case .cpuFault:
            return [.cpuFaultBegin, .setupBegin, .setupEnd, .copiesSubmitted, .migratePagesBegin, .migratePagesEnd,
                    .finalizeBegin, .finalizeEnd, .cpuFaultEnd]
        }
    }

    /// What the flow returned, reduced to something comparable.
    enum Outcome: Equatable, CustomStringConvertible {
        case cpages(Int)
        case error(MirrorError)
        case bytes([UInt8])
        var description: String {
            switch self {
            case .cpages(let n): return "cpages \(n)"
            case .error(let e): return "\(e)"
            case .bytes(let b): return "page starting \(b.prefix(4))"
            }
        }
    }

    /// Puts the rig in the flow's starting state (pages on the device when the flow brings
    /// them back).
    func prepare(_ rig: MirrorRaceRig) throws {
        if self != .migrateToDevice { #expect(try rig.fd0.migrateToDevice(rig.a, npages: MirrorRaceRig.pages).cpages == 16) }
    }

    /// Runs the flow on this thread.
    func run(_ rig: MirrorRaceRig) -> Outcome {
        do throws(MirrorError) {
            switch self {
            case .migrateToDevice: return .cpages(try rig.fd0.migrateToDevice(rig.a, npages: MirrorRaceRig.pages).cpages)
            case .migrateToSystem: return .cpages(try rig.fd0.migrateToSystem(rig.a, npages: MirrorRaceRig.pages).cpages)
            case .cpuFault:
                return rig.cpuPage(MirrorRaceRig.hot).map { .bytes($0) } ?? .error(.fault)
            }
        } catch {
            return .error(error)
        }
    }
}
