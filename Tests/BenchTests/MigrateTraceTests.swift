import Testing
@testable import dmem_bench

/// The `migrate` run's timeline: spans on every track nest (a viewer stacks them as on a
/// real thread), pipelined batches get tracks of their own, and every finalize starts
/// after the copy span of its fence ended.
@Suite struct MigrateTraceTests {
    func trace(_ o: MigrateOptions) throws -> (events: [TraceEvent], tracks: [String: Int32]) {
        let recorder = TraceRecorder(capacity: 1 << 16)
        let process = recorder.process("migrate")
        _ = try MigrateRun.measure(o, trace: process, progress: { _ in })
        #expect(recorder.droppedEvents == 0)
        let tracks = Dictionary(recorder.snapshotDirectory.tracks.map { ($0.name, $0.tid) }, uniquingKeysWith: { a, _ in a })
        return (recorder.events().filter { $0.pid == process.pid }, tracks)
    }

    /// Spans on one track, by start (the longer first on a tie), each inside or after the previous ones.
    func nestingProblems(_ events: [TraceEvent]) -> [String] {
        var problems: [String] = []
        for tid in Set(events.map(\.tid)) {
            let spans = events.filter { $0.tid == tid && $0.phase == .complete }
                .sorted { ($0.timestamp, UInt64.max - $0.duration) < ($1.timestamp, UInt64.max - $1.duration) }
            var stack: [TraceEvent] = []
            for s in spans {
                while let top = stack.last, top.timestamp + top.duration <= s.timestamp { stack.removeLast() }
                if let top = stack.last, s.timestamp + s.duration > top.timestamp + top.duration {
                    problems.append("track \(tid): \(s.name) [\(s.timestamp), +\(s.duration)] overlaps \(top.name) [\(top.timestamp), +\(top.duration)]")
                }
                stack.append(s)
            }
        }
        return problems
    }

    /// Each fence arrow ends (at a finalize's start) no earlier than the copy span it starts from ends.
    func finalizeBeforeSignal(_ events: [TraceEvent]) -> (arrows: Int, problems: [String]) {
        let copies = events.filter { $0.phase == .complete && $0.name.description == "copy" }
        var problems: [String] = []
        let ends = events.filter { $0.phase == .flowEnd }
        for end in ends {
            guard let start = events.first(where: { $0.phase == .flowStart && $0.id == end.id }),
                  let copy = copies.first(where: { $0.tid == start.tid && $0.timestamp == start.timestamp }) else {
                problems.append("arrow \(end.id) has no copy span")
                continue
            }
            if end.timestamp < copy.timestamp + copy.duration { problems.append("batch \(end.id): finalize before its fence signalled") }
            let finalize = events.first { $0.phase == .complete && $0.name.description == "finalize" && $0.timestamp == end.timestamp }
            if finalize == nil { problems.append("batch \(end.id): arrow ends on no finalize") }
        }
        return (ends.count, problems)
    }

    @Test func pipelinedBatchesNestOnTracksOfTheirOwn() throws {
        var o = MigrateOptions()
        o.totalBytes = 4 << 20
        o.batchPages = 64
        o.pipeline = 2
        let (events, tracks) = try trace(o)
        #expect(nestingProblems(events) == [])
        let (arrows, problems) = finalizeBeforeSignal(events)
        #expect(problems == [])
        #expect(arrows >= 32)   // 16 batches to VRAM and 16 for range B (eviction batches too)
        let slot1 = try #require(tracks["migrate → VRAM slot 1"])
        #expect(events.contains { $0.tid == slot1 && $0.name.description == "batch" })
        let batches = events.filter { $0.name.description == "batch" }
        for b in batches {
            let inside = events.filter {
                $0.tid == b.tid && $0.phase == .complete && $0.timestamp >= b.timestamp
                    && $0.timestamp + $0.duration <= b.timestamp + b.duration
            }.map(\.name.description)
            #expect(inside.contains("setup") && inside.contains("finalize"))
        }
    }

    @Test func callbackAPIFinalizeSpansStartAfterTheirFence() throws {
        var o = MigrateOptions()
        o.totalBytes = 2 << 20
        o.batchPages = 64
        o.api = .callbacks2017
        let (events, _) = try trace(o)
        #expect(nestingProblems(events) == [])
        let (arrows, problems) = finalizeBeforeSignal(events)
        #expect(problems == [])
        #expect(arrows >= 8)
        let finalizes = events.filter { $0.name.description == "finalize" }
        #expect(!finalizes.isEmpty && finalizes.allSatisfy { $0.duration < 1_000_000_000 })
    }
}
