import DMAEngine
import NIOConcurrencyHelpers

/// A GPU-fault policy that migrates until a window ping-pongs, then pins it in system
/// memory for a while: nvidia-uvm's thrashing detection and pinning
/// (`uvm_perf_thrashing.c`), per fault window instead of per page.
///
/// Each window (the aligned `windowPages` around a fault) remembers which way its pages
/// last moved: to VRAM (a GPU fault this policy resolved by migrating) or back to RAM (a
/// CPU fault on a window it has a record of). A change of direction within `lapse` of the
/// window's previous move is a thrashing event; `threshold` consecutive events pin the
/// window for `pin`: its GPU faults — the one whose move completed the run included — map
/// the system pages instead, so the GPU reads and writes RAM remotely and the CPU stops
/// faulting. When the pin expires the window migrates again and is watched afresh. uvm first throttles the faulting processor (`nap`) and pins only after
/// repeated throttling; this policy pins at once.
///
/// State: one small record per window touched, dropped when its address space is
/// unbound; records idle for longer than `lapse` and `pin` are pruned as the table grows.
///
/// Threads: any; one lock.
public final class ThrashingMitigationPolicy: GPUFaultPolicy, @unchecked Sendable {
    /// The tunables (uvm's module parameters of the same names).
    public struct Parameters: Sendable, Equatable {
        /// Pages per fault window: what a GPU fault migrates or maps, and the unit
        /// thrashing is tracked in.
        public var windowPages: Int = 16
        /// Consecutive direction changes that make a window thrashing (uvm: 3).
        public var threshold: Int = 3
        /// Longest gap between two moves of a window that still counts as thrashing.
        /// uvm uses 250 µs; migrations here take tens of µs per window and a GPU/CPU
        /// round over a working set milliseconds, so the default is 20 ms.
        public var lapse: Duration = .milliseconds(20)
        /// How long a thrashing window stays in system memory (uvm: 300 ms). Zero never
        /// pins (thrashing is still tracked, nothing is counted in `pins`).
        public var pin: Duration = .milliseconds(300)

        public init() {}

        /// True when every field is usable: a positive window (one larger than the address
        /// space makes the whole space one window), threshold and lapse; a pin ≥ 0.
        public var isValid: Bool { problem == nil }

        /// Why `ThrashingMitigationPolicy.init` would refuse these parameters, or nil.
        public var problem: String? {
            if windowPages < 1 { return "windowPages \(windowPages) is below 1" }
            if threshold < 1 { return "threshold \(threshold) is below 1" }
            if lapse <= .zero { return "lapse \(lapse) is not positive" }
            if pin < .zero { return "pin \(pin) is negative" }
            return nil
        }
    }

    /// What the policy did so far.
    public struct Statistics: Sendable, Equatable {
        /// Windows found thrashing and pinned (a window pinned twice counts twice).
        public var pins = 0
        /// GPU faults resolved by migrating.
        public var migrations = 0
        /// GPU faults resolved by mapping system memory because their window was pinned.
        public var pinnedFaults = 0

        public init(pins: Int = 0, migrations: Int = 0, pinnedFaults: Int = 0) {
            self.pins = pins
            self.migrations = migrations
            self.pinnedFaults = pinnedFaults
        }
    }

    public let parameters: Parameters
    /// Bytes per window: `windowPages` pages, at most 2^51 of them (2^63 − 4 KiB, more
    /// than any address space), so that the shift neither wraps nor yields 0.
    private let span: UInt64

    private struct Key: Hashable {
        var space: ObjectIdentifier
        var window: UInt64
    }

    private struct Window {
        /// Which way the window's pages last moved (true: to VRAM).
        var towardVRAM: Bool
        var lastMove: UInt64
        var changes: Int
        var pinnedUntil: UInt64
    }

    private let lock = NIOLock()
    // Guarded by `lock`:
    private var windows: [Key: Window] = [:]
    private var stats = Statistics()
    /// Table size at which idle windows are pruned next (doubles when pruning frees little).
    private var pruneAt = 4096

    /// Nanoseconds on a monotonic clock: `lapse` and `pin` are measured on it.
    private let clock: @Sendable () -> UInt64
    /// `CLOCK_MONOTONIC` in nanoseconds, the default clock.
    public static let monotonicClock: @Sendable () -> UInt64 = { MonotonicTime.now() }

    /// - Parameter clock: monotonic nanoseconds (`CLOCK_MONOTONIC` by default); a test
    ///   or a simulation may pass its own to make the policy independent of real time.
    /// - Throws: `DeviceError.invalidArgument` when `parameters` is not valid.
    public init(_ parameters: Parameters = Parameters(),
                clock: @escaping @Sendable () -> UInt64 = monotonicClock) throws(DeviceError) {
        if let problem = parameters.problem { throw .invalidArgument(reason: "thrashing parameters: \(problem)") }
        self.parameters = parameters
        self.clock = clock
        span = UInt64(min(parameters.windowPages, Int.max >> 12)) << 12
    }

    public var statistics: Statistics { lock.withLock { stats } }

    /// Windows the policy holds a record of (all address spaces).
    public var trackedWindows: Int { lock.withLock { windows.count } }

    /// Whether the window holding `address` in `addressSpace` is pinned now.
    public func isPinned(_ address: UInt64, addressSpace: ObjectIdentifier) -> Bool {
        lock.withLock { windows[key(address, addressSpace)].map { $0.pinnedUntil > clock() } ?? false }
    }

    public func resolve(_ fault: GPUFaultInfo) -> GPUFaultDecision {
        let pinned = lock.withLock { () -> Bool in
            // Read under the lock: times stored in the table never exceed `now`.
            let now = clock()
            let k = key(fault.address, fault.addressSpace)
            // A pinned window maps; so does the fault whose move pins it (uvm maps the
            // access that finds the page thrashing rather than migrate it once more).
            if windows[k].map({ $0.pinnedUntil > now }) == true || moved(k, towardVRAM: true, now) {
                stats.pinnedFaults += 1
                return true
            }
            stats.migrations += 1
            return false
        }
        return pinned ? .mapSystemMemory(pages: parameters.windowPages) : .migrateToVRAM(pages: parameters.windowPages)
    }

    /// Only windows this policy has a record of (it migrated them, or saw them move) are
    /// updated: the fault window may also cover windows whose pages never were in VRAM.
    public func cpuFaultMigratedToRAM(_ range: Range<UInt64>, pages: Int, addressSpace: ObjectIdentifier) {
        guard pages > 0, !range.isEmpty else { return }
        lock.withLock {
            let now = clock()
            let first = range.lowerBound / span, last = (range.upperBound - 1) / span
            if last - first < UInt64(windows.count) {
                for w in first...last where windows[Key(space: addressSpace, window: w)] != nil {
                    _ = moved(Key(space: addressSpace, window: w), towardVRAM: false, now)
                }
            } else {
                // A range wider than the table (a whole-VMA window): walk the records instead.
                let hit = windows.keys.filter { $0.space == addressSpace && (first...last).contains($0.window) }
                for k in hit { _ = moved(k, towardVRAM: false, now) }
            }
        }
    }

    public func addressSpaceUnbound(_ addressSpace: ObjectIdentifier) {
        lock.withLock { windows = windows.filter { $0.key.space != addressSpace } }
    }

    private func key(_ address: UInt64, _ space: ObjectIdentifier) -> Key {
        Key(space: space, window: address / span)
    }

    /// Records a move of window `k` (lock held); returns whether this move pinned it.
    private func moved(_ k: Key, towardVRAM: Bool, _ now: UInt64) -> Bool {
        guard var w = windows[k] else {
            if windows.count >= pruneAt { prune(now) }
            windows[k] = Window(towardVRAM: towardVRAM, lastMove: now, changes: 0, pinnedUntil: 0)
            return false
        }
        if w.pinnedUntil > now { return false }
        if w.pinnedUntil != 0 {
            // The pin expired: watched afresh (its first move is no event, even within `lapse`).
            windows[k] = Window(towardVRAM: towardVRAM, lastMove: now, changes: 0, pinnedUntil: 0)
            return false
        }
        var pinned = false
        if w.towardVRAM != towardVRAM {
            // Only a change within `lapse` is a thrashing event; a later one starts the count over.
            w.changes = now - w.lastMove <= MonotonicTime.nanoseconds(parameters.lapse) ? w.changes + 1 : 0
            w.towardVRAM = towardVRAM
            if w.changes >= parameters.threshold && parameters.pin > .zero {
                w.pinnedUntil = now + MonotonicTime.nanoseconds(parameters.pin)
                w.changes = 0
                stats.pins += 1
                pinned = true
            }
        }
        w.lastMove = now
        windows[k] = w
        return pinned
    }

    /// Drops windows neither pinned nor moved within `lapse` (lock held).
    private func prune(_ now: UInt64) {
        let idle = MonotonicTime.nanoseconds(parameters.lapse)
        windows = windows.filter { $0.value.pinnedUntil > now || now - $0.value.lastMove <= idle }
        pruneAt = max(4096, windows.count * 2)
    }
}
