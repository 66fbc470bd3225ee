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
    ///
    /// Under VRAM pressure (`--vram` below the range) the fault flows start from a VRAM the
    /// flow itself must contend for: `cpu-fault` and `evict` migrate the target's batch again
    /// after the range, so the target page is resident (the range's later batches evicted
    /// it) and the flow moves it;
    /// `gpu-fault` fills VRAM with the pages outside the fault's window, so resolving the
    /// fault by migration evicts them inside the flow.
    func prepare(_ w: RaceWorld) throws {
        let pressure = w.configuration.underPressure(pages: w.pages)
        switch self {
        case .toDevice: break
        case .cpuFault, .evict:
            _ = try w.gpu.migrateToDevice(w.mm, range: w.range)
            if pressure { _ = try w.gpu.migrateToDevice(w.mm, range: w.window) }
        case .gpuFault:
            _ = try w.gpu.bind(w.mm)
            if pressure {
                let window = w.window
                if window.lowerBound > w.base { _ = try w.gpu.migrateToDevice(w.mm, range: w.base ..< window.lowerBound) }
                if window.upperBound < w.range.upperBound {
                    _ = try w.gpu.migrateToDevice(w.mm, range: window.upperBound ..< w.range.upperBound)
                }
            }
        }
        w.residentAtStart = w.gpu.vram.inUsePageCount
    }

    /// Whether the flow reports any step in `c`: a CPU access to device-coherent VRAM reads
    /// it in place (`MEMORY_DEVICE_COHERENT` pages are mapped by ordinary CPU entries), so
    /// the `cpu-fault` flow does not fault — its dry run must report nothing, and it has no
    /// cells.
    func reportsSteps(in c: RaceConfiguration) -> Bool { !(self == .cpuFault && c.memory == .coherent) }

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
