import Foundation
import DMAEngine

/// The memory a run will touch, checked against what the machine can give before anything
/// is allocated: a run that outgrows RAM would otherwise end in the OOM killer (which may
/// pick another process) rather than in an error.
struct MemoryBudget {
    /// What the run touches, in bytes, by part (for the message).
    var parts: [(what: String, bytes: Int)] = []

    var total: Int { parts.reduce(0) { $0.addingReportingOverflow($1.bytes).overflow ? Int.max : $0 + $1.bytes } }

    mutating func add(_ what: String, _ bytes: Int) { parts.append((what, bytes)) }

    /// Throws when the total exceeds 90 % of `MemAvailable`; passes where it is unknown.
    /// `advice` ends the message: what to make smaller.
    func check(_ scenario: String, advice: String = "use a smaller --total",
               available: Int? = SystemMemory.available()) throws(ScenarioError) {
        guard let available, total > SystemMemory.usable(of: available) else { return }
        let list = parts.map { "\($0.what) \(Self.approximate($0.bytes))" }.joined(separator: " + ")
        throw ScenarioError(scenario: scenario,
                            message: "needs about \(Self.approximate(total)) of memory (\(list)), but only \(Self.approximate(available)) is available (MemAvailable); \(advice)")
    }

    /// Bytes in the largest binary unit that keeps a digit before the point: `23.0 GiB`, `512 MiB`.
    static func approximate(_ bytes: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 || value >= 100 || value == value.rounded() ? "\(Int(value.rounded())) \(units[unit])"
            : String(format: "%.1f %@", value, units[unit])
    }
}
