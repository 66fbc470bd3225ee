import Foundation

/// Writes a `TraceRecorder`'s events as Chrome trace-event JSON (the "JSON Object
/// Format": `{"traceEvents": […], "displayTimeUnit": "ns", …}`), which Perfetto UI
/// and chrome://tracing open directly. Timestamps are µs from the recorder's origin
/// with ns precision; events are sorted by time (enclosing spans first).
///
/// Threads: call after recording has stopped, from any one thread.
extension TraceRecorder {
    func jsonData(metadata: [String: String] = [:]) -> Data {
        let directory = snapshotDirectory
        let events = sortedEvents()
        var out = TraceJSONBuffer()
        out.append("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")
        var first = true
        func separator() {
            if !first { out.append(",\n") }
            first = false
        }
        for (index, process) in directory.processes.enumerated() {
            separator()
            out.append("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":\(process.pid),\"tid\":0,\"args\":{\"name\":\(JSONText.quote(process.name))}}")
            out.append(",\n{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":\(process.pid),\"tid\":0,\"args\":{\"sort_index\":\(index)}}")
        }
        for (index, track) in directory.tracks.enumerated() {
            separator()
            out.append("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":\(track.pid),\"tid\":\(track.tid),\"args\":{\"name\":\(JSONText.quote(track.name))}}")
            out.append(",\n{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":\(track.pid),\"tid\":\(track.tid),\"args\":{\"sort_index\":\(index)}}")
        }
        for event in events {
            separator()
            append(event, to: &out)
        }
        out.append("\n],\"otherData\":{")
        var other = metadata
        other["dropped_events"] = String(droppedEvents)
        out.append(other.sorted { $0.key < $1.key }.map { "\(JSONText.quote($0.key)):\(JSONText.quote($0.value))" }.joined(separator: ","))
        out.append("}}\n")
        return out.data
    }

    /// Writes the trace to `path` (`OutputFile`: a regular file atomically).
    func writeJSON(to path: String, metadata: [String: String] = [:]) throws {
        try OutputFile.write(jsonData(metadata: metadata), to: path)
    }

    /// Events by start time; at equal times the longer span first so nesting reads naturally,
    /// then in recording order.
    func sortedEvents() -> [TraceEvent] {
        let events = self.events()
        let order = events.indices.sorted { a, b in
            let x = events[a], y = events[b]
            if x.timestamp != y.timestamp { return x.timestamp < y.timestamp }
            if x.duration != y.duration { return x.duration > y.duration }
            return a < b
        }
        return order.map { events[$0] }
    }

    private func append(_ event: TraceEvent, to out: inout TraceJSONBuffer) {
        let phase: String
        switch event.phase {
        case .complete: phase = "X"
        case .instant: phase = "i"
        case .counter: phase = "C"
        case .flowStart: phase = "s"
        case .flowEnd: phase = "f"
        }
        out.append("{\"name\":\(JSONText.quote(event.name.description)),\"cat\":\(JSONText.quote(event.category.description)),\"ph\":\"\(phase)\",\"ts\":")
        out.appendMicroseconds(event.timestamp > origin ? event.timestamp - origin : 0)
        out.append(",\"pid\":\(event.pid),\"tid\":\(event.tid)")
        switch event.phase {
        case .complete:
            out.append(",\"dur\":")
            out.appendMicroseconds(event.duration)
        case .instant:
            out.append(",\"s\":\"\(["t", "p", "g"][Int(min(event.id, 2))])\"")
        case .flowStart:
            out.append(",\"id\":\(event.id)")
        case .flowEnd:
            out.append(",\"id\":\(event.id),\"bp\":\"e\"")
        case .counter:
            break
        }
        var args: [String] = []
        if let a = event.args.first { args.append("\(JSONText.quote(a.name.description)):\(a.value)") }
        if let b = event.args.second { args.append("\(JSONText.quote(b.name.description)):\(b.value)") }
        if !args.isEmpty { out.append(",\"args\":{\(args.joined(separator: ","))}") }
        out.append("}")
    }
}

/// A growing UTF-8 buffer with a fast fixed-point µs formatter (trace files can hold millions of events).
struct TraceJSONBuffer {
    private(set) var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(1 << 20) }

    mutating func append(_ text: String) { bytes.append(contentsOf: text.utf8) }

    /// `nanoseconds` as µs with three decimals: 1234567 → "1234.567".
    mutating func appendMicroseconds(_ nanoseconds: UInt64) {
        append(String(nanoseconds / 1000))
        let fraction = Int(nanoseconds % 1000)
        bytes.append(UInt8(ascii: "."))
        bytes.append(UInt8(48 + fraction / 100))
        bytes.append(UInt8(48 + fraction / 10 % 10))
        bytes.append(UInt8(48 + fraction % 10))
    }

    var data: Data { Data(bytes) }
}
