import Foundation

/// The declaration of one scenario parameter: its key, kind, default and help.
///
/// Threads: immutable value; any thread.
struct ScenarioParameter: Sendable, Equatable {
    /// What values a parameter accepts; values are validated and canonicalised before any run.
    enum Kind: Sendable, Equatable {
        /// A decimal integer within `range` (e.g. `batch`, `queue-depth`).
        case integer(ClosedRange<Int>)
        /// A byte count with an optional K/M/G/T suffix (`4K`, `2M`), within `range`; written back canonically.
        case size(ClosedRange<Int>)
        /// One of a fixed set of words (e.g. `direction`: h2d, d2h, d2d).
        case choice([String])
        /// on/off (also yes/no, true/false, 1/0); written back as `on` or `off`.
        case flag
        /// Free text.
        case text
    }

    var key: String
    var kind: Kind
    var defaultValue: String
    var help: String

    init(_ key: String, _ kind: Kind, default defaultValue: String, help: String) {
        self.key = key
        self.kind = kind
        self.defaultValue = defaultValue
        self.help = help
    }

    /// The canonical spelling of `text` for this parameter, or a message saying why it is not valid.
    func canonical(_ text: String) -> Result<String, ParameterValueError> {
        let value = text.trimmingCharacters(in: .whitespaces)
        guard !value.isEmpty else { return .failure(.init("empty value for '\(key)'")) }
        switch kind {
        case .integer(let range):
            guard let n = Int(value) else {
                return .failure(.init("'\(value)' is not a valid value for '\(key)' (expected an integer)"))
            }
            guard range.contains(n) else {
                return .failure(.init("'\(value)' is out of range for '\(key)' (\(range.lowerBound)...\(range.upperBound))"))
            }
            return .success(String(n))
        case .size(let range):
            guard let size = ByteCount(parsing: value) else {
                return .failure(.init("'\(value)' is not a valid value for '\(key)': \(ByteCount.reason(rejecting: value))"))
            }
            guard range.contains(size.bytes) else {
                return .failure(.init("'\(value)' is out of range for '\(key)' (\(ByteCount(range.lowerBound))...\(ByteCount(range.upperBound)))"))
            }
            return .success(size.description)
        case .choice(let words):
            guard let word = words.first(where: { $0.lowercased() == value.lowercased() }) else {
                return .failure(.init("'\(value)' is not a valid value for '\(key)' (expected one of: \(words.joined(separator: ", ")))"))
            }
            return .success(word)
        case .flag:
            switch value.lowercased() {
            case "on", "yes", "true", "1": return .success("on")
            case "off", "no", "false", "0": return .success("off")
            default: return .failure(.init("'\(value)' is not a valid value for '\(key)' (expected on or off)"))
            }
        case .text:
            return .success(value)
        }
    }

    /// How many words a `.choice` parameter takes (0 for other kinds).
    var choiceCount: Int {
        if case .choice(let words) = kind { return words.count }
        return 0
    }

    /// "integer 1...4096", "size 4K...1G", "h2d|d2h", "on|off", "text": for `dmem-bench list`.
    var kindDescription: String {
        switch kind {
        case .integer(let r): return "integer \(r.lowerBound)...\(r.upperBound)"
        case .size(let r): return "size \(ByteCount(r.lowerBound))...\(ByteCount(r.upperBound))"
        case .choice(let words): return words.joined(separator: "|")
        case .flag: return "on|off"
        case .text: return "text"
        }
    }
}

/// Why a parameter value was refused; the message is shown to the user as is.
struct ParameterValueError: Error, Equatable, CustomStringConvertible {
    var message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}
