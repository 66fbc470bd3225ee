/// Lines of a command's discussion laid out for ArgumentParser, which re-wraps any line
/// wider than 80 columns at the left margin (a list of terms then reads as ragged prose):
/// a term, then its description wrapped under itself.
///
/// Threads: pure; any thread.
enum HelpText {
    /// The widest line ArgumentParser leaves alone.
    static let width = 79

    /// `term` indented by `indent`, its description from `column` on, continuation lines
    /// indented to `column` (a term wider than that gets its description on the next line).
    static func term(_ term: String, _ description: String, indent: Int = 2, column: Int) -> String {
        let head = String(repeating: " ", count: indent) + term
        guard !description.isEmpty else { return head }
        let pad = String(repeating: " ", count: column)
        var lines: [String] = []
        var line = head.count < column ? head + String(repeating: " ", count: column - head.count) : head
        if head.count >= column { lines.append(line); line = pad }
        var lineHasWords = false
        for word in description.split(separator: " ") {
            if lineHasWords && line.count + 1 + word.count > width {
                lines.append(line)
                line = pad
                lineHasWords = false
            }
            line += (lineHasWords ? " " : "") + word
            lineHasWords = true
        }
        lines.append(line)
        return lines.joined(separator: "\n")
    }
}
