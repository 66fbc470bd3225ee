import Logging
import NIOConcurrencyHelpers
import Synchronization

/// Checked mode's state for one `PhysicalMemory`: the violations found, the drivers'
/// oracles, and the bookkeeping of migrations in progress (`MigrationSessions`).
///
/// Created by `PhysicalMemory` when its `CheckedMode` is on (`memory.checker`); drivers
/// register their oracles with it and may report violations they detect themselves
/// (DeviceEmu reports a device page freed twice to its own free list).
///
/// Threads: any. Recording takes one lock; counting is atomic. Oracles are held weakly
/// and called with no checker lock held.
public final class ProtocolChecker: @unchecked Sendable {
    /// The settings it was created with.
    public let mode: CheckedMode
    private let ruleCounts: UnsafeMutablePointer<Synchronization.Atomic<Int>>
    private let totalCount = Synchronization.Atomic<Int>(0)
    private let recorded = NIOLockedValueBox<[ProtocolViolation]>([])
    private let oracles = NIOLockedValueBox(OracleSet())
    /// Pages already reported as leaked (a teardown retried reports them once).
    private let leaked = NIOLockedValueBox<Set<PFN>>([])
    /// Pages whose device mapping finalize already reported: their free is not reported again.
    private let mappingReported = NIOLockedValueBox<Set<PFN>>([])
    let sessions: MigrationSessions
    /// `PhysicalMemory.diagnostics`, to keep its violation count in step.
    private let diagnostics: PhysicalMemory.Diagnostics

    init(mode: CheckedMode, diagnostics: PhysicalMemory.Diagnostics, pfnLimit: UInt64) {
        self.mode = mode
        self.diagnostics = diagnostics
        sessions = MigrationSessions(pfnLimit: pfnLimit)
        let n = ProtocolRule.allCases.count
        ruleCounts = .allocate(capacity: n)
        for i in 0..<n { (ruleCounts + i).initialize(to: Synchronization.Atomic(0)) }
    }

    deinit { ruleCounts.deallocate() }

    // MARK: Results

    /// Violations recorded so far, in the order found (at most `mode.maxRecorded`).
    public var violations: [ProtocolViolation] { recorded.withLockedValue { $0 } }

    /// Violations found so far (all of them, recorded or not).
    public var violationCount: Int { totalCount.load(ordering: .relaxed) }

    /// Violations of `rule` found so far.
    public func count(of rule: ProtocolRule) -> Int {
        ruleCounts[Self.index(rule)].load(ordering: .relaxed)
    }

    /// Non-zero counts by rule.
    public var countsByRule: [ProtocolRule: Int] {
        var out: [ProtocolRule: Int] = [:]
        for rule in ProtocolRule.allCases where count(of: rule) > 0 { out[rule] = count(of: rule) }
        return out
    }

    /// Returns the recorded violations and forgets them and every count (between test
    /// phases, or per torture interval).
    @discardableResult
    public func reset() -> [ProtocolViolation] {
        for rule in ProtocolRule.allCases { ruleCounts[Self.index(rule)].store(0, ordering: .relaxed) }
        totalCount.store(0, ordering: .relaxed)
        return recorded.withLockedValue { list in
            defer { list = [] }
            return list
        }
    }

    // MARK: Reporting

    /// Records `violation` (and logs it, per `mode`). Drivers call this for rules they
    /// check on their side.
    public func report(_ violation: ProtocolViolation) {
        ruleCounts[Self.index(violation.rule)].add(1, ordering: .relaxed)
        totalCount.add(1, ordering: .relaxed)
        diagnostics.violations.add(1, ordering: .relaxed)
        recorded.withLockedValue { list in
            if list.count < mode.maxRecorded { list.append(violation) }
        }
        mode.logger?.error("\(violation)", metadata: [
            "rule": "\(violation.rule)",
            "pfn": violation.pfn.map { "\($0)" } ?? "-",
            "site": "\(violation.site)",
        ])
    }

    /// Records a violation of `rule`; returns it (for the throwing calls).
    @discardableResult
    public func report(_ rule: ProtocolRule, pfn: PFN?, address: UInt64? = nil, site: CallSite?,
                       _ detail: String) -> ProtocolViolation {
        let v = ProtocolViolation(rule: rule, pfn: pfn, address: address, site: site?.description ?? "", detail: detail)
        report(v)
        return v
    }

    private static func index(_ rule: ProtocolRule) -> Int {
        ProtocolRule.allCases.firstIndex(of: rule)!
    }

    // MARK: Oracles

    /// Registers a driver's copy-state oracle (held weakly).
    public func register(_ oracle: any InFlightCopyOracle) {
        oracles.withLockedValue { $0 = $0.adding(copy: oracle) }
    }

    /// Registers a driver's device-mapping oracle (held weakly).
    public func register(_ oracle: any DeviceMappingOracle) {
        oracles.withLockedValue { $0 = $0.adding(mapping: oracle) }
    }

    /// Forgets every oracle that is `object` (a driver going away).
    public func unregister(_ object: AnyObject) {
        oracles.withLockedValue { $0 = $0.removing(object) }
    }

    /// The copies in flight touching `pfn`, per every registered oracle.
    func copiesInFlight(_ pfn: PFN, _ set: OracleSet) -> CopyDirections {
        var out: CopyDirections = []
        for box in set.copy { if let o = box.oracle { out.formUnion(o.copiesInFlight(pfn)) } }
        return out
    }

    /// A device address mapping `pfn`, per the registered oracles, or nil.
    func deviceMapping(_ pfn: PFN, _ set: OracleSet) -> UInt64? {
        for box in set.mapping { if let o = box.oracle, let va = o.deviceMapping(of: pfn) { return va } }
        return nil
    }

    /// The oracles now (one lock, one retain).
    var currentOracles: OracleSet { oracles.withLockedValue { $0 } }

    // MARK: Dedupe helpers

    /// True the first time `pfn` is reported leaked.
    func firstLeakReport(_ pfn: PFN) -> Bool {
        leaked.withLockedValue { $0.insert(pfn).inserted }
    }

    /// A page whose stale device mapping finalize reported: its free is not reported again.
    func noteMappingReported(_ pfn: PFN) {
        _ = mappingReported.withLockedValue { $0.insert(pfn) }
    }

    func consumeMappingReported(_ pfn: PFN) -> Bool {
        mappingReported.withLockedValue { $0.isEmpty ? false : $0.remove(pfn) != nil }
    }
}

/// The registered oracles: an immutable value replaced on registration.
final class OracleSet: Sendable {
    struct WeakCopy: Sendable { weak var oracle: (any InFlightCopyOracle)? }
    struct WeakMapping: Sendable { weak var oracle: (any DeviceMappingOracle)? }
    let copy: [WeakCopy]
    let mapping: [WeakMapping]

    init(copy: [WeakCopy] = [], mapping: [WeakMapping] = []) {
        self.copy = copy
        self.mapping = mapping
    }

    var isEmpty: Bool { copy.isEmpty && mapping.isEmpty }

    func adding(copy o: any InFlightCopyOracle) -> OracleSet {
        OracleSet(copy: copy.filter { $0.oracle != nil } + [WeakCopy(oracle: o)], mapping: mapping)
    }

    func adding(mapping o: any DeviceMappingOracle) -> OracleSet {
        OracleSet(copy: copy, mapping: mapping.filter { $0.oracle != nil } + [WeakMapping(oracle: o)])
    }

    func removing(_ object: AnyObject) -> OracleSet {
        OracleSet(copy: copy.filter { $0.oracle.map { $0 !== object } ?? false },
                  mapping: mapping.filter { $0.oracle.map { $0 !== object } ?? false })
    }
}
