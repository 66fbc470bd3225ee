import DeviceEmu
import HostMM

/// A driver flow the race matrix holds step by step: each runs on a fresh `RaceWorld`.
///
/// Threads: a value; `prepare` and `run` are called on the matrix's thread.
enum RaceFlow: String, CaseIterable, Sendable {
    /// `migrateToDevice` of the whole range (`nouveau_dmem_migrate_vma`, in batches).
    case toDevice = "to-device"
    /// A CPU read of the target page after the range went to VRAM: the device-private
    /// fault (`handle_mm_fault` → `migrate_to_ram`).
    case cpuFault = "cpu-fault"
    /// Eviction of all VRAM after the range went there (`nouveau_dmem_evict_chunk`).
    case evict
    /// A GPU read of the target page, which no device entry maps: the GPU fault, resolved
    /// by the default policy (migrate a window to VRAM; `nouveau_svm_fault`).
    case gpuFault = "gpu-fault"

    /// The world before the probe is armed: what the flow starts from.
    func prepare(_ w: RaceWorld) throws {
        switch self {
        case .toDevice: break
        case .cpuFault, .evict: _ = try w.gpu.migrateToDevice(w.mm, range: w.range)
        case .gpuFault: _ = try w.gpu.bind(w.mm)
        }
    }

    /// Runs the flow (on the thread the probe holds).
    func run(_ w: RaceWorld) -> RaceFlowResult {
        do {
            switch self {
            case .toDevice:
                return .migrated(try w.gpu.migrateToDevice(w.mm, range: w.range).migrated)
            case .cpuFault:
                return .read(try w.mm.read(at: w.address(w.target), count: pageSize))
            case .evict:
                return .migrated(w.gpu.evictAll())
            case .gpuFault:
                guard let space = w.gpu.addressSpace(for: w.mm) else { return .failed(DeviceError.shutDown) }
                return .read(try space.read(at: w.address(w.target), count: pageSize))
            }
        } catch {
            return .failed(error)
        }
    }

    /// True when the flow reads the target page itself (its bytes are checked).
    var reads: Bool { self == .cpuFault || self == .gpuFault }
}

/// What a flow returned.
enum RaceFlowResult {
    case migrated(Int)
    case read([UInt8])
    case failed(any Error)
}
