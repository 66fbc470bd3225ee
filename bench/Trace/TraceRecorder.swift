import NIOConcurrencyHelpers
import Synchronization

/// Records trace events for a Chrome trace-event JSON file (opens in Perfetto UI or
/// chrome://tracing): spans, instants, counters and flow arrows on named tracks.
///
/// Recording is lock-free and allocation-free: a thread claims the next slot of a
/// buffer preallocated at init with one atomic add and fills it; when the buffer is
/// full further events are dropped and counted (`droppedEvents`). Naming processes and
/// tracks takes a lock, so do it once, outside hot loops.
///
/// Threads: any thread may record at any time. `writeJSON` / `events` expect recording
/// to have stopped (they wait briefly for events still being filled in).
final class TraceRecorder: @unchecked Sendable {
    // @unchecked: `slots` is written only at indices claimed through `claimed` (each by one
    // thread), and read only after `published` shows those writes finished.
    private let slots: UnsafeMutablePointer<TraceEvent>
    let capacity: Int
    private let claimed = Atomic<Int>(0)
    private let published = Atomic<Int>(0)
    /// Trace time zero (monotonic ns): timestamps in the file are relative to it.
    let origin: UInt64
    private let directory = NIOLockedValueBox(TraceDirectory())

    /// - Parameter capacity: events kept before dropping (memory is reserved lazily by the OS).
    init(capacity: Int = 1 << 20) {
        self.capacity = max(capacity, 1)
        slots = .allocate(capacity: self.capacity)
        origin = MonotonicClock.now()
    }

    deinit { slots.deallocate() }

    /// A named process group of tracks, e.g. one per measured run ("memcpy batch=512").
    func process(_ name: String) -> TraceProcess {
        let pid = directory.withLockedValue { $0.addProcess(name) }
        return TraceProcess(recorder: self, pid: pid)
    }

    func track(_ name: String, pid: Int32) -> TraceTrack {
        let tid = directory.withLockedValue { $0.track(name, pid: pid) }
        return TraceTrack(recorder: self, pid: pid, tid: tid)
    }

    /// Stores one event; drops it when the buffer is full.
    @inline(__always)
    func record(_ event: TraceEvent) {
        let index = claimed.wrappingAdd(1, ordering: .relaxed).oldValue
        guard index < capacity else { return }
        (slots + index).initialize(to: event)
        published.wrappingAdd(1, ordering: .releasing)
    }

    /// Events that did not fit in the buffer.
    var droppedEvents: Int { max(0, claimed.load(ordering: .relaxed) - capacity) }

    /// The recorded events in recording order (waits up to ~1 s for slots still being filled).
    func events() -> [TraceEvent] {
        let expected = min(claimed.load(ordering: .acquiring), capacity)
        var spins = 0
        while published.load(ordering: .acquiring) < expected && spins < 1000 {
            spins += 1
            MonotonicClock.sleep(nanoseconds: 1_000_000)
        }
        let ready = min(published.load(ordering: .acquiring), expected)
        return Array(UnsafeBufferPointer(start: slots, count: ready))
    }

    var snapshotDirectory: TraceDirectory { directory.withLockedValue { $0 } }
}

/// The names of processes and tracks (Chrome's pid/tid), in registration order.
///
/// Threads: guarded by `TraceRecorder`'s lock.
struct TraceDirectory: Sendable {
    struct Track: Sendable { var pid: Int32; var tid: Int32; var name: String }
    private(set) var processes: [(pid: Int32, name: String)] = []
    private(set) var tracks: [Track] = []
    private var nextTid: Int32 = 1

    mutating func addProcess(_ name: String) -> Int32 {
        let pid = Int32(processes.count + 1)
        processes.append((pid, name))
        return pid
    }

    /// The track called `name` in process `pid`, created on first use.
    mutating func track(_ name: String, pid: Int32) -> Int32 {
        if let existing = tracks.first(where: { $0.pid == pid && $0.name == name }) { return existing.tid }
        let tid = nextTid
        nextTid += 1
        tracks.append(Track(pid: pid, tid: tid, name: name))
        return tid
    }
}

/// A group of tracks in the trace (a Chrome "process"), typically one measured run.
///
/// Threads: immutable handle; any thread.
struct TraceProcess: Sendable {
    let recorder: TraceRecorder
    let pid: Int32

    /// The track called `name` in this group ("migrate", "channel 0", "cpu faults"); same name, same track.
    func track(_ name: String) -> TraceTrack {
        recorder.track(name, pid: pid)
    }
}

/// One named row of the timeline (a Chrome "thread"). Events on it are recorded through these methods.
///
/// Threads: immutable handle; any thread may record on any track (spans on one track
/// should nest, as on a real thread, for the viewer to draw them stacked).
struct TraceTrack: Sendable {
    let recorder: TraceRecorder
    let pid: Int32
    let tid: Int32

    /// A span from `start` to `end` (monotonic ns; `end` defaults to now).
    @inline(__always)
    func complete(_ name: StaticString, start: UInt64, end: UInt64 = MonotonicClock.now(),
                  category: StaticString = "dmem", args: TraceArgs = .none) {
        recorder.record(TraceEvent(phase: .complete, pid: pid, tid: tid, timestamp: start,
                                   duration: end &- start, id: 0, name: name, category: category, args: args))
    }

    /// Runs `body` and records it as a span.
    @inline(__always)
    func span<Result>(_ name: StaticString, category: StaticString = "dmem", args: TraceArgs = .none,
                      _ body: () throws -> Result) rethrows -> Result {
        let start = MonotonicClock.now()
        defer { complete(name, start: start, category: category, args: args) }
        return try body()
    }

    /// A point in time (fence signalled, fault raised…).
    @inline(__always)
    func instant(_ name: StaticString, at time: UInt64 = MonotonicClock.now(), scope: TraceInstantScope = .thread,
                 category: StaticString = "dmem", args: TraceArgs = .none) {
        recorder.record(TraceEvent(phase: .instant, pid: pid, tid: tid, timestamp: time, duration: 0,
                                   id: scope.rawValue, name: name, category: category, args: args))
    }

    /// A counter sample (queue depth, pages in flight); drawn as a graph named `name`.
    @inline(__always)
    func counter(_ name: StaticString, _ value: Int64, at time: UInt64 = MonotonicClock.now()) {
        recorder.record(TraceEvent(phase: .counter, pid: pid, tid: tid, timestamp: time, duration: 0,
                                   id: 0, name: name, category: "dmem", args: TraceArgs("value", value)))
    }

    /// The tail of an arrow with `id`, bound to the span enclosing `time` on this track
    /// (e.g. the fence emit inside a submit span).
    @inline(__always)
    func flowStart(_ name: StaticString, id: UInt64, at time: UInt64 = MonotonicClock.now()) {
        recorder.record(TraceEvent(phase: .flowStart, pid: pid, tid: tid, timestamp: time, duration: 0,
                                   id: id, name: name, category: "flow", args: .none))
    }

    /// The head of the arrow with `id`, bound to the span enclosing `time` on this track (e.g. finalize).
    @inline(__always)
    func flowEnd(_ name: StaticString, id: UInt64, at time: UInt64 = MonotonicClock.now()) {
        recorder.record(TraceEvent(phase: .flowEnd, pid: pid, tid: tid, timestamp: time, duration: 0,
                                   id: id, name: name, category: "flow", args: .none))
    }
}

extension Optional where Wrapped == TraceTrack {
    /// Runs `body` always and records it as a span when tracing is on. Call it without `?`
    /// (`track.span("verify") { … }`): `track?.span` would skip the body when `track` is nil.
    @inline(__always)
    func span<Result>(_ name: StaticString, category: StaticString = "dmem", args: TraceArgs = .none,
                      _ body: () throws -> Result) rethrows -> Result {
        guard let track = self else { return try body() }
        return try track.span(name, category: category, args: args, body)
    }
}
