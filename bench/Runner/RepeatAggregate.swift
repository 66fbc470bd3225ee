/// Folds the records of one point measured `--repeat N` times into one record:
/// numbers become their median, and each double field (and each integer field that
/// varied) is followed by `<name>_min` and `<name>_max`; booleans are AND-ed (a run is
/// `verified` only if every repeat was); strings that differ are joined with `|`.
///
/// Threads: pure functions; any thread.
enum RepeatAggregate {
    /// The aggregate of `samples` (records of the same point and position, in repeat order).
    static func aggregate(_ samples: [RunRecord]) -> RunRecord {
        guard samples.count > 1, let first = samples.first else { return samples.first ?? RunRecord() }
        var names = first.fields.map(\.name)
        for sample in samples.dropFirst() {
            for field in sample.fields where !names.contains(field.name) { names.append(field.name) }
        }
        var out = RunRecord()
        for name in names {
            let values = samples.compactMap { $0[name] }
            aggregate(name: name, values: values, into: &out)
        }
        return out
    }

    private static func aggregate(name: String, values: [RunRecord.Value], into out: inout RunRecord) {
        let doubles = values.compactMap(\.numeric)
        let allInts = values.allSatisfy { if case .int = $0 { return true } else { return false } }
        if doubles.count == values.count, !values.isEmpty {
            if allInts, Set(doubles).count == 1 {
                out.set(name, values[0])
                return
            }
            let m = median(doubles)
            if allInts, m == m.rounded() { out.set(name, Int(m)) } else { out.set(name, m) }
            // NaN left out as in `median` (Swift's min()/max() would return a leading NaN).
            let figures = doubles.filter { !$0.isNaN }
            let lo = figures.min() ?? .nan, hi = figures.max() ?? .nan
            out.set("\(name)_min", allInts ? .int(Int(lo)) : .double(lo))
            out.set("\(name)_max", allInts ? .int(Int(hi)) : .double(hi))
            return
        }
        let bools = values.compactMap { if case .bool(let b) = $0 { return b } else { return nil } }
        if bools.count == values.count, !values.isEmpty {
            out.set(name, bools.allSatisfy { $0 })
            return
        }
        var distinct: [String] = []
        for value in values {
            let text = value.formatted(digits: 6)
            if !distinct.contains(text) { distinct.append(text) }
        }
        if distinct.count == 1, let only = values.first { out.set(name, only) } else { out.set(name, distinct.joined(separator: "|")) }
    }

    /// The median (mean of the two middle values for an even count), NaN left out; NaN (`null` in JSON) for no values.
    static func median(_ values: [Double]) -> Double {
        let sorted = values.filter { !$0.isNaN }.sorted()
        guard !sorted.isEmpty else { return .nan }
        let mid = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
    }
}

extension RunRecord.Value {
    /// The value as a double when it is a number.
    var numeric: Double? {
        switch self {
        case .int(let v): return Double(v)
        case .double(let v): return v
        case .bool, .string: return nil
        }
    }
}
