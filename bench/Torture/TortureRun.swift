import DeviceEmu
import Foundation
import HostMM

/// One torture run, start to verdict:
///
/// 1. workers (one thread and process each) draw operations for `seconds`: CPU and GPU
///    reads and writes, GPU atomics, migrations both ways, forks with copy-on-write and
///    a child GPU view, munmap + mmap, MADV_DONTNEED, whole-VRAM eviction and
///    suspend/resume — under VRAM pressure, while the engine injects faults; every
///    operation is followed by a read-back of what it touched against the shadow model;
/// 2. after joining them: every page is read back by the CPU, then HostMM's and the
///    device's invariants are checked;
/// 3. teardown (munmap, exit, device shutdown) must return every RAM frame and device page.
///
/// Reproducibility: a worker's operation sequence is a function of `seed` and its index,
/// and the injected faults of the engine's descriptor sequence; with one thread a run
/// repeats exactly (timing aside), with several the interleaving — and so which
/// descriptor meets which fault — differs from run to run.
///
/// Threads: the calling thread, plus `threads` workers it joins before returning.
enum TortureRun {
    static func run(_ o: TortureOptions, progress: (String) -> Void = { _ in }) throws -> RunRecord {
        if let problem = o.problem { throw TortureFailure(problem) }
        let world = try TortureWorld(o)
        var workers: [TortureWorker] = []
        for i in 0..<o.threads { workers.append(try TortureWorker(world: world, index: i)) }
        progress("torture: \(o.threads) worker\(o.threads == 1 ? "" : "s") for \(o.seconds) s")
        let t0 = MonotonicClock.now()
        world.start(seconds: o.seconds)
        let done = DispatchGroup()
        for w in workers {
            done.enter()
            let thread = Thread { w.run(); done.leave() }
            thread.name = "torture-\(w.index)"
            thread.stackSize = 1 << 20
            thread.start()
        }
        done.wait()
        let elapsed = MonotonicClock.seconds(since: t0)
        progress("torture: final check")
        for w in workers { w.verifyAll() }
        var invariants = world.memory.checkInvariants(addressSpaces: workers.map(\.mm)) + world.gpu.checkInvariants()
        progress("torture: teardown")
        for w in workers { w.tearDown() }
        var leaks = 0
        do { try world.gpu.shutdown() } catch { invariants.append("device shutdown: \(error)") }
        leaks += world.gpu.vram.inUsePageCount
        leaks += max(0, world.freeRAMAtStart - world.memory.freeRAMPageCount)
        let checker = world.memory.checker!
        leaks += checker.unfinishedMigrations
        var stats = TortureStats()
        for w in workers { stats.add(w.stats) }
        return record(o, world, stats, elapsed: elapsed, leaks: leaks, invariants: invariants)
    }

    /// The run passes only with no mismatch, leak, protocol or invariant violation, unexpected
    /// error or page check given up: any one of them is a finding.
    static func passed(_ s: TortureStats, leaks: Int, protocolViolations: Int, invariants: [String]) -> Bool {
        s.mismatches == 0 && leaks == 0 && protocolViolations == 0 && invariants.isEmpty
            && s.unexpectedErrors == 0 && s.unverified == 0
    }

    private static func record(_ o: TortureOptions, _ world: TortureWorld, _ s: TortureStats, elapsed: Double,
                               leaks: Int, invariants: [String]) -> RunRecord {
        let c = world.gpu.counters
        let checker = world.memory.checker!
        var r = RunRecord()
        r.set("seconds", elapsed)
        r.set("threads", o.threads)
        r.set("seed", Int(truncatingIfNeeded: o.seed))
        r.set("inject_rate", o.injectRate)
        r.set("residency_ms", Double(o.minimumResidency.components.seconds) * 1e3 + Double(o.minimumResidency.components.attoseconds) / 1e15)
        r.set("residency_waits", c[.residencyWaits] + c[.evictionResidencyWaits])
        r.set("vram_dir", o.vramDirectory ?? "memfd")
        r.set("fault_copy", o.faultCopy.rawValue)
        r.set("backend", o.copyBackend.rawValue)
        r.set("fixed_buffers", o.fixedBuffers)
        r.set("fixed_sqes", world.gpu.fixedBuffers.operations)
        r.set("operations", s.operations)
        r.set("pages_migrated", c[.pagesToDevice] + c[.pagesToRAM] + c[.pagesEvicted])
        r.set("pages_evicted", c[.pagesEvicted])
        r.set("faults", c[.cpuFaults] + c[.gpuFaults])
        r.set("injected_failures", c[.copyFailures])
        r.set("sigbus", s.sigbus)
        r.set("refused", s.refused)
        r.set("forks", s.forks)
        r.set("remaps", s.remaps)
        r.set("bytes_verified", s.bytesVerified)
        r.set("mismatches", s.mismatches)
        r.set("leaks", leaks)
        r.set("protocol_violations", checker.violationCount)
        r.set("invariant_violations", invariants.count)
        r.set("unexpected_errors", s.unexpectedErrors)
        r.set("unverified", s.unverified)
        r.set("passed", passed(s, leaks: leaks, protocolViolations: checker.violationCount, invariants: invariants))
        var notes = world.mismatchLog + world.errorLog + invariants.prefix(TortureWorld.logLimit)
        if leaks > 0 { notes.append("\(leaks) leaked: VRAM pages in use \(world.gpu.vram.inUsePageCount), RAM frames missing \(max(0, world.freeRAMAtStart - world.memory.freeRAMPageCount)), unfinished migrations \(checker.unfinishedMigrations)") }
        if s.unverified > 0 { notes.append("\(s.unverified) page checks gave up after every retry (the last error is counted in refused or sigbus)") }
        notes += checker.violations.prefix(TortureWorld.logLimit).map(\.description)
        if !notes.isEmpty { r.set("findings", notes.joined(separator: "\n")) }
        return r
    }
}
