import DeviceEmu
import NIOConcurrencyHelpers
import Synchronization

/// The `migrate` run's observer: sums the time of each driver step (reported as
/// per-batch costs) and, with `--trace`, draws the dmem flow on the timeline — a track
/// per direction with `setup`, `migrate_vma_pages`, `fence wait`, `device map` and
/// `finalize` spans inside a `batch` span, a copy-engine track with one `copy` span per
/// fence (submit → signal) and an arrow from each submit to its `finalize`. Reading the
/// trace shows finalize starting only after the copy span ends.
///
/// Threads: any (the driver reports from migrating and faulting threads); totals are
/// atomics, the batch-start table takes a lock only when tracing.
final class MigrateObserver: MigrationObserver, @unchecked Sendable {
    private let totals: UnsafeMutablePointer<Synchronization.Atomic<UInt64>>
    private let kinds = MigrationEvent.Kind.allCases.count
    private let tracks: [MigrationEvent.Direction: TraceTrack]
    private let copyTrack: TraceTrack?
    private let batchStarts = NIOLockedValueBox<[UInt64: UInt64]>([:])

    init(trace: TraceProcess?) {
        totals = .allocate(capacity: 3 * MigrationEvent.Kind.allCases.count)
        for i in 0..<3 * MigrationEvent.Kind.allCases.count { (totals + i).initialize(to: Synchronization.Atomic(0)) }
        if let trace {
            tracks = [.toDevice: trace.track("migrate → VRAM"), .toRAM: trace.track("CPU faults → RAM"),
                      .evict: trace.track("evict (teardown)"), .none: trace.track("GPU faults")]
            copyTrack = trace.track("copy engine")
        } else {
            tracks = [:]
            copyTrack = nil
        }
    }

    deinit { totals.deallocate() }

    /// Nanoseconds spent in the steps ending with `kind` (an `…End` kind) in `direction`.
    func total(_ kind: MigrationEvent.Kind, _ direction: MigrationEvent.Direction) -> UInt64 {
        totals[slot(kind, direction)].load(ordering: .relaxed)
    }

    private func slot(_ kind: MigrationEvent.Kind, _ direction: MigrationEvent.Direction) -> Int {
        let d = direction == .toDevice ? 0 : direction == .toRAM ? 1 : 2
        return d * kinds + Int(kind.rawValue)
    }

    func observe(_ e: MigrationEvent) {
        if e.beginTime != 0 && e.time > e.beginTime {
            totals[slot(e.kind, e.direction)].wrappingAdd(e.time - e.beginTime, ordering: .relaxed)
        }
        guard let track = tracks[e.direction] else { return }
        switch e.kind {
        case .setupBegin:
            batchStarts.withLockedValue { $0[e.batch] = e.time }
        case .setupEnd:
            if e.pages == 0 { _ = batchStarts.withLockedValue { $0.removeValue(forKey: e.batch) } }
            track.complete("setup", start: e.beginTime, end: e.time, args: TraceArgs("collected", Int64(e.pages)))
        case .copiesSubmitted:
            track.instant("submit", at: e.time, args: TraceArgs("seqno", Int64(e.seqno), "descriptors", Int64(e.pages)))
        case .migratePagesEnd:
            track.complete("migrate_vma_pages", start: e.beginTime, end: e.time, args: TraceArgs("pages", Int64(e.pages)))
        case .fenceSignaled:
            copyTrack?.complete("copy", start: e.beginTime, end: e.time, args: TraceArgs("seqno", Int64(e.seqno)))
            copyTrack?.flowStart("fence", id: e.batch, at: e.beginTime)
            copyTrack?.instant("fence signaled", at: e.time, args: TraceArgs("seqno", Int64(e.seqno)))
        case .fenceWaitEnd:
            track.complete("fence wait", start: e.beginTime, end: e.time, args: TraceArgs("failed", Int64(e.pages)))
        case .deviceMap:
            track.instant("device map", at: e.time, args: TraceArgs("pages", Int64(e.pages)))
        case .finalizeEnd:
            track.complete("finalize", start: e.beginTime, end: e.time, args: TraceArgs("migrated", Int64(e.pages)))
            if e.beginTime != 0 { track.flowEnd("fence", id: e.batch, at: e.beginTime) }
            if let start = batchStarts.withLockedValue({ $0.removeValue(forKey: e.batch) }) {
                track.complete("batch", start: start, end: e.time, args: TraceArgs("batch", Int64(e.batch), "seqno", Int64(e.seqno)))
            }
        case .cpuFaultEnd:
            track.complete("cpu fault", start: e.beginTime, end: e.time, args: TraceArgs("pages", Int64(e.pages)))
        case .gpuFaultResolved:
            track.complete("gpu fault", start: e.beginTime, end: e.time, args: TraceArgs("mapped", Int64(e.pages)))
        case .migratePagesBegin, .fenceWaitBegin, .finalizeBegin, .cpuFaultBegin, .gpuFault:
            break
        }
    }
}
