/// One recorded trace event, fixed-size and trivially copyable so recording is a store
/// into a preallocated slot: names are `StaticString`s (no allocation, no ARC).
///
/// Threads: written once by the thread that claimed its slot, read by the writer afterwards.
struct TraceEvent: Sendable {
    /// The Chrome trace-event phases this writer emits.
    enum Phase: UInt8, Sendable {
        case complete   // "X": a span with ts and dur
        case instant    // "i": a point in time
        case counter    // "C": a counter sample
        case flowStart  // "s": the tail of an arrow, bound to the enclosing span
        case flowEnd    // "f": the head of an arrow, bound to the enclosing span
    }

    var phase: Phase
    var pid: Int32
    var tid: Int32
    /// Monotonic nanoseconds (see `MonotonicClock`).
    var timestamp: UInt64
    /// Nanoseconds; spans only.
    var duration: UInt64
    /// Flow id (arrows) or instant scope; 0 otherwise.
    var id: UInt64
    var name: StaticString
    var category: StaticString
    var args: TraceArgs
}

/// Up to two integer arguments shown in the trace viewer's details pane (e.g. `pages`, `seqno`).
///
/// Threads: immutable value; any thread.
struct TraceArgs: Sendable {
    var first: (name: StaticString, value: Int64)?
    var second: (name: StaticString, value: Int64)?

    static let none = TraceArgs()

    init() {}

    init(_ name: StaticString, _ value: Int64) {
        first = (name, value)
    }

    init(_ name: StaticString, _ value: Int64, _ name2: StaticString, _ value2: Int64) {
        first = (name, value)
        second = (name2, value2)
    }
}

/// Where an instant event is drawn: on its thread's track, across its process, or across the whole trace.
enum TraceInstantScope: UInt64, Sendable {
    case thread = 0, process = 1, global = 2
}
