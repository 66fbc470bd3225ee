public import HostMM

/// The `dev_pagemap_ops` object HostMM keeps for each chunk: forwards to a driver it
/// holds weakly, so registered pgmaps do not keep the driver alive.
///
/// A driver creates one before it can pass itself, gives it to `DeviceMemory`, and sets
/// `target` once initialised. While the driver is going away (its `deinit` evicting VRAM
/// already sees `target` as nil), freed pages go straight back to `memory`; after both
/// are gone they are dropped, and CPU faults on the driver's pages fail with SIGBUS.
///
/// Threads: any; `target` and `memory` are set once, before any page of the driver exists.
public final class PagemapOpsForwarder: DevicePagemapOps, @unchecked Sendable {
    public weak var target: (any DevicePagemapOps)?
    /// Where freed pages go when `target` is gone.
    public weak var memory: DeviceMemory?

    public init() {}

    public func pageFree(_ pfn: PFN, pagemap: DevicePagemap) {
        if let target {
            target.pageFree(pfn, pagemap: pagemap)
        } else {
            memory?.freePage(pfn)
        }
    }

    public func migrateToRAM(_ fault: VMFault) -> VMFaultResult {
        target?.migrateToRAM(fault) ?? .sigbus
    }
}
