import DMAEngine
import DeviceEmu
import Foundation
import HostMM
import NIOConcurrencyHelpers

/// The machine a torture run shares between its workers: checked-mode emulated RAM, one
/// GPU whose copy engine (bulk and fault channels alike) injects failures, short copies
/// and delays, and VRAM smaller than the workers' pages together.
///
/// Threads: immutable after init except the logs, which are locked.
final class TortureWorld: @unchecked Sendable {
    let options: TortureOptions
    let memory: PhysicalMemory
    let gpu: Device
    /// RAM frames free before any worker existed: all of them must come back.
    let freeRAMAtStart: Int
    /// When the random phase ends (`MonotonicClock` nanoseconds).
    private(set) var deadline: UInt64 = 0
    private let mismatches = NIOLockedValueBox<[String]>([])
    private let errors = NIOLockedValueBox<[String]>([])
    static let logLimit = 20

    init(_ o: TortureOptions) throws {
        options = o
        let pages = o.threads * o.pagesPerThread
        var budget = MemoryBudget()
        budget.add("VRAM", o.vramBytes)
        budget.add("emulated RAM", (64 << 20) + 3 * pages * pageSize)
        do { try budget.check("torture", advice: "use a smaller --vram or --pages-per-thread") } catch { throw TortureFailure(error.message) }
        do {
            // Parents, forked children's copies, and migration destinations in flight.
            memory = try PhysicalMemory(ramBytes: (64 << 20) + 3 * pages * pageSize,
                                        maxDevicePages: o.vramBytes / pageSize + 4096, checked: .on)
        } catch { throw TortureFailure("cannot create emulated RAM: \(error)") }
        var policy = MigrationPolicy()
        policy.batchPages = 128
        policy.pipelineDepth = 2
        policy.cpuFaultGranularity = .faultAround(pages: 4)
        policy.gpuFault = .migrateToVRAM(pages: 16)
        policy.minimumResidency = o.minimumResidency
        var c = Device.Configuration(name: "torture", vramSize: o.vramBytes, backend: o.backend, policy: policy)
        c.vramLayout.directory = o.vramDirectory
        c.fixedBuffers = o.fixedBuffers
        if o.faultCopy == .engine { c.faultBackend = o.backend }
        do { gpu = try Device(memory: memory, configuration: c) } catch {
            throw TortureFailure("cannot create the device: \(error)")   // an io_uring setup error says how to fall back
        }
        freeRAMAtStart = memory.freeRAMPageCount
    }

    func start(seconds: Double) {
        deadline = MonotonicClock.now() + UInt64(seconds * 1e9)
    }

    func logMismatch(_ s: String) {
        mismatches.withLockedValue { if $0.count < Self.logLimit { $0.append(s) } }
    }

    func logError(_ s: String) {
        errors.withLockedValue { if $0.count < Self.logLimit { $0.append(s) } }
    }

    var mismatchLog: [String] { mismatches.withLockedValue { $0 } }
    var errorLog: [String] { errors.withLockedValue { $0 } }
}

/// A torture run that could not start (or whose machine broke); the findings of a run
/// that completed are in its record, not thrown.
struct TortureFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
