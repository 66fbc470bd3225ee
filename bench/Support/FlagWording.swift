/// A settings problem (`total 3M must be …`, worded for `run --set`) reworded for the
/// command's own flags (`--total 3M must be …`), so that `migrate` and `thrash` name what
/// the user typed.
///
/// Threads: a pure function.
enum FlagWording {
    /// `problem` with a leading setting name in `keys` written as its flag, and
    /// `prefetch=sequential` as `--prefetch sequential`.
    static func reword(_ problem: String, keys: [String]) -> String {
        var text = problem.replacingOccurrences(of: "prefetch=sequential", with: "--prefetch sequential")
        if keys.contains(where: { text.hasPrefix($0 + " ") }) { text = "--" + text }
        return text
    }
}
