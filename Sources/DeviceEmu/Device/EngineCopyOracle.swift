public import DMAEngine
public import HostMM

/// Answers HostMM's checked mode about copies in flight from a DMA engine's in-flight
/// tracking (`DMAEngine.Configuration.tracksInFlightCopies`): the driver-side glue that
/// turns a PFN into the engine address its copies use — System RAM through the host
/// region, device pages through their `DeviceMemory`.
///
/// `Device` makes and registers one for itself; a driver of your own built on
/// `DeviceMemory` and a `DMAEngine` registers one with `memory.checker?.register(_:)` to
/// have finalize-under-a-running-copy reported.
///
/// Threads: any; immutable. Called by HostMM with page locks (never page-table locks) held.
public final class EngineCopyOracle: InFlightCopyOracle, @unchecked Sendable {
    public let memory: PhysicalMemory
    public let engine: DMAEngine
    /// The engine region holding System RAM (`memory.baseAddress` at offset 0).
    public let hostRegion: RegionID
    /// The device memories whose pages the engine copies to and from.
    public let deviceMemories: [DeviceMemory]

    public init(memory: PhysicalMemory, engine: DMAEngine, hostRegion: RegionID, deviceMemories: [DeviceMemory]) {
        self.memory = memory
        self.engine = engine
        self.hostRegion = hostRegion
        self.deviceMemories = deviceMemories
    }

    /// Copies submitted on the engine, whose fences have not signalled, touching `pfn`.
    public func copiesInFlight(_ pfn: PFN) -> CopyDirections {
        let address: DMAAddress
        if memory.isRAM(pfn) {
            address = DMAAddress(region: hostRegion, offset: Int(pfn.rawValue) * pageSize)
        } else if let a = deviceMemories.lazy.compactMap({ $0.dmaAddress(of: pfn) }).first {
            address = a
        } else {
            return []
        }
        let access = engine.copiesInFlight(at: address, length: pageSize)
        var out: CopyDirections = []
        if access.contains(.writes) { out.insert(.into) }
        if access.contains(.reads) { out.insert(.outOf) }
        return out
    }
}
