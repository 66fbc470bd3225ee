import Foundation
/// One measured run: an ordered list of named fields, written as a JSON object,
/// a CSV row, or a table row. Field names are snake_case and stable: they are the
/// JSON keys people script against.
struct RunRecord: Sendable {
    enum Value: Sendable, Equatable {
        case int(Int)
        case double(Double)
        case string(String)
        case bool(Bool)
    }

    private(set) var fields: [(name: String, value: Value)] = []

    init() {}

    mutating func set(_ name: String, _ value: Value) {
        if let index = fields.firstIndex(where: { $0.name == name }) {
            fields[index].value = value
        } else {
            fields.append((name, value))
        }
    }

    mutating func set(_ name: String, _ value: Int) { set(name, .int(value)) }
    mutating func set(_ name: String, _ value: Double) { set(name, .double(value)) }
    mutating func set(_ name: String, _ value: String) { set(name, .string(value)) }
    mutating func set(_ name: String, _ value: Bool) { set(name, .bool(value)) }

    subscript(name: String) -> Value? {
        fields.first(where: { $0.name == name })?.value
    }
}

extension RunRecord.Value {
    /// JSON text of this value; non-finite doubles become `null`.
    var json: String {
        switch self {
        case .int(let v): return String(v)
        case .double(let v): return v.isFinite ? String(v) : "null"
        case .bool(let v): return v ? "true" : "false"
        case .string(let v): return JSONText.quote(v)
        }
    }

    /// Human text for tables: doubles with `digits` decimals.
    func formatted(digits: Int = 2) -> String {
        switch self {
        case .int(let v): return String(v)
        case .double(let v):
            guard v.isFinite else { return "-" }
            return String(format: "%.\(digits)f", v)
        case .bool(let v): return v ? "yes" : "no"
        case .string(let v): return v
        }
    }
}

extension RunRecord {
    /// The record as one JSON object, keys in insertion order.
    var json: String {
        "{" + fields.map { "\(JSONText.quote($0.name)):\($0.value.json)" }.joined(separator: ",") + "}"
    }
}

/// Minimal JSON string escaping (RFC 8259).
enum JSONText {
    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let c where c.value < 0x20: out += String(format: "\\u%04x", c.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
