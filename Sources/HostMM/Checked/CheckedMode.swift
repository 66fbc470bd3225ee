#if canImport(Glibc)
import Glibc
#endif
public import Logging

/// Whether a `PhysicalMemory` runs in checked mode (the protocol sanitizer), and what it
/// does with a violation besides recording it.
///
/// Off (the default) costs one predictable branch on an immutable reference per checked
/// call: `PhysicalMemory.checker` is nil and nothing else runs. On, every migration
/// step, page release and device teardown is checked against `ProtocolRule`; violations
/// are recorded (`ProtocolChecker.violations`), counted, optionally logged and optionally
/// thrown from the calls that throw.
///
/// `DMEM_CHECKED` in the environment turns it on for memories created with
/// `.fromEnvironment` (the default argument): `1`/`on` records, `log` also logs,
/// `throw` also throws. It is read once per `PhysicalMemory`.
public struct CheckedMode: Sendable {
    /// Checked mode on.
    public var isEnabled: Bool
    /// Logs each violation at `.error` (with its rule, PFN, address and call site).
    public var logger: Logger?
    /// The throwing calls (`migrateVMASetup`, `migrateVMAPages`, `migrateDeviceRange`,
    /// `migrateDevicePages`) throw `HostMMError.protocolViolation` for a violation they
    /// detect, before changing anything. Non-throwing calls (finalize, `putPage`) only record.
    public var throwsViolations: Bool
    /// Violations kept in `ProtocolChecker.violations` (counts go on past it).
    public var maxRecorded: Int

    public init(isEnabled: Bool, logger: Logger? = nil, throwsViolations: Bool = false, maxRecorded: Int = 10_000) {
        self.isEnabled = isEnabled
        self.logger = logger
        self.throwsViolations = throwsViolations
        self.maxRecorded = max(0, maxRecorded)
    }

    /// Off: no checking at all.
    public static let off = CheckedMode(isEnabled: false)
    /// On: record and count violations.
    public static let on = CheckedMode(isEnabled: true)

    /// `DMEM_CHECKED`: unset, empty or `0`/`off` → off; `log` → on with a `dmem.checked`
    /// logger; `throw` → on and throwing; anything else → on.
    public static var fromEnvironment: CheckedMode {
        guard let raw = getenv("DMEM_CHECKED") else { return .off }
        switch String(cString: raw).lowercased() {
        case "", "0", "off", "no", "false": return .off
        case "log": return CheckedMode(isEnabled: true, logger: Logger(label: "dmem.checked"))
        case "throw": return CheckedMode(isEnabled: true, throwsViolations: true)
        default: return .on
        }
    }
}
