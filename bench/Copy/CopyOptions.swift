import DMAEngine
import Foundation

/// Settings of the `copy` scenario. `directions` × `coalesce` are the runs of one
/// call (one record each); everything else is one value per call.
///
/// Threads: a value; any thread.
struct CopyOptions: Sendable {
    var directions: [CopyDirection] = [.hostToDevice, .deviceToHost, .deviceToDevice]
    var coalesce: [Bool] = [true, false]
    var pageSize = 4096
    var batchPages = 512
    var totalBytes = 256 << 20
    var backend: CopyBackendKind = .ioUring
    /// The `--backend` word as given (`iouring`, `memcpy`, `mapped`), for records.
    var backendName = "iouring"
    var queueDepth = 64
    var channels = 1
    /// Batches each channel keeps in flight before waiting for its oldest fence.
    var inflightBatches = 8
    /// Engine passes per run; seconds are their median. Each pass is verified.
    var repeats = 3
    /// Host memory the source/destination frames are scattered over (default 4 × total).
    var hostBytes: Int? = nil
    /// How each VRAM pool is spread over memfds.
    var vramLayout: VRAMPool.Layout = .default
    /// A modelled host↔device link on top of the backend, and how it was asked for.
    var link: LinkSpec = .none
    /// Register host memory as io_uring fixed buffers (`DMAEngine.Configuration.fixedBuffers`).
    var fixedBuffers = false
    var seed: UInt64 = 0xD11A
    /// What errors call each setting: the surface that built these options names it as its user typed it.
    var naming: Naming = .scenarioKeys

    /// The names of the settings in errors: `dmem-bench copy`'s flags or the `copy` scenario's keys
    /// (`run copy --set …`, the suite), which differ beyond the dashes for two of them.
    ///
    /// Threads: a value; any thread.
    enum Naming: Sendable {
        case commandFlags
        case scenarioKeys

        /// The name of the setting whose scenario key is `key` (`span` is `--host-memory`, `passes` is `--repeats`).
        func callAt(_ key: String) -> String {
            switch self {
            case .scenarioKeys: return key
            case .commandFlags: return "--" + (["span": "host-memory", "passes": "repeats"][key] ?? key)
            }
        }
    }

    /// The backend the engine's channels get: `backend`, behind the link model if there is one.
    var engineBackend: CopyBackendKind {
        guard let model = link.model else { return backend }
        return .linkModel(model, wrapping: backend)
    }
}

/// A link model as the command line names it: `none`, a preset (`pcie4`, `pcie5`,
/// `nvlink`), or `GBPS,LATENCY` (e.g. `16,5us`: 16 GB/s each way, 5 µs per batch;
/// the latency unit is ns, us/µs or ms, µs when omitted). `GBPS@LATENCY` (`16@5us`) is the
/// same: `--set` and `--sweep` split their values at commas, so there it is the only way.
///
/// Threads: a value; any thread.
struct LinkSpec: Sendable, Equatable, CustomStringConvertible {
    var text: String
    var model: LinkModel?

    static let none = LinkSpec(text: "none", model: nil)

    /// The GB/s a `GBPS,LATENCY` link may have: 1 MB/s to 1 PB/s.
    static let bandwidths: ClosedRange<Double> = 0.001...1_000_000

    static let help = "none, pcie4 (26 GB/s, 2 µs), pcie5 (52 GB/s, 2 µs), nvlink (450 GB/s, 1 µs), "
        + "or GBPS,LATENCY (e.g. 16,5us; 16@5us in --set and --sweep, which split values at commas)"

    init(text: String, model: LinkModel?) {
        self.text = text
        self.model = model
    }

    init(parsing raw: String) throws(ParameterValueError) {
        let text = raw.trimmingCharacters(in: .whitespaces).lowercased()
        if text == "none" || text == "off" {
            self = .none
            return
        }
        if let preset = LinkModel.presets.first(where: { $0.name == text }) {
            self.init(text: preset.name, model: preset.model)
            return
        }
        let parts = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "," || $0 == "@" }).map(String.init)
        guard parts.count == 2, let gbps = Double(parts[0]), gbps.isFinite, gbps > 0,
              let latency = Self.latency(parts[1]) else {
            throw ParameterValueError("'\(raw)' is not a valid link (expected \(Self.help))")
        }
        // Beyond these a run either never ends (a copy at 1e-300 GB/s) or the engine refuses
        // the link mid-run (bytes per second overflow to infinity).
        guard Self.bandwidths.contains(gbps) else {
            throw ParameterValueError("link bandwidth \(parts[0]) GB/s in '\(raw)' is out of range (0.001...1000000)")
        }
        self.init(text: text, model: LinkModel(gigabytesPerSecond: gbps, latency: latency))
    }

    /// `5`, `5us`, `5µs`, `800ns`, `2ms` → a duration (µs without a unit).
    private static func latency(_ text: String) -> Duration? {
        let units: [(suffix: String, nanoseconds: Double)] = [("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6)]
        let unit = units.first { text.hasSuffix($0.suffix) }
        guard let value = Double(text.dropLast(unit?.suffix.count ?? 0)), value.isFinite, value >= 0 else { return nil }
        let nanoseconds = value * (unit?.nanoseconds ?? 1e3)
        guard nanoseconds <= 1e12 else { return nil }
        return .nanoseconds(Int64(nanoseconds))
    }

    var description: String { text }
}
