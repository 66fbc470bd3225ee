public import HostMM

/// The `dev_pagemap_ops` object HostMM keeps for each chunk: forwards to a driver it
/// holds weakly, so registered pgmaps do not keep the driver alive.
///
/// A driver creates one before it can pass itself, gives it to `DeviceMemory`, and sets
/// `target` once initialised. After the driver is gone, freed pages are dropped and CPU
/// faults on its pages fail with SIGBUS.
///
/// Threads: any; `target` is set once, before any page of the driver exists.
public final class PagemapOpsForwarder: DevicePagemapOps, @unchecked Sendable {
    public weak var target: (any DevicePagemapOps)?

    public init() {}

    public func pageFree(_ pfn: PFN, pagemap: DevicePagemap) {
        target?.pageFree(pfn, pagemap: pagemap)
    }

    public func migrateToRAM(_ fault: VMFault) -> VMFaultResult {
        target?.migrateToRAM(fault) ?? .sigbus
    }
}
