public import HostMM

/// The dmirror device's answer to HostMM's checked mode: whether one of its mirrors'
/// page tables still maps a page (the mirrors share a reverse map in checked mode). Its
/// copies are CPU copies, done before the step that follows them: nothing is ever in
/// flight, so it answers no copy questions.
///
/// Threads: any; called by HostMM with page locks (never page-table locks) held.
extension MirrorDevice: DeviceMappingOracle {
    /// A mirrored virtual address whose entry maps `pfn`, in any open mirror.
    public func deviceMapping(of pfn: PFN) -> UInt64? { reverseMappings?.address(of: pfn) }
}
