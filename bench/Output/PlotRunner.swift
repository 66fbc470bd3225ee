import Foundation

/// Draws the charts of a results JSON with `bench/plot.py` (matplotlib), installing
/// matplotlib with pip when it is missing, or saying exactly what to run when that fails.
///
/// Threads: call from one thread; it waits for the child processes.
struct PlotRunner {
    var python = "python3"
    var progress: ProgressLine

    /// The plotting script: `$DMEM_BENCH_PLOT_SCRIPT`, else `bench/plot.py` of the source tree this binary was built from.
    static var scriptPath: String {
        if let custom = ProcessInfo.processInfo.environment["DMEM_BENCH_PLOT_SCRIPT"] { return custom }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("plot.py").path
    }

    static let installCommand = "python3 -m pip install --quiet matplotlib"

    /// Writes the PNGs for `jsonPath` into `directory`.
    func plot(jsonPath: String, directory: String) throws(PlotError) {
        let script = Self.scriptPath
        guard FileManager.default.fileExists(atPath: script) else {
            throw PlotError("plot script not found at \(script); set DMEM_BENCH_PLOT_SCRIPT to bench/plot.py of a dmem-emu checkout")
        }
        try ensureMatplotlib()
        let status = Self.run([python, script, jsonPath, directory], stdoutToStderr: true)
        guard status == 0 else {
            throw PlotError("\(python) \(script) \(jsonPath) \(directory) failed (exit status \(status))")
        }
    }

    private func ensureMatplotlib() throws(PlotError) {
        if Self.run([python, "-c", "import matplotlib"], quiet: true) == 0 { return }
        progress.note("dmem-bench: matplotlib is missing; installing it: \(Self.installCommand)")
        let installed = Self.run([python, "-m", "pip", "install", "--quiet", "matplotlib"], stdoutToStderr: true) == 0
        guard installed, Self.run([python, "-c", "import matplotlib"], quiet: true) == 0 else {
            throw PlotError("matplotlib is not installed and could not be installed automatically; run:\n    \(Self.installCommand)\n(or on Debian/Ubuntu: apt-get install python3-matplotlib) and try again")
        }
    }

    /// Runs a command through `env`; returns its exit status (127 when it could not start).
    static func run(_ arguments: [String], quiet: Bool = false, stdoutToStderr: Bool = false) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        if quiet {
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
        } else if stdoutToStderr {
            process.standardOutput = FileHandle.standardError
        }
        do { try process.run() } catch { return 127 }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

struct PlotError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
