import Testing
@testable import dmem_bench

@Suite struct LatencyHistogramTests {
    /// 1, 2, …, 1000 µs recorded in ns.
    func uniform() -> LatencyHistogram {
        var h = LatencyHistogram()
        for us in 1...1000 { h.record(nanoseconds: UInt64(us) * 1000) }
        return h
    }

    @Test func percentilesOfKnownSamplesInMicroseconds() {
        let h = uniform()
        #expect(h.count == 1000)
        // HdrHistogram with 3 significant digits: within 0.1% of the exact order statistic.
        for (p, expected) in [(50.0, 500.0), (90, 900), (99, 990), (99.9, 999)] {
            let got = h.microseconds(atPercentile: p)
            #expect(abs(got - expected) <= expected * 0.001, "p\(p): \(got)")
        }
        #expect(abs(h.maxMicroseconds - 1000) <= 1)
    }

    @Test func summaryFieldsAreNamedForThePrefix() {
        var record = RunRecord()
        uniform().write(to: &record, prefix: "fault")
        #expect(record.fields.map(\.name) == ["fault_p50_us", "fault_p90_us", "fault_p99_us", "fault_p99_9_us", "fault_max_us", "fault_samples"])
        #expect(record["fault_samples"] == .int(1000))
        #expect(LatencyHistogram.prefixes(in: record) == ["fault"])
    }

    /// Each summary field holds its own percentile (p99 is not p90 under another name).
    @Test func summaryFieldsHoldTheirOwnPercentiles() {
        var record = RunRecord()
        uniform().write(to: &record, prefix: "batch")
        for (name, expected) in [("batch_p50_us", 500.0), ("batch_p90_us", 900), ("batch_p99_us", 990),
                                 ("batch_p99_9_us", 999), ("batch_max_us", 1000)] {
            let got = record[name]?.numeric ?? -1
            #expect(abs(got - expected) <= expected * 0.001, "\(name): \(got)")
        }
    }

    @Test func skewedSamplesShowTheTail() {
        var h = LatencyHistogram()
        for _ in 0..<990 { h.record(nanoseconds: 2_000) }
        for _ in 0..<10 { h.record(nanoseconds: 500_000) }
        #expect(abs(h.microseconds(atPercentile: 50) - 2) < 0.01)
        #expect(abs(h.microseconds(atPercentile: 90) - 2) < 0.01)
        #expect(abs(h.microseconds(atPercentile: 99.9) - 500) <= 0.5)
        #expect(abs(h.maxMicroseconds - 500) <= 0.5)
    }

    @Test func emptyReportsZerosAndHugeSamplesAreClampedNotLost() {
        let empty = LatencyHistogram()
        #expect(empty.summary(prefix: "x").allSatisfy { $0.microseconds == 0 })
        var h = LatencyHistogram(highestTrackableNanoseconds: 1_000_000)
        h.record(nanoseconds: 5_000_000_000)
        h.record(nanoseconds: 10)
        #expect(h.count == 2)
        #expect(h.clamped == 1)
        #expect(abs(h.maxMicroseconds - 1000) <= 1)
    }

    /// Samples clamped on another thread stay counted as clamped after a merge.
    @Test func mergeKeepsTheOtherThreadsClampedCount() {
        var a = LatencyHistogram(highestTrackableNanoseconds: 1_000_000), b = LatencyHistogram(highestTrackableNanoseconds: 1_000_000)
        a.record(nanoseconds: 5_000_000)
        b.record(nanoseconds: 7_000_000)
        b.record(nanoseconds: 10)
        a.merge(b)
        #expect(a.count == 3)
        #expect(a.clamped == 2)
    }

    @Test func mergeAddsAnotherThreadsSamples() {
        var a = LatencyHistogram(), b = LatencyHistogram()
        for us in 1...500 { a.record(nanoseconds: UInt64(us) * 1000) }
        for us in 501...1000 { b.record(nanoseconds: UInt64(us) * 1000) }
        a.merge(b)
        #expect(a.count == 1000)
        #expect(abs(a.microseconds(atPercentile: 50) - 500) <= 0.5)
    }
}
