import Foundation
import Testing
@testable import dmem_bench

@Suite struct TraceTests {
    func parse(_ recorder: TraceRecorder) throws -> (events: [[String: Any]], other: [String: Any]) {
        let object = try #require(try JSONSerialization.jsonObject(with: recorder.jsonData(metadata: ["k": "v"])) as? [String: Any])
        let events = try #require(object["traceEvents"] as? [[String: Any]])
        return (events, object["otherData"] as? [String: Any] ?? [:])
    }

    /// A migration-shaped timeline: setup, copies on a channel, fence emit/signal, pages, wait, finalize.
    @Test func writesValidJSONWithNamedTracksAndEventsInCausalOrder() throws {
        let recorder = TraceRecorder(capacity: 64)
        let process = recorder.process("migrate 4K batch=512")
        let migrate = process.track("migrate")
        let channel = process.track("channel 0")
        let t = MonotonicClock.now()
        migrate.complete("migrateVMASetup", start: t, end: t + 1_000, args: TraceArgs("pages", 512))
        channel.complete("copy h2d", start: t + 1_500, end: t + 5_000, args: TraceArgs("pages", 512, "sqes", 1))
        migrate.instant("fence emit", at: t + 1_200, args: TraceArgs("seqno", 7))
        migrate.flowStart("fence", id: 7, at: t + 1_200)
        migrate.complete("migrateVMAPages", start: t + 1_300, end: t + 2_000)
        channel.instant("fence signal", at: t + 5_000, args: TraceArgs("seqno", 7))
        migrate.complete("fence wait", start: t + 2_000, end: t + 5_100)
        migrate.complete("migrateVMAFinalize", start: t + 5_200, end: t + 6_000)
        migrate.flowEnd("fence", id: 7, at: t + 5_200)
        channel.counter("in flight", 3, at: t + 1_500)
        #expect(process.track("migrate").tid == migrate.tid)

        let (events, other) = try parse(recorder)
        #expect(other["dropped_events"] as? String == "0")
        #expect(other["k"] as? String == "v")
        let meta = events.filter { $0["ph"] as? String == "M" }
        let threadNames = meta.filter { $0["name"] as? String == "thread_name" }
            .compactMap { ($0["args"] as? [String: Any])?["name"] as? String }
        #expect(threadNames == ["migrate", "channel 0"])
        let processNames = meta.filter { $0["name"] as? String == "process_name" }
            .compactMap { ($0["args"] as? [String: Any])?["name"] as? String }
        #expect(processNames == ["migrate 4K batch=512"])

        let timed = events.filter { $0["ph"] as? String != "M" }
        let names = timed.map { $0["name"] as! String }
        #expect(names == ["migrateVMASetup", "fence emit", "fence", "migrateVMAPages", "copy h2d", "in flight",
                          "fence wait", "fence signal", "migrateVMAFinalize", "fence"])
        let ts = timed.map { $0["ts"] as! Double }
        #expect(ts == ts.sorted())
        #expect(ts.first == ts.first.map { _ in (timed[0]["ts"] as! Double) })
        #expect(abs(ts[1] - ts[0] - 1.2) < 1e-9)
        let finalize = try #require(timed.first { $0["name"] as? String == "migrateVMAFinalize" })
        let signal = try #require(timed.first { $0["name"] as? String == "fence signal" })
        #expect(finalize["ts"] as! Double > signal["ts"] as! Double)
        #expect(finalize["ph"] as? String == "X")
        #expect(abs((finalize["dur"] as! Double) - 0.8) < 1e-9)
        #expect(signal["ph"] as? String == "i" && signal["s"] as? String == "t")
        #expect((signal["args"] as? [String: Any])?["seqno"] as? Int == 7)
        let copy = try #require(timed.first { $0["name"] as? String == "copy h2d" })
        #expect(copy["tid"] as? Int == Int(channel.tid))
        #expect((copy["args"] as? [String: Any])?["sqes"] as? Int == 1)
        let flows = timed.filter { $0["name"] as? String == "fence" }
        #expect(flows.map { $0["ph"] as! String } == ["s", "f"])
        #expect(flows.allSatisfy { $0["id"] as? Int == 7 })
        #expect(flows.last?["bp"] as? String == "e")
    }

    @Test func spanRunsItsBodyEvenWhenTracingIsOff() throws {
        let off: TraceTrack? = nil
        var ran = 0
        off.span("work") { ran += 1 }
        let recorder = TraceRecorder(capacity: 8)
        let on: TraceTrack? = recorder.process("p").track("t")
        let value = on.span("work") { ran += 1; return 42 }
        #expect(ran == 2 && value == 42)
        #expect(recorder.events().map(\.name.description) == ["work"])
    }

    @Test func dropsAndCountsEventsBeyondCapacity() throws {
        let recorder = TraceRecorder(capacity: 10)
        let track = recorder.process("p").track("t")
        for i in 0..<25 { track.instant("tick", at: MonotonicClock.now() + UInt64(i)) }
        #expect(recorder.events().count == 10)
        #expect(recorder.droppedEvents == 15)
        let (_, other) = try parse(recorder)
        #expect(other["dropped_events"] as? String == "15")
    }

    @Test func manyThreadsRecordWithoutLosingEvents() throws {
        let recorder = TraceRecorder(capacity: 40_000)
        let process = recorder.process("threads")
        let tracks = (0..<4).map { process.track("worker \($0)") }
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            for i in 0..<5_000 {
                let start = MonotonicClock.now()
                tracks[worker].complete("op", start: start, args: TraceArgs("i", Int64(i)))
            }
        }
        let events = recorder.events()
        #expect(events.count == 20_000)
        #expect(recorder.droppedEvents == 0)
        for track in tracks {
            let indices = events.filter { $0.tid == track.tid }.map { $0.args.first!.value }
            #expect(indices.count == 5_000)
            #expect(Set(indices).count == 5_000)
        }
        let (parsed, _) = try parse(recorder)
        #expect(parsed.filter { $0["ph"] as? String == "X" }.count == 20_000)
    }
}
