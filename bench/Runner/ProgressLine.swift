import Foundation
import NIOConcurrencyHelpers

/// The progress line on stderr: on a terminal one line rewritten in place
/// (`[ 3/12] memcpy page-size=4K (2/3): h2d (gather)`), elsewhere one line per finished run.
///
/// Threads: any; a scenario's worker threads may report sub-steps concurrently.
final class ProgressLine: Sendable {
    enum Mode: Sendable { case terminal, lines, silent }

    let mode: Mode
    private let state = NIOLockedValueBox(State())
    private struct State { var prefix = ""; var lineOpen = false }

    init(mode: Mode) { self.mode = mode }

    /// Rewrites in place when stderr is a terminal, else prints finished runs only.
    static func forStandardError(quiet: Bool) -> ProgressLine {
        if quiet { return ProgressLine(mode: .silent) }
        return ProgressLine(mode: isatty(STDERR_FILENO) != 0 ? .terminal : .lines)
    }

    func begin(_ prefix: String) {
        state.withLockedValue { state in
            state.prefix = prefix
            if mode == .terminal { write("\r\u{1B}[K\(prefix) …", &state) }
        }
    }

    /// A sub-step of the current run ("filling 256M").
    func update(_ detail: String) {
        guard mode == .terminal else { return }
        state.withLockedValue { state in write("\r\u{1B}[K\(state.prefix): \(detail)", &state) }
    }

    /// Ends the current run with its outcome ("5.12 GB/s in 1.3 s").
    func finish(_ outcome: String) {
        state.withLockedValue { state in
            switch mode {
            case .terminal: write("\r\u{1B}[K\(state.prefix): \(outcome)\n", &state)
            case .lines: write("\(state.prefix): \(outcome)\n", &state)
            case .silent: break
            }
            state.lineOpen = false
        }
    }

    /// A message on its own line (warnings, where files were written).
    func note(_ message: String) {
        state.withLockedValue { state in
            guard mode != .silent else { return }
            if state.lineOpen { write("\n", &state) }
            write(message + "\n", &state)
            state.lineOpen = false
        }
    }

    private func write(_ text: String, _ state: inout State) {
        FileHandle.standardError.write(Data(text.utf8))
        state.lineOpen = !text.hasSuffix("\n")
    }
}
