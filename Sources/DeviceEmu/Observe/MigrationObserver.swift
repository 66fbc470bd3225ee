/// Watches the driver step by step: each stage of a migration batch, CPU faults, GPU
/// faults and evictions, with the fence seqno that ties copies to `finalize`.
///
/// The hook a trace recorder, a protocol checker or a test attaches to
/// (`Device.Configuration.observer`, `MirrorDevice.Configuration.observer`). When no observer is set the driver pays one
/// nil check per step.
///
/// Threads: `observe` is called on the thread doing the step (a migrating thread, a
/// faulting CPU thread, a GPU access). Keep it short and never call back into the
/// device from it. (`StepProbe` blocks it on purpose, while an action on another thread
/// calls into the device; it bounds the wait, since the action may need what the
/// reporting thread holds.)
public protocol MigrationObserver: AnyObject, Sendable {
    func observe(_ event: MigrationEvent)
}

/// One step of the driver, as reported to a `MigrationObserver`.
///
/// A value of plain fields: reporting allocates nothing.
public struct MigrationEvent: Sendable, Equatable {
    /// The steps, in the order a batch goes through them.
    public enum Kind: UInt8, Sendable, CaseIterable {
        /// Before `migrateVMASetup` (or `migrateDeviceRange` for an eviction).
        case setupBegin
        /// After setup; `pages` = pages collected (`cpages`).
        case setupEnd
        /// The batch's copies and clears were submitted; `pages` = descriptors, `seqno` = the fence.
        /// (A driver that copies with the CPU, as `MirrorDevice` does, reports it once the
        /// copies are done, with no fence: `seqno` 0, and no fence steps follow.)
        case copiesSubmitted
        /// Before `migrateVMAPages` / `migrateDevicePages`.
        case migratePagesBegin
        /// After it; `pages` = pages whose `struct page` state moved.
        case migratePagesEnd
        /// Before waiting on the batch's fence.
        case fenceWaitBegin
        /// The fence signalled: `time` is when the copy engine signalled it (or, if its
        /// completion callback had not run yet, when the wait returned), `beginTime` when the
        /// batch was submitted. Reported by the waiting thread, after `fenceWaitBegin`.
        case fenceSignaled
        /// The wait returned; `pages` = failed descriptors.
        case fenceWaitEnd
        /// Migrated pages were mapped in a device page table; `pages` = entries written.
        case deviceMap
        /// Before `migrateVMAFinalize` / `migrateDeviceFinalize`.
        case finalizeBegin
        /// After it; `pages` = pages that ended up migrated.
        case finalizeEnd
        /// A CPU fault reached the driver's `migrateToRAM`; `address` = the faulting page.
        case cpuFaultBegin
        /// `migrateToRAM` returned; `pages` = pages brought back.
        case cpuFaultEnd
        /// A GPU access found no usable device mapping; `address` = the faulting page.
        case gpuFault
        /// The fault was resolved; `pages` = device page-table entries written.
        case gpuFaultResolved
        /// A GPU atomic's fault took a System-RAM page device-exclusive
        /// (`make_device_exclusive`); the device maps it next. `address` = the page.
        case deviceExclusive
    }

    /// What a batch moves.
    public enum Direction: UInt8, Sendable, CaseIterable {
        /// System memory → VRAM (`nouveau_dmem_migrate_vma`).
        case toDevice
        /// VRAM → system memory on a CPU fault or request (`nouveau_dmem_migrate_to_ram`).
        case toRAM
        /// VRAM → system memory by PFN (`nouveau_dmem_evict_chunk`: teardown, suspend, pressure).
        case evict
        /// No migration (GPU fault events).
        case none
    }

    public var kind: Kind
    public var direction: Direction
    /// `CLOCK_MONOTONIC` nanoseconds of the step.
    public var time: UInt64
    /// For `…End` events, the time of the matching `…Begin` (0 otherwise), so a
    /// stateless consumer can draw spans.
    public var beginTime: UInt64
    /// Device-wide batch number (1, 2, …): ties a batch's events together.
    public var batch: UInt64
    /// The batch's fence seqno on its channel, once submitted (0 before).
    public var seqno: UInt64
    /// The copy channel of the batch (-1 before submission).
    public var channel: Int
    /// First address of the batch or fault (0 for evictions).
    public var address: UInt64
    /// A count whose meaning depends on `kind` (see each case).
    public var pages: Int

    public init(kind: Kind, direction: Direction, time: UInt64, beginTime: UInt64 = 0, batch: UInt64 = 0,
                seqno: UInt64 = 0, channel: Int = -1, address: UInt64 = 0, pages: Int = 0) {
        self.kind = kind
        self.direction = direction
        self.time = time
        self.beginTime = beginTime
        self.batch = batch
        self.seqno = seqno
        self.channel = channel
        self.address = address
        self.pages = pages
    }
}

extension MigrationEvent: CustomStringConvertible {
    /// One line for a log or `print(probe.firedAt!)`: step, direction, batch, then the fields
    /// that are set (`seqno`, `channel`, `address` in hex, `pages`).
    public var description: String {
        var s = "\(kind) \(direction) batch \(batch)"
        if seqno != 0 { s += " seqno \(seqno)" }
        if channel >= 0 { s += " channel \(channel)" }
        if address != 0 { s += " address 0x\(String(address, radix: 16))" }
        if pages != 0 { s += " pages \(pages)" }
        return s
    }
}
