import NIOConcurrencyHelpers

/// A CPU-fault policy that detects sequential scans and brings back ever larger windows
/// ahead of them: the kernel's on-demand readahead (`ondemand_readahead`: a hit at the
/// end of the previous window doubles the next one, up to a maximum), applied to device
/// pages instead of file pages.
///
/// A fault starts a stream with a window of `initialPages` from the faulting page
/// forward (1: a random access costs what nouveau's single page costs). A fault on the
/// page right after a stream's window continues it with twice the window, up to
/// `maxPages`; a fault inside the window (a page that could not move, another thread)
/// repeats the window's size. Each address space keeps up to `streams` streams, so
/// several threads scanning at once are each detected; a fault that continues none
/// replaces the least recently used one. Windows run forward and stop at the VMA's end.
///
/// Threads: any; one lock.
public final class SequentialPrefetchPolicy: CPUFaultPolicy, @unchecked Sendable {
    /// The tunables.
    public struct Parameters: Sendable, Equatable {
        /// Pages of a stream's first window (readahead's initial window).
        public var initialPages: Int = 1
        /// Largest window in pages (readahead's `ra_pages`; 512 is one migration batch).
        public var maxPages: Int = 512
        /// Streams tracked per address space.
        public var streams: Int = 8

        public init() {}

        /// True when `1 ≤ initialPages ≤ maxPages` and `streams` is in 1…64.
        public var isValid: Bool { problem == nil }

        /// Why `SequentialPrefetchPolicy.init` would refuse these parameters, or nil.
        public var problem: String? {
            if initialPages < 1 { return "initialPages \(initialPages) is below 1" }
            if maxPages < initialPages { return "maxPages \(maxPages) is below initialPages \(initialPages)" }
            if !(1...64).contains(streams) { return "streams \(streams) is outside 1...64" }
            return nil
        }
    }

    /// What the policy did so far.
    public struct Statistics: Sendable, Equatable {
        /// Faults that started a new stream.
        public var streamsStarted = 0
        /// Faults that continued a stream (sequential hits, or refaults inside a window).
        public var sequentialFaults = 0
        /// Pages of the windows handed out (not all of them need be this device's).
        public var pagesRequested = 0

        public init(streamsStarted: Int = 0, sequentialFaults: Int = 0, pagesRequested: Int = 0) {
            self.streamsStarted = streamsStarted
            self.sequentialFaults = sequentialFaults
            self.pagesRequested = pagesRequested
        }
    }

    public let parameters: Parameters

    private struct Stream {
        var start: UInt64
        var end: UInt64
        var pages: Int
        var lastUse: UInt64
    }

    private let lock = NIOLock()
    // Guarded by `lock`:
    private var spaces: [ObjectIdentifier: [Stream]] = [:]
    private var tick: UInt64 = 0
    private var stats = Statistics()

    /// - Throws: `DeviceError.invalidArgument` when `parameters` is not valid.
    public init(_ parameters: Parameters = Parameters()) throws(DeviceError) {
        if let problem = parameters.problem { throw .invalidArgument(reason: "prefetch parameters: \(problem)") }
        self.parameters = parameters
    }

    public var statistics: Statistics { lock.withLock { stats } }

    public func window(for fault: CPUFaultInfo) -> Range<UInt64> {
        let page = fault.address & ~4095
        return lock.withLock {
            tick &+= 1
            var streams = spaces.removeValue(forKey: fault.addressSpace) ?? []
            if streams.isEmpty && spaces.count >= Self.maxAddressSpaces { forgetLeastRecentSpace() }
            defer { spaces[fault.addressSpace] = streams }
            let pages: Int
            let slot: Int
            if let i = streams.firstIndex(where: { $0.end == page }) {
                pages = streams[i].pages > parameters.maxPages / 2 ? parameters.maxPages : streams[i].pages * 2
                slot = i
                stats.sequentialFaults += 1
            } else if let i = streams.firstIndex(where: { $0.start <= page && page < $0.end }) {
                pages = streams[i].pages
                slot = i
                stats.sequentialFaults += 1
            } else {
                pages = parameters.initialPages
                if streams.count < parameters.streams {
                    streams.append(Stream(start: 0, end: 0, pages: 0, lastUse: 0))
                    slot = streams.count - 1
                } else {
                    slot = streams.indices.min { streams[$0].lastUse < streams[$1].lastUse }!
                }
                stats.streamsStarted += 1
            }
            let room = fault.vma.upperBound > page ? (fault.vma.upperBound - page) >> 12 : 1
            let end = page + min(UInt64(pages), room) << 12
            streams[slot] = Stream(start: page, end: end, pages: pages, lastUse: tick)
            stats.pagesRequested += Int((end - page) >> 12)
            return page ..< end
        }
    }

    /// Address spaces kept at most: CPU faults also come from address spaces the device
    /// never bound (and so never reports unbound); the least recently used one goes.
    static let maxAddressSpaces = 256

    /// Drops the address space whose latest fault is the oldest (lock held).
    private func forgetLeastRecentSpace() {
        let latest = spaces.mapValues { $0.map(\.lastUse).max() ?? 0 }
        if let oldest = latest.min(by: { $0.value < $1.value })?.key { spaces.removeValue(forKey: oldest) }
    }

    public func addressSpaceUnbound(_ addressSpace: ObjectIdentifier) {
        lock.withLock { _ = spaces.removeValue(forKey: addressSpace) }
    }

    /// Address spaces the policy holds streams for.
    public var trackedAddressSpaces: Int { lock.withLock { spaces.count } }
}
