public import HostMM

/// Decides, fault by fault, whether a GPU fault migrates its window to VRAM or maps the
/// system pages: the seam where fault heuristics vary (nvidia-uvm's `uvm_perf_*`
/// modules — thrashing detection, prefetch — sit at this point of its fault path).
///
/// Set it with `MigrationPolicy.gpuFault = .custom(policy)`. The device asks `resolve`
/// once per GPU fault, reports what came of it (`gpuFaultResolved`), and tells the policy
/// when a CPU fault moved pages of an address
/// space back to RAM (the other half of a ping-pong) and when an address space is
/// unbound. Give each device its own instance: the calls do not name the device.
///
/// Threads: called from any thread, concurrently, with no device lock held (a CPU
/// fault's call holds the address space's mmap lock for read); implementations lock
/// internally and never call back into the device or HostMM.
public protocol GPUFaultPolicy: AnyObject, Sendable {
    /// How to resolve `fault`. A window of fewer than 1 page is read as 1, one larger
    /// than the VMA is clamped to it.
    func resolve(_ fault: GPUFaultInfo) -> GPUFaultDecision
    /// The device resolved `fault` as `decision` said: `migrated` pages moved to VRAM,
    /// `mapped` device-page-table entries written besides (system pages mapped, or a page
    /// taken device-exclusive for an atomic). A migration can move fewer pages than its
    /// window, none when VRAM is exhausted or the VMA is shared. Not called when the fault
    /// fails (`DeviceError.fault`, `.permissionDenied`…). The default does nothing.
    func gpuFaultResolved(_ fault: GPUFaultInfo, decision: GPUFaultDecision, migrated: Int, mapped: Int)
    /// A CPU fault moved `pages` pages of `range` (its fault window) in `addressSpace` from
    /// this device's VRAM back to RAM. Not called for evictions, explicit
    /// `migrateRangeToRAM`, suspend or teardown. The default does nothing.
    func cpuFaultMigratedToRAM(_ range: Range<UInt64>, pages: Int, addressSpace: ObjectIdentifier)
    /// The device unbound `addressSpace` (`Device.unbind`, teardown): forget its state,
    /// as the identifier may name another address space later. The default does nothing.
    func addressSpaceUnbound(_ addressSpace: ObjectIdentifier)
    /// Whether the device reports GPU accesses that go to system memory through a mapped
    /// entry (`remoteAccess`), as GPU access counters do. Read when the policy is set
    /// (`Device.init`, `setPolicy`). The default is false: such accesses cost nothing.
    var countsRemoteAccesses: Bool { get }
    /// A GPU access reached system memory through a mapped entry (no fault: the entry was
    /// valid), nvidia-uvm's access-counter notification without the hardware's sampling.
    /// Called after the access, on the accessing thread, once per page touched. Answer
    /// `.migrateToVRAM(pages:)` to migrate that window now (best effort, as uvm services
    /// a counter notification); `.none` leaves it mapped. The default answers `.none`.
    func remoteAccess(_ access: GPURemoteAccess) -> GPURemoteAccessResponse
}

extension GPUFaultPolicy {
    public var countsRemoteAccesses: Bool { false }
    public func remoteAccess(_ access: GPURemoteAccess) -> GPURemoteAccessResponse { .none }
    public func gpuFaultResolved(_ fault: GPUFaultInfo, decision: GPUFaultDecision, migrated: Int, mapped: Int) {}
    public func cpuFaultMigratedToRAM(_ range: Range<UInt64>, pages: Int, addressSpace: ObjectIdentifier) {}
    public func addressSpaceUnbound(_ addressSpace: ObjectIdentifier) {}
}

/// One GPU fault, as a `GPUFaultPolicy` sees it.
public struct GPUFaultInfo: Sendable, Equatable {
    /// What the faulting GPU access does.
    public enum Access: Sendable, Equatable {
        case read, write
        /// A read-modify-write (`atomicAdd`, `atomicCompareExchange`).
        case atomic
    }

    /// The faulting page (4 KiB-aligned).
    public var address: UInt64
    public var access: Access
    /// The VMA the page lies in (a window is clamped to it).
    public var vma: Range<UInt64>
    /// The VMA's flags: a `.shared` or file-backed VMA's pages cannot migrate to VRAM
    /// (`migrate_vma_setup` collects anonymous private pages only).
    public var vmaFlags: VMAFlags
    /// The CPU page-table entry of the page when the fault was taken (a peek: it may
    /// change before the fault is resolved): `.none` never touched, `.present` in RAM
    /// (or the zero page: a write to it faults again), `.devicePrivate` in a device's
    /// VRAM, `.migration` being migrated, `.deviceExclusive` held for atomics.
    public var cpuEntry: PageTableEntry.Kind
    /// The address space (`ObjectIdentifier` of its `AddressSpace`).
    public var addressSpace: ObjectIdentifier

    public init(address: UInt64, access: Access, vma: Range<UInt64>, vmaFlags: VMAFlags = [.read, .write],
                cpuEntry: PageTableEntry.Kind = .none, addressSpace: ObjectIdentifier) {
        self.address = address
        self.access = access
        self.vma = vma
        self.vmaFlags = vmaFlags
        self.cpuEntry = cpuEntry
        self.addressSpace = addressSpace
    }
}

/// What a `GPUFaultPolicy` decided for one fault.
public enum GPUFaultDecision: Sendable, Equatable {
    /// Migrate the aligned window of `pages` containing the fault to VRAM; pages that
    /// cannot move are mapped from system memory.
    case migrateToVRAM(pages: Int)
    /// Map the system pages of the aligned window of `pages` (`hmm_range_fault`); the
    /// data stays where it is (an atomic takes the page device-exclusive).
    case mapSystemMemory(pages: Int)
}

/// One GPU access to system memory through a mapped device-page-table entry.
public struct GPURemoteAccess: Sendable, Equatable {
    /// The page accessed (4 KiB-aligned).
    public var address: UInt64
    public var access: GPUFaultInfo.Access
    /// The address space (`ObjectIdentifier` of its `AddressSpace`).
    public var addressSpace: ObjectIdentifier

    public init(address: UInt64, access: GPUFaultInfo.Access, addressSpace: ObjectIdentifier) {
        self.address = address
        self.access = access
        self.addressSpace = addressSpace
    }
}

/// What a `GPUFaultPolicy` wants done about a remote access.
public enum GPURemoteAccessResponse: Sendable, Equatable {
    /// Leave the page mapped where it is.
    case none
    /// Migrate the aligned window of `pages` holding the page to VRAM now (clamped to the
    /// VMA; pages that cannot move stay mapped from system memory).
    case migrateToVRAM(pages: Int)
}
