import Histogram

/// Latency samples recorded in nanoseconds, summarised as p50, p90, p99, p99.9 and max
/// in microseconds (HdrHistogram, 3 significant digits).
///
/// `record` allocates nothing: the counts array is sized once at init for values up to
/// `highestTrackableNanoseconds`; larger samples are clamped to it and counted in `clamped`.
///
/// Threads: a value type; one thread records into a given instance. Give each thread
/// its own and combine them with `merge` after joining.
struct LatencyHistogram: Sendable {
    /// The percentiles reported, with the suffix each gets in field names.
    static let percentiles: [(percentile: Double, suffix: String)] = [
        (50, "p50"), (90, "p90"), (99, "p99"), (99.9, "p99_9"),
    ]

    private var histogram: Histogram<UInt64>
    private let highest: UInt64
    /// Samples above `highestTrackableNanoseconds`, recorded as that value.
    private(set) var clamped: UInt64 = 0

    /// - Parameter highestTrackableNanoseconds: the largest sample kept exactly (default 100 s).
    init(highestTrackableNanoseconds: UInt64 = 100_000_000_000) {
        highest = Swift.max(highestTrackableNanoseconds, 2)
        histogram = Histogram(lowestDiscernibleValue: 1, highestTrackableValue: highest, numberOfSignificantValueDigits: .three)
    }

    /// Records one sample in nanoseconds.
    @inline(__always)
    mutating func record(nanoseconds: UInt64) {
        if nanoseconds > highest {
            clamped &+= 1
            histogram.record(highest)
        } else {
            histogram.record(nanoseconds)
        }
    }

    var count: UInt64 { histogram.totalCount }

    /// The value at `percentile` (0...100) in microseconds; 0 when empty.
    func microseconds(atPercentile percentile: Double) -> Double {
        guard count > 0 else { return 0 }
        return Double(histogram.valueAtPercentile(percentile)) / 1000
    }

    var maxMicroseconds: Double { count > 0 ? Double(histogram.max) / 1000 : 0 }
    var meanMicroseconds: Double { count > 0 ? histogram.mean / 1000 : 0 }

    /// `(name, µs)` pairs: `fault_p50_us`, `fault_p90_us`, `fault_p99_us`, `fault_p99_9_us`, `fault_max_us`.
    func summary(prefix: String) -> [(name: String, microseconds: Double)] {
        Self.percentiles.map { ("\(prefix)_\($0.suffix)_us", microseconds(atPercentile: $0.percentile)) }
            + [("\(prefix)_max_us", maxMicroseconds)]
    }

    /// Adds the summary fields and `<prefix>_samples` to `record`.
    func write(to record: inout RunRecord, prefix: String) {
        for (name, value) in summary(prefix: prefix) { record.set(name, value) }
        record.set("\(prefix)_samples", Int(count))
    }

    /// Adds `other`'s samples (e.g. from another thread) to this one.
    mutating func merge(_ other: LatencyHistogram) {
        histogram.add(other.histogram)
        clamped &+= other.clamped
    }

    mutating func reset() {
        histogram.reset()
        clamped = 0
    }

    /// The field-name prefixes that have latency summaries in `record` (those with a `_p50_us` field).
    static func prefixes(in record: RunRecord) -> [String] {
        record.fields.compactMap { field in
            field.name.hasSuffix("_p50_us") ? String(field.name.dropLast("_p50_us".count)) : nil
        }
    }
}
