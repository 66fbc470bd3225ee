/// What `--sweep` (and `--set`) said, before it is checked against a scenario:
/// an ordered list of `KEY=V1,V2,…` axes.
///
/// Accepts repeated options (`--sweep batch=1,8 --sweep page-size=4K,2M`), several
/// specs after one option (`--sweep batch=1,8 page-size=4K,2M`) and one quoted
/// space-separated spec (`--sweep "batch=1,8 page-size=4K,2M"`). Within one argument, a
/// word with no `=` continues the value before it, spaces kept (`--set "vram-dir=/mnt/my
/// vram"`: a directory with a space in its name).
///
/// Threads: immutable value; any thread.
struct SweepSpec: Sendable, Equatable {
    struct Axis: Sendable, Equatable {
        var key: String
        var values: [String]
    }

    private(set) var axes: [Axis] = []

    init(axes: [Axis] = []) { self.axes = axes }

    /// Parses option arguments; every token is `KEY=VALUE[,VALUE…]`.
    init(parsing arguments: [String]) throws(ParameterValueError) {
        for token in arguments.flatMap(Self.tokens) {
            try append(Self.parseAxis(token))
        }
    }

    /// The `KEY=VALUE` words of one argument: split at white space, except that a word
    /// with no `=` joins the `KEY=VALUE` word before it with the white space between them
    /// (a lone word is kept, for `parseAxis` to reject). Only inside a value: not after
    /// `=` or `,`, nor before `,` (`batch=1, 8` and `batch= 8` stay errors, as when every
    /// word was a spec of its own; the values are trimmed later and would pass).
    static func tokens(_ argument: String) -> [String] {
        var tokens: [Substring] = []
        for word in argument.split(whereSeparator: \.isWhitespace) {
            if !word.contains("="), !word.hasPrefix(","), let last = tokens.last, last.contains("="),
               !last.hasSuffix("="), !last.hasSuffix(",") {
                tokens[tokens.count - 1] = argument[last.startIndex ..< word.endIndex]
            } else {
                tokens.append(word)
            }
        }
        return tokens.map(String.init)
    }

    static func parseAxis(_ token: String) throws(ParameterValueError) -> Axis {
        guard let equals = token.firstIndex(of: "=") else {
            throw ParameterValueError("bad sweep spec '\(token)': expected KEY=VALUE[,VALUE...], e.g. batch=1,8,64")
        }
        let key = String(token[..<equals])
        guard !key.isEmpty else {
            throw ParameterValueError("bad sweep spec '\(token)': the parameter name before '=' is missing")
        }
        let list = token[token.index(after: equals)...]
        guard !list.isEmpty else {
            throw ParameterValueError("sweep '\(token)' lists no values for '\(key)'")
        }
        let values = list.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        if values.contains(where: \.isEmpty) {
            throw ParameterValueError("sweep '\(token)' has an empty value for '\(key)' (stray comma?)")
        }
        return Axis(key: key, values: values)
    }

    /// Adds an axis; a key may appear only once across all sweeps and sets.
    mutating func append(_ axis: Axis) throws(ParameterValueError) {
        guard !axes.contains(where: { $0.key == axis.key }) else {
            throw ParameterValueError("parameter '\(axis.key)' is given twice; list all its values in one spec (\(axis.key)=A,B,C)")
        }
        axes.append(axis)
    }

    /// This spec followed by `other`'s axes (duplicate keys rejected).
    func appending(_ other: SweepSpec) throws(ParameterValueError) -> SweepSpec {
        var copy = self
        for axis in other.axes { try copy.append(axis) }
        return copy
    }

    var isEmpty: Bool { axes.isEmpty }
}
