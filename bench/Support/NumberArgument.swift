/// The value of a numeric flag, read even when it begins with '-'.
///
/// ArgumentParser's default (`SingleValueParsingStrategy.next`) takes `-1` in
/// `--batch -1` for a flag and reports "Missing value", while `--batch=-1` reaches
/// the range check; numeric and size flags are therefore declared
/// `parsing: .unconditional` with one of these transforms, so both spellings get
/// the same error. `.unconditional` would also take a real flag (`--batch --json`)
/// as the value: these transforms refuse that as a missing value instead of
/// reading the flag as a bad number or swallowing it.
///
/// Threads: stateless; any thread.
enum NumberArgument {
    static func int(_ text: String) throws(NumberArgumentError) -> Int {
        try parse(text, Int.init, expected: "an integer")
    }

    static func uint64(_ text: String) throws(NumberArgumentError) -> UInt64 {
        try parse(text, UInt64.init, expected: "a non-negative integer")
    }

    static func double(_ text: String) throws(NumberArgumentError) -> Double {
        try parse(text, Double.init, expected: "a number")
    }

    /// True for what the command line means as a flag (`--json`, `-q`), not a negative
    /// number (`-1`, `-8M`, `-.5`); `-inf` and `-nan` count as flags only where they do
    /// not parse as the option's number.
    static func looksLikeFlag(_ text: String) -> Bool {
        guard text.hasPrefix("-"), text.count > 1 else { return false }
        let next = text[text.index(after: text.startIndex)]
        return next == "-" || next.isLetter
    }

    /// Why a flag stands where the value should: the message after ArgumentParser's
    /// "The value '--json' is invalid for '--batch <batch>': ".
    static let flagInsteadOfValue = "that is a flag: the value is missing"

    private static func parse<T>(_ text: String, _ make: (String) -> T?, expected: String) throws(NumberArgumentError) -> T {
        if let value = make(text) { return value }
        throw NumberArgumentError(looksLikeFlag(text) ? flagInsteadOfValue : "expected \(expected)")
    }
}

/// A numeric flag's value that does not parse; the description is the reason.
struct NumberArgumentError: Error, Equatable, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
