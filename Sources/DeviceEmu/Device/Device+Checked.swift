public import HostMM

/// The device's answers to HostMM's checked mode: which copies are in flight (an
/// `EngineCopyOracle` over its engine, which a device makes keep in-flight records when
/// the memory is checked) and which device page-table entries map a page (the reverse
/// map its address spaces share in checked mode).
///
/// With an engine passed in at init that does not track in-flight copies, the copy
/// answers are always "none": finalize under a running copy goes unreported.
///
/// Threads: any; called by HostMM with page locks (never page-table locks) held.
extension Device: DeviceMappingOracle {
    func registerWithChecker() {
        guard let checker = memory.checker, let copyOracle else { return }
        checker.register(copyOracle as any InFlightCopyOracle)
        checker.register(self as any DeviceMappingOracle)
    }

    /// A GPU virtual address whose device page-table entry maps `pfn`, in any bound space.
    public func deviceMapping(of pfn: PFN) -> UInt64? { reverseMappings?.address(of: pfn) }
}
