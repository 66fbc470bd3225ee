import NIOConcurrencyHelpers

/// Which way copies in flight touch a range of a region.
public struct InFlightAccess: OptionSet, Sendable, Hashable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// A submitted copy or fill writes into the range.
    public static let writes = InFlightAccess(rawValue: 1)
    /// A submitted copy reads from the range.
    public static let reads = InFlightAccess(rawValue: 2)
}

/// The engine's record of which bytes submitted work reads and writes until its fence
/// signals: what a driver (or a protocol checker) asks before it releases memory a copy
/// may still touch. Opt-in (`DMAEngine.Configuration.tracksInFlightCopies`); off, the
/// channels hold nil and pay one branch per submit.
///
/// Per fence it keeps the spans its descriptors read and write (merged and sorted per
/// region), so a query is a binary search per outstanding fence. A fence's spans count
/// until it signals — "in flight" means "its fence has not signalled", the rule that
/// fences gate the end of a migration — and are dropped lazily afterwards.
///
/// Threads: any; one lock. `track` runs on the submitting thread before the batch
/// reaches the backend.
final class InFlightTracker: @unchecked Sendable {
    /// A contiguous byte range of one region.
    struct Span: Comparable {
        var region: UInt32
        var start: Int
        var end: Int
        static func < (a: Span, b: Span) -> Bool { (a.region, a.start) < (b.region, b.start) }
    }

    private struct Record {
        let fence: Fence
        let writes: [Span]
        let reads: [Span]
    }

    private let lock = NIOLock()
    private var records: [Record] = []  // guarded by `lock`

    /// Records the spans of `descriptors` (the batch `fence` is about to carry).
    func track(_ fence: Fence, _ descriptors: UnsafeBufferPointer<CopyDescriptor>) {
        guard !descriptors.isEmpty else { return }
        var writes: [Span] = [], reads: [Span] = []
        writes.reserveCapacity(descriptors.count)
        for d in descriptors {
            writes.append(Span(region: d.destination.region.rawValue, start: d.destination.offset,
                               end: d.destination.offset + d.length))
            if d.operation == .copy {
                reads.append(Span(region: d.source.region.rawValue, start: d.source.offset, end: d.source.offset + d.length))
            }
        }
        let record = Record(fence: fence, writes: Self.merged(writes), reads: Self.merged(reads))
        lock.withLock {
            records.removeAll { $0.fence.isSignaled }
            records.append(record)
        }
    }

    /// How copies whose fences have not signalled touch `[offset, offset + length)` of `region`.
    func access(_ region: RegionID, offset: Int, length: Int) -> InFlightAccess {
        guard offset >= 0, length >= 0 else { return [] }
        let (end, overflow) = offset.addingReportingOverflow(max(length, 1))
        let probe = Span(region: region.rawValue, start: offset, end: overflow ? Int.max : end)
        return lock.withLock {
            records.removeAll { $0.fence.isSignaled }
            var out: InFlightAccess = []
            for r in records {
                if Self.overlaps(r.writes, probe) { out.insert(.writes) }
                if Self.overlaps(r.reads, probe) { out.insert(.reads) }
            }
            return out
        }
    }

    /// Sorted, with overlapping or touching spans of one region merged.
    private static func merged(_ spans: [Span]) -> [Span] {
        guard !spans.isEmpty else { return [] }
        let sorted = spans.sorted()
        var out: [Span] = [sorted[0]]
        for s in sorted.dropFirst() {
            if s.region == out[out.count - 1].region && s.start <= out[out.count - 1].end {
                out[out.count - 1].end = max(out[out.count - 1].end, s.end)
            } else {
                out.append(s)
            }
        }
        return out
    }

    /// Binary search in disjoint sorted spans: does any overlap `probe`?
    private static func overlaps(_ spans: [Span], _ probe: Span) -> Bool {
        // The last span starting before the probe's end is the only candidate.
        var lo = 0, hi = spans.count
        let key = Span(region: probe.region, start: probe.end, end: probe.end)
        while lo < hi {
            let mid = (lo + hi) / 2
            if spans[mid] < key { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0 else { return false }
        let s = spans[lo - 1]
        return s.region == probe.region && s.end > probe.start
    }
}

extension DMAEngine {
    /// Whether submitted work whose fence has not signalled reads or writes
    /// `[address, address + length)`. Answers only when the engine was created with
    /// `Configuration.tracksInFlightCopies` (empty otherwise).
    ///
    /// What a driver asks before freeing or handing on memory a copy might still touch;
    /// DeviceEmu answers HostMM's checked mode with it.
    public func copiesInFlight(at address: DMAAddress, length: Int) -> InFlightAccess {
        inFlight?.access(address.region, offset: address.offset, length: length) ?? []
    }
}
