import Foundation
import Testing
@testable import dmem_bench

/// A short, bounded torture run is a test: it must pass the same bar as the long run
/// (0 mismatches, leaks, protocol and invariant violations) while faults are injected.
@Suite(.timeLimit(.minutes(2))) struct TortureTests {
    /// A short run of 3 threads × 512 pages in 2 MiB of VRAM (512 pages for 1536:
    /// exhaustion and eviction).
    static func short(seconds: Double, seed: UInt64, injectRate: Double) -> TortureOptions {
        var o = TortureOptions()
        o.seconds = seconds
        o.threads = 3
        o.seed = seed
        o.injectRate = injectRate
        o.pagesPerThread = 512
        o.vramBytes = 2 << 20
        return o
    }

    @Test func shortRunWithInjectionLosesAndLeaksNothing() throws {
        let r = try TortureRun.run(Self.short(seconds: 3, seed: 42, injectRate: 0.05))
        let findings: String
        if case .string(let s)? = r["findings"] { findings = s } else { findings = "" }
        #expect(r["passed"] == .bool(true), "\(r.json)\n\(findings)")
        #expect(r["mismatches"] == .int(0) && r["leaks"] == .int(0) && r["fault_copy"] == .string("cpu"))
        #expect(r["protocol_violations"] == .int(0) && r["invariant_violations"] == .int(0))
        // It did work, and the engine did disturb it.
        guard case .int(let ops)? = r["operations"], case .int(let bytes)? = r["bytes_verified"],
              case .int(let migrated)? = r["pages_migrated"], case .int(let injected)? = r["injected_failures"] else {
            Issue.record("missing fields in \(r.json)")
            return
        }
        #expect(ops > 50 && bytes > ops * 4096 && migrated > 0 && injected > 0)
        #expect(r.json.hasPrefix("{\"seconds\":"))
    }

    /// With a minimum residency, eviction under pressure and CPU faults wait for young
    /// pages: the run must still pass (no deadlock: it ends by itself) and the waits happen.
    @Test func shortRunWithResidencyAndDirectoryVRAMLosesNothing() throws {
        var o = Self.short(seconds: 2, seed: 5, injectRate: 0.02)
        o.minimumResidency = .milliseconds(2)
        o.vramDirectory = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : nil
        o.faultCopy = .engine   // the other run takes the device's default (small faults on the CPU)
        let r = try TortureRun.run(o)
        #expect(r["passed"] == .bool(true), "\(r.json)")
        #expect(r["mismatches"] == .int(0) && r["leaks"] == .int(0) && r["protocol_violations"] == .int(0))
        #expect(r["residency_ms"] == .double(2) && r["fault_copy"] == .string("engine"))
        guard case .int(let waits)? = r["residency_waits"] else {
            Issue.record("no residency_waits in \(r.json)")
            return
        }
        #expect(waits > 0, "VRAM pressure and faults met young pages")
    }

    /// The mapped backend under the injector: workers and waiters (`CopyBackend.assist`)
    /// copy, fence callbacks run on either; the same bar.
    @Test func shortRunOnTheMappedBackendLosesNothing() throws {
        var o = Self.short(seconds: 2, seed: 9, injectRate: 0.05)
        o.copyBackend = .mapped
        o.faultCopy = .engine
        let r = try TortureRun.run(o)
        #expect(r["passed"] == .bool(true), "\(r.json)")
        #expect(r["backend"] == .string("mapped"))
        #expect(r["mismatches"] == .int(0) && r["leaks"] == .int(0) && r["protocol_violations"] == .int(0))
        guard case .int(let injected)? = r["injected_failures"], case .int(let migrated)? = r["pages_migrated"] else {
            Issue.record("missing fields in \(r.json)")
            return
        }
        #expect(injected > 0 && migrated > 0)
    }

    @Test func theShadowPatternTellsVersionsPagesAndOwnersApart() {
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        let k = TorturePattern.key(worker: 1, generation: 2, page: 3, version: 4)
        TorturePattern.fill(page, key: k)
        #expect(TorturePattern.matches(page, key: k))
        for other in [TorturePattern.key(worker: 1, generation: 2, page: 3, version: 3),
                      TorturePattern.key(worker: 1, generation: 2, page: 4, version: 4),
                      TorturePattern.key(worker: 0, generation: 2, page: 3, version: 4),
                      TorturePattern.key(worker: 1, generation: 3, page: 3, version: 4), 0] {
            #expect(!TorturePattern.matches(page, key: other))
        }
        page.storeBytes(of: 0, toByteOffset: 2048, as: UInt8.self)   // one torn byte
        #expect(!TorturePattern.matches(page, key: k))
        page.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        #expect(TorturePattern.matches(page, key: TorturePattern.key(worker: 1, generation: 2, page: 3, version: 0)))
    }

    @Test func badOptionsAreRefusedBeforeAnythingRuns() throws {
        var o = TortureOptions()
        o.threads = 0
        #expect(throws: TortureFailure.self) { try TortureRun.run(o) }
        o = TortureOptions()
        o.injectRate = 1.5
        #expect(o.problem != nil)
        o = TortureOptions()
        o.vramBytes = 3 << 20
        #expect(o.problem != nil)
        o = TortureOptions()
        o.minimumResidency = .seconds(2)
        #expect(o.problem == "residency must be in 0...1000 ms")
        o = TortureOptions()
        o.fixedBuffers = true
        o.copyBackend = .mapped
        #expect(o.problem == "fixed buffers are io_uring's: use them with the iouring backend")
        #expect(throws: (any Error).self) { try TortureCommand.parse(["--backend", "dma"]) }
        #expect(try TortureCommand.parse(["--backend", "memcpy"]).options.copyBackend == .memcpy)
        #expect(TortureOptions().problem == nil)
    }

    @Test func theScenarioIsRegisteredWithACISizedQuickRun() throws {
        let scenario = try ScenarioRegistry.standard.scenario(named: "torture")
        #expect(scenario.quickParameters["seconds"] == "3")
        #expect(!BenchSuite.standard.entries.contains { $0.scenario == "torture" })
    }
}
