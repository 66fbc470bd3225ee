/// Decides, fault by fault, how much a CPU fault on a device page brings back to RAM: the
/// seam where prefetch heuristics vary (the kernel's on-demand readahead for files,
/// nvidia-uvm's `uvm_perf_prefetch`; nouveau brings back one page, Xe the allocation).
///
/// Set it with `MigrationPolicy.cpuFaultGranularity = .custom(policy)`. The device asks
/// `window` once per CPU fault (`dev_pagemap_ops.migrate_to_ram`) and tells the policy
/// when an address space is unbound. Give each device its own instance.
///
/// Threads: called from any thread, concurrently, with no device lock held and the
/// faulting address space's mmap lock held for read; implementations lock internally
/// and never call back into the device or HostMM.
public protocol CPUFaultPolicy: AnyObject, Sendable {
    /// The range to bring back for `fault`: page-aligned bounds, clamped to the VMA. A
    /// range that does not contain the faulting page (after clamping) is replaced by
    /// that page alone. Pages in it that are not this device's stay where they are.
    func window(for fault: CPUFaultInfo) -> Range<UInt64>
    /// The device unbound `addressSpace` (`Device.unbind`, teardown): forget its state.
    /// The default does nothing.
    func addressSpaceUnbound(_ addressSpace: ObjectIdentifier)
}

extension CPUFaultPolicy {
    public func addressSpaceUnbound(_ addressSpace: ObjectIdentifier) {}
}

/// One CPU fault on a device page, as a `CPUFaultPolicy` sees it.
public struct CPUFaultInfo: Sendable, Equatable {
    /// The faulting page (4 KiB-aligned).
    public var address: UInt64
    /// The VMA the page lies in.
    public var vma: Range<UInt64>
    /// The address space (`ObjectIdentifier` of its `AddressSpace`).
    public var addressSpace: ObjectIdentifier
    /// The range the page was migrated to VRAM with, when the device knows it (what
    /// `.wholeAllocation` brings back).
    public var allocation: Range<UInt64>?
    /// Whether the faulting access writes (`FAULT_FLAG_WRITE`).
    public var isWrite: Bool

    public init(address: UInt64, vma: Range<UInt64>, addressSpace: ObjectIdentifier, allocation: Range<UInt64>? = nil,
                isWrite: Bool = false) {
        self.address = address
        self.vma = vma
        self.addressSpace = addressSpace
        self.allocation = allocation
        self.isWrite = isWrite
    }
}
