import Foundation

/// Everything one invocation measured, with the machine's facts: the source of the
/// `--json` and `--csv` files (and, through the JSON, of the plots).
///
/// JSON shape (`format` 1):
/// ```
/// {"tool":"dmem-bench","format":1,"command":"…","complete":true,"machine":{…},
///  "runs":[{"scenario":"memcpy","params":{"page-size":"4K",…},"repeats":1,<fields…>,"samples":[…]}]}
/// ```
/// `samples` (the per-repeat records) is present only when `repeats > 1`. Record fields
/// named like the reserved keys (`scenario`, `params`, `repeats`, `samples`) are dropped.
/// When a point failed, `complete` is false, `error` says which point and why, and `runs`
/// holds only the points measured before it (a CSV cannot say so: check the exit status).
///
/// CSV: one header line, then one row per run: `scenario, repeats, param_<key>…,
/// <fields…>, machine_<fact>…` (the union of every run's params and fields, first-seen
/// order; a cell a run does not have is empty).
///
/// Threads: immutable value; any thread.
struct ResultsDocument: Sendable {
    static let reservedKeys: Set<String> = ["scenario", "params", "repeats", "samples"]

    var command: String
    var machine: MachineFacts
    var results: [BenchResult]
    /// Why the invocation stopped before its last point, or nil when every point ran.
    var error: String? = nil

    // MARK: JSON

    var json: String {
        var lines = ["{\"tool\":\"dmem-bench\",\"format\":1,\"command\":\(JSONText.quote(command)),"
            + "\"complete\":\(error == nil)," + (error.map { "\"error\":\(JSONText.quote($0))," } ?? "")]
        lines.append("\"machine\":\(machine.json),")
        lines.append("\"runs\":[")
        lines.append(results.map { "  " + Self.json(of: $0) }.joined(separator: ",\n"))
        lines.append("]}")
        return lines.joined(separator: "\n") + "\n"
    }

    static func json(of result: BenchResult) -> String {
        let params = result.parameters.values.sorted { $0.key < $1.key }
            .map { "\(JSONText.quote($0.key)):\(JSONText.quote($0.value))" }.joined(separator: ",")
        var parts = [
            "\"scenario\":\(JSONText.quote(result.scenario))",
            "\"params\":{\(params)}",
            "\"repeats\":\(result.repeats)",
        ]
        parts += result.record.fields.filter { !reservedKeys.contains($0.name) }
            .map { "\(JSONText.quote($0.name)):\($0.value.json)" }
        if !result.samples.isEmpty {
            parts.append("\"samples\":[\(result.samples.map(\.json).joined(separator: ","))]")
        }
        return "{" + parts.joined(separator: ",") + "}"
    }

    // MARK: CSV

    /// Column names: fixed, then parameters, then record fields, then machine facts.
    var csvColumns: [String] {
        var params: [String] = []
        var fields: [String] = []
        for result in results {
            for key in result.parameters.values.keys.sorted() where !params.contains(key) { params.append(key) }
            for field in result.record.fields where !fields.contains(field.name) && !Self.reservedKeys.contains(field.name) {
                fields.append(field.name)
            }
        }
        return ["scenario", "repeats"] + params.map(Self.paramColumn) + fields + machine.fields.map { "machine_\($0.name)" }
    }

    var csv: String {
        let columns = csvColumns
        var rows = [columns.map(Self.csvCell).joined(separator: ",")]
        for result in results {
            var cells: [String: String] = ["scenario": result.scenario, "repeats": String(result.repeats)]
            for (key, value) in result.parameters.values { cells[Self.paramColumn(key)] = value }
            for field in result.record.fields where !Self.reservedKeys.contains(field.name) {
                cells[field.name] = field.value.csv
            }
            for fact in machine.fields { cells["machine_\(fact.name)"] = fact.value.csv }
            rows.append(columns.map { Self.csvCell(cells[$0] ?? "") }.joined(separator: ","))
        }
        return rows.joined(separator: "\n") + "\n"
    }

    /// `page-size` → `param_page_size`.
    static func paramColumn(_ key: String) -> String {
        "param_" + key.replacingOccurrences(of: "-", with: "_")
    }

    /// RFC 4180: quoted when it holds a comma, quote or line break; quotes doubled.
    static func csvCell(_ text: String) -> String {
        guard text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return text }
        return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    // MARK: Files

    /// Writes `text` to `path` (`OutputFile`: a regular file atomically), or to stdout when `path` is `-`.
    static func write(_ text: String, to path: String) throws {
        if path == "-" {
            FileHandle.standardOutput.write(Data(text.utf8))
        } else {
            try OutputFile.write(Data(text.utf8), to: path)
        }
    }
}

extension RunRecord.Value {
    /// CSV text: full precision numbers, `true`/`false`, empty for non-finite doubles.
    var csv: String {
        switch self {
        case .int(let v): return String(v)
        case .double(let v): return v.isFinite ? String(v) : ""
        case .bool(let v): return v ? "true" : "false"
        case .string(let v): return v
        }
    }
}
