/// Identifies the driver that owns a pgmap (`dev_pagemap.owner`, `migrate_vma.pgmap_owner`,
/// `hmm_range.dev_private_owner`). Any driver-chosen value; `init(_:)` uses the
/// identity of a driver object, as drivers pass a pointer to their device.
public struct PgmapOwner: Hashable, Sendable {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }
    /// The owner token of a driver object (its identity).
    public init(_ object: AnyObject) { rawValue = UInt(bitPattern: ObjectIdentifier(object)) }
}

/// The callbacks a driver provides with a device pgmap (`struct dev_pagemap_ops`).
///
/// Called from any thread. `pageFree` runs when a device page's refcount drops to 0
/// (no HostMM lock is held; the driver may call back into HostMM). `migrateToRAM` runs
/// from a CPU fault on a device-private entry with the faulting mm's mmap lock held in
/// read mode and a reference held on `fault.page` (so `MigrateVMA.faultPage` must be set
/// to it); it must not take the mmap lock again in write mode.
public protocol DevicePagemapOps: AnyObject, Sendable {
    /// Models `dev_pagemap_ops.page_free()`: the page is free again (refcount 0,
    /// mapping cleared); the driver returns it to its allocator.
    func pageFree(_ pfn: PFN, pagemap: DevicePagemap)

    /// Models `dev_pagemap_ops.migrate_to_ram()`: move the data behind `fault.page` back
    /// to System RAM (usually `migrateVMASetup` with `faultPage`, copy, `migrateVMAPages`,
    /// `migrateVMAFinalize`). Returning `.done` retries the access; `.sigbus` kills it.
    func migrateToRAM(_ fault: VMFault) -> VMFaultResult
}

/// The fault description handed to `migrateToRAM` (`struct vm_fault`).
public struct VMFault: @unchecked Sendable {
    /// The faulting VMA (`vmf->vma`).
    public let vma: VMA
    /// Page-aligned faulting address (`vmf->address`).
    public let address: UInt64
    /// The device-private page the entry pointed to (`vmf->page`).
    public let page: PFN
    /// True for a write access (`FAULT_FLAG_WRITE`).
    public let isWrite: Bool
    /// The faulting address space (`vmf->vma->vm_mm`), held for as long as the fault
    /// description is.
    public let mm: AddressSpace

    init(mm: AddressSpace, vma: VMA, address: UInt64, page: PFN, isWrite: Bool) {
        self.mm = mm
        self.vma = vma
        self.address = address
        self.page = page
        self.isWrite = isWrite
    }
}

/// What a fault handler returns (`vm_fault_t`).
public enum VMFaultResult: Sendable, Equatable {
    /// 0: handled (or nothing to do); the access is retried.
    case done
    /// `VM_FAULT_SIGBUS`: the access fails with `HostMMError.busError`.
    case sigbus
    /// `VM_FAULT_OOM`: the access fails with `HostMMError.outOfMemory`.
    case oom
}
