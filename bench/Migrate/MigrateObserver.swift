import DeviceEmu
import NIOConcurrencyHelpers
import Synchronization

/// The `migrate` run's observer: sums the time of each driver step (reported as
/// per-batch costs) and, with `--trace`, draws the dmem flow on the timeline. Each
/// direction has tracks of its own ("migrate → VRAM", "CPU faults → RAM", "evict
/// (teardown)"), one per batch in flight ("… slot 0", "… slot 1" with `pipeline` 2), so
/// spans on a track nest as on a real thread: a `batch` span holds `setup`,
/// `migrate_vma_pages`, `fence wait` and `finalize` spans and `submit` and `device map`
/// instants. The copy engine's track of the same slot has a `copy` span per fence (submit
/// → signal), a `fence signaled` instant and an arrow from the submit to its `finalize`:
/// finalize visibly starts only after the copy span ends. CPU and GPU fault spans are on
/// slot 0 of their tracks and enclose the batches they cause.
///
/// Threads: any (the driver reports from migrating and faulting threads); totals are
/// atomics, the slot table takes a lock only when tracing.
final class MigrateObserver: MigrationObserver, @unchecked Sendable {
    private let totals: UnsafeMutablePointer<Synchronization.Atomic<UInt64>>
    private let kinds = MigrationEvent.Kind.allCases.count
    private let slots: NIOLockedValueBox<TraceSlots>?

    init(trace: TraceProcess?) {
        totals = .allocate(capacity: 3 * MigrationEvent.Kind.allCases.count)
        for i in 0..<3 * MigrationEvent.Kind.allCases.count { (totals + i).initialize(to: Synchronization.Atomic(0)) }
        slots = trace.map { NIOLockedValueBox(TraceSlots(trace: $0)) }
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
        guard let slots else { return }
        let (track, copyTrack, batchStart) = slots.withLockedValue { $0.tracks(for: e) }
        switch e.kind {
        case .setupBegin:
            break
        case .setupEnd:
            track.complete("setup", start: e.beginTime, end: e.time, args: TraceArgs("collected", Int64(e.pages)))
        case .copiesSubmitted:
            track.instant("submit", at: e.time, args: TraceArgs("seqno", Int64(e.seqno), "descriptors", Int64(e.pages)))
        case .migratePagesEnd:
            track.complete("migrate_vma_pages", start: e.beginTime, end: e.time, args: TraceArgs("pages", Int64(e.pages)))
        case .fenceSignaled:
            copyTrack.complete("copy", start: e.beginTime, end: e.time, args: TraceArgs("seqno", Int64(e.seqno)))
            copyTrack.flowStart("fence", id: e.batch, at: e.beginTime)
            copyTrack.instant("fence signaled", at: e.time, args: TraceArgs("seqno", Int64(e.seqno)))
        case .fenceWaitEnd:
            track.complete("fence wait", start: e.beginTime, end: e.time, args: TraceArgs("failed", Int64(e.pages)))
        case .deviceMap:
            track.instant("device map", at: e.time, args: TraceArgs("pages", Int64(e.pages)))
        case .finalizeEnd:
            track.complete("finalize", start: e.beginTime, end: e.time, args: TraceArgs("migrated", Int64(e.pages)))
            if e.beginTime != 0 { track.flowEnd("fence", id: e.batch, at: e.beginTime) }
            if let start = batchStart {
                track.complete("batch", start: start, end: e.time, args: TraceArgs("batch", Int64(e.batch), "seqno", Int64(e.seqno)))
            }
        case .cpuFaultEnd:
            track.complete("cpu fault", start: e.beginTime, end: e.time, args: TraceArgs("pages", Int64(e.pages)))
        case .gpuFaultResolved:
            track.complete("gpu fault", start: e.beginTime, end: e.time, args: TraceArgs("mapped", Int64(e.pages)))
        case .deviceExclusive:
            track.instant("device exclusive", at: e.time)
        case .migratePagesBegin, .fenceWaitBegin, .finalizeBegin, .cpuFaultBegin, .gpuFault:
            break
        }
    }
}

/// Which trace tracks a batch's events go to: a batch takes the lowest free slot of its
/// direction at `setupBegin` and gives it back when it ends (`finalizeEnd`, or a
/// `setupEnd` that collected nothing), so batches in flight at once never share a track.
///
/// Threads: guarded by `MigrateObserver`'s lock.
private struct TraceSlots {
    let trace: TraceProcess
    /// Per direction, per slot: the batch holding it (nil: free).
    var busy: [MigrationEvent.Direction: [UInt64?]] = [:]
    var lanes: [MigrationEvent.Direction: [(track: TraceTrack, copies: TraceTrack)]] = [:]
    /// Batch → (slot, `setupBegin` time).
    var open: [UInt64: (slot: Int, start: UInt64)] = [:]

    init(trace: TraceProcess) { self.trace = trace }

    static func name(_ d: MigrationEvent.Direction) -> String {
        switch d {
        case .toDevice: return "migrate → VRAM"
        case .toRAM: return "CPU faults → RAM"
        case .evict: return "evict (teardown)"
        case .none: return "GPU faults"
        }
    }

    mutating func lane(_ d: MigrationEvent.Direction, _ slot: Int) -> (track: TraceTrack, copies: TraceTrack) {
        var all = lanes[d] ?? []
        while all.count <= slot {
            let n = all.count
            all.append((trace.track("\(Self.name(d)) slot \(n)"), trace.track("copy engine (\(Self.name(d)) slot \(n))")))
        }
        lanes[d] = all
        return all[slot]
    }

    /// The tracks of `e` (and, at the end of its batch, when the batch began); claims and frees slots.
    mutating func tracks(for e: MigrationEvent) -> (TraceTrack, TraceTrack, UInt64?) {
        if e.batch == 0 {
            let l = lane(e.direction, 0)
            return (l.track, l.copies, nil)
        }
        if e.kind == .setupBegin {
            var b = busy[e.direction] ?? []
            let slot = b.firstIndex(where: { $0 == nil }) ?? b.count
            if slot == b.count { b.append(nil) }
            b[slot] = e.batch
            busy[e.direction] = b
            open[e.batch] = (slot, e.time)
        }
        guard let (slot, start) = open[e.batch] else {
            let l = lane(e.direction, 0)
            return (l.track, l.copies, nil)
        }
        let l = lane(e.direction, slot)
        let ends = e.kind == .finalizeEnd || (e.kind == .setupEnd && e.pages == 0)
        guard ends else { return (l.track, l.copies, nil) }
        open[e.batch] = nil
        busy[e.direction]?[slot] = nil
        return (l.track, l.copies, e.kind == .finalizeEnd ? start : nil)
    }
}
