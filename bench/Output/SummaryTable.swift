import Foundation

/// The combined summary on stdout: one line per throughput figure of every result, with
/// its ratio to the same-run memcpy and the latency percentiles the record carries.
///
/// Columns: scenario, case, GB/s (and spread under `--repeat`), memcpy GB/s, ratio,
/// latency name, p50/p90/p99/p99.9/max in µs, check (verified, or passed), details.
///
/// Threads: pure; any thread.
struct SummaryTable {
    var results: [BenchResult]
    var registry: ScenarioRegistry = .standard

    /// Throughput fields of a record: every `*gbps` field except the memcpy baseline.
    static func throughputFields(of record: RunRecord) -> [String] {
        record.fields.map(\.name).filter { $0.hasSuffix("gbps") && $0 != "memcpy_gbps" }
    }

    var text: String {
        let showSpread = results.contains { $0.repeats > 1 }
        var header = ["scenario", "case", "GB/s"]
        if showSpread { header.append("min-max") }
        header += ["memcpy", "ratio", "latency", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "check", "details"]
        let fixed = fixedParameters
        var rows: [[String]] = []
        for result in results {
            rows += self.rows(for: result, showSpread: showSpread, fixed: fixed[result.scenario] ?? [])
        }
        var preamble: [String] = []
        for scenario in orderedScenarios {
            guard let keys = fixed[scenario], !keys.isEmpty, let sample = results.first(where: { $0.scenario == scenario }) else { continue }
            preamble.append("\(scenario): " + keys.map { "\($0)=\(sample.parameters[$0] ?? "")" }.joined(separator: " "))
        }
        return (preamble + [Self.render(header: header, rows: rows)]).joined(separator: "\n")
    }

    private var orderedScenarios: [String] {
        var names: [String] = []
        for result in results where !names.contains(result.scenario) { names.append(result.scenario) }
        return names
    }

    /// Per scenario, the explicit parameters with one value in every result: printed once above
    /// the table instead of in every case label.
    var fixedParameters: [String: [String]] {
        var fixed: [String: [String]] = [:]
        for scenario in orderedScenarios {
            let mine = results.filter { $0.scenario == scenario }
            guard let first = mine.first else { continue }
            fixed[scenario] = first.parameters.explicitKeys.filter { key in
                mine.allSatisfy { $0.parameters.explicitKeys.contains(key) && $0.parameters[key] == first.parameters[key] }
            }
        }
        return fixed
    }

    private func rows(for result: BenchResult, showSpread: Bool, fixed: [String]) -> [[String]] {
        let record = result.record
        let scenario = registry[result.scenario]
        let throughput = Self.throughputFields(of: record)
        let latency = LatencyHistogram.prefixes(in: record)
        var base = result.parameters.explicitKeys.filter { !fixed.contains($0) }
            .map { "\($0)=\(result.parameters[$0] ?? "")" }
        for field in scenario?.caseFields ?? ["direction"] {
            if let value = record[field] { base.append(field == "direction" ? value.formatted() : "\(field)=\(value.formatted())") }
        }
        let details = (scenario?.summaryFields ?? []).compactMap { name in record[name].map { "\(name)=\($0.formatted())" } }
        // Throughput records say whether their bytes verified; torture and race records whether they passed.
        let check: String = switch record["verified"] ?? record["passed"] {
        case .bool(true)?: "ok"
        case .bool(false)?: "FAIL"
        default: ""
        }
        let latencyRows = Self.latencyRows(latency, throughput: throughput)
        return (0..<max(1, throughput.count, latency.count)).map { i in
            var caseParts = base
            var cells: [String]
            if i < throughput.count {
                let field = throughput[i]
                if field != "gbps" { caseParts.append(String(field.dropLast("_gbps".count))) }
                let baseline = memcpyBaseline(for: record, field: field)
                cells = [format(record[field])]
                if showSpread { cells.append(spread(record, field)) }
                cells += [baseline.map { format(.double($0)) } ?? "-", ratio(record, field: field, baseline: baseline)]
            } else {
                cells = showSpread ? ["-", "-", "-", "-"] : ["-", "-", "-"]
            }
            if let prefix = latencyRows[i] {
                cells.append(prefix)
                for suffix in ["p50", "p90", "p99", "p99_9", "max"] { cells.append(format(record["\(prefix)_\(suffix)_us"])) }
            } else {
                cells += Array(repeating: "", count: 6)
            }
            cells += [i == 0 ? check : "", i == 0 ? details.joined(separator: " ") : ""]
            let label = caseParts.filter { !$0.isEmpty }.joined(separator: " ")
            return [i == 0 ? result.scenario : "", label.isEmpty ? "default" : label] + cells
        }
    }

    /// Which row shows each latency: the row of the throughput it belongs to when a throughput
    /// field names it (migrate's `fault` latency on the `to_ram_fault` row, not beside
    /// `to_device`), else the first row left, in order.
    static func latencyRows(_ prefixes: [String], throughput: [String]) -> [Int: String] {
        var rows: [Int: String] = [:]
        var unmatched: [String] = []
        for prefix in prefixes {
            let owner = throughput.indices.first { i in
                rows[i] == nil && throughput[i].dropLast("gbps".count).split(separator: "_").contains(Substring(prefix))
            }
            if let owner { rows[owner] = prefix } else { unmatched.append(prefix) }
        }
        var row = 0
        for prefix in unmatched {
            while rows[row] != nil { row += 1 }
            rows[row] = prefix
        }
        return rows
    }

    /// The record's own baseline (`memcpy_gbps`) or, for records without one, the median GB/s
    /// of the same-run memcpy results with the same page size (and direction, when both have one).
    func memcpyBaseline(for record: RunRecord, field: String) -> Double? {
        if let own = record["memcpy_gbps"]?.numeric { return own }
        guard record["page_size"] != nil else { return nil }
        let candidates = results.filter { $0.scenario == "memcpy" && $0.record["page_size"] == record["page_size"] }
        guard !candidates.isEmpty, !(candidates.contains { $0.record == record }) else { return nil }
        let sameDirection = candidates.filter { $0.record["direction"] == record["direction"] }
        let chosen = sameDirection.isEmpty ? candidates : sameDirection
        let values = chosen.compactMap { $0.record["gbps"]?.numeric }
        return values.isEmpty ? nil : RepeatAggregate.median(values)
    }

    private func ratio(_ record: RunRecord, field: String, baseline: Double?) -> String {
        let stem = field == "gbps" ? "" : "_" + field.dropLast("_gbps".count)
        if let own = record["ratio\(stem)"]?.numeric { return Self.formatRatio(own) }
        guard let baseline, baseline > 0, let value = record[field]?.numeric else { return "-" }
        return Self.formatRatio(value / baseline)
    }

    /// Two decimals, three below 0.1 (a fault-bound read-back at 0.005 of memcpy read 0.00).
    static func formatRatio(_ ratio: Double) -> String {
        RunRecord.Value.double(ratio).formatted(digits: ratio.isFinite && abs(ratio) < 0.1 ? 3 : 2)
    }

    private func spread(_ record: RunRecord, _ field: String) -> String {
        guard let lo = record["\(field)_min"], let hi = record["\(field)_max"] else { return "-" }
        return "\(format(lo))-\(format(hi))"
    }

    private func format(_ value: RunRecord.Value?) -> String {
        guard let value else { return "-" }
        if case .double(let v) = value, v.isFinite, abs(v) >= 1000 { return value.formatted(digits: 0) }
        return value.formatted(digits: 2)
    }

    /// A left-aligned text column table (numbers right-aligned).
    static func render(header: [String], rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
        func isNumeric(_ s: String) -> Bool { !s.isEmpty && s.allSatisfy { $0.isNumber || $0 == "." || $0 == "-" } }
        func line(_ row: [String]) -> String {
            row.enumerated().map { i, cell in
                let pad = String(repeating: " ", count: widths[i] - cell.count)
                return isNumeric(cell) ? pad + cell : cell + pad
            }.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        }
        return ([line(header), line(widths.map { String(repeating: "-", count: $0) })] + rows.map(line)).joined(separator: "\n")
    }
}

extension RunRecord: Equatable {
    static func == (lhs: RunRecord, rhs: RunRecord) -> Bool {
        lhs.fields.count == rhs.fields.count && zip(lhs.fields, rhs.fields).allSatisfy { $0.name == $1.name && $0.value == $1.value }
    }
}
