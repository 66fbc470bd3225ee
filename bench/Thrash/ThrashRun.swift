#if canImport(Glibc)
import Glibc
#endif
import DMAEngine
import DeviceEmu
import HostMM

/// One `thrash` measurement: the GPU and the CPU take turns on one working set, the
/// access pattern migration policies are judged by (and that Xe's minimum residency is
/// there to tame).
///
/// The working set is stamped by the CPU first (present and writable pages). Then each
/// round writes every page through the GPU (a fresh pattern per round, so a stale byte
/// cannot verify) — each GPU fault migrates or maps a window of pages, by policy — and
/// reads every page back with the CPU, which faults whatever sits in VRAM back to RAM.
/// Every byte is verified after each round; the timings exclude the pattern making and
/// the checking. Counts are totals over all rounds.
///
/// Threads: the calling thread (plus the copy engine's own threads).
enum ThrashRun {
    static func measure(_ o: ThrashOptions, trace: TraceProcess?, progress: (String) -> Void) throws -> RunRecord {
        if let problem = o.problem { throw failure(problem) }
        let bytes = o.pages * 4096
        let vramBytes = (bytes + (2 << 20) - 1) / (2 << 20) * (2 << 20)
        let ramBytes = (64 << 20) + 2 * bytes
        var budget = MemoryBudget()
        budget.add("VRAM", vramBytes)
        budget.add("emulated RAM", ramBytes)
        budget.add("patterns and read-back", 2 * bytes)
        try budget.check("thrash", advice: "use fewer pages")

        let memory: PhysicalMemory
        do {
            memory = try PhysicalMemory(ramBytes: ramBytes, maxDevicePages: vramBytes / 4096 + 4096,
                                        checked: o.checked ? .on : .off)
        } catch { throw failure("cannot create \(MemoryBudget.approximate(ramBytes)) of emulated RAM: \(error)") }
        let (policy, thrashing): (MigrationPolicy, ThrashingMitigationPolicy?)
        do { (policy, thrashing) = try o.policy() } catch { throw failure("policy: \(error)") }
        var config = Device.Configuration(name: "thrash", vramSize: vramBytes, backend: o.backendKind,
                                          policy: policy)
        config.remoteAccessLink = o.remoteLink.model
        if let trace { config.observer = MigrateObserver(trace: trace) }   // the driver's batches and faults on the timeline
        let gpu: Device
        do { gpu = try Device(memory: memory, configuration: config) } catch {
            throw failure("cannot create the device: \(error)")   // an io_uring setup error says how to fall back
        }
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let base: UInt64
        let space: GPUAddressSpace
        do {
            base = try mm.mmap(length: bytes)
            space = try gpu.bind(mm)
        } catch { throw failure("setup: \(error)") }
        let pattern = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 4096)
        let readBack = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 4096)
        defer { pattern.deallocate(); readBack.deallocate() }
        let track = trace?.track("thrash")

        func stamp(_ seed: UInt64) {
            for p in 0..<o.pages { ScatterLayout.fill(pattern.baseAddress! + p * 4096, pageIndex: p, pageSize: 4096, seed: seed) }
        }
        stamp(0)
        do { try mm.write(at: base, from: UnsafeRawBufferPointer(pattern)) } catch { throw failure("stamping: \(error)") }

        let kinds: [DeviceCounters.Kind] = [.gpuFaults, .cpuFaults, .pagesToDevice, .pagesToRAM, .residencyWaits]
        let before = kinds.map { gpu.counters[$0] }
        var gpuNanos: [UInt64] = [], cpuNanos: [UInt64] = []
        for round in 0..<o.rounds {
            progress("round \(round + 1) of \(o.rounds)")
            let seed = UInt64(round + 1)
            stamp(seed)
            let t0 = MonotonicClock.now()
            try track.span("GPU writes") {
                for p in 0..<o.pages {
                    let at = base + UInt64(p * 4096)
                    do { try space.write(at: at, from: UnsafeRawBufferPointer(rebasing: pattern[p * 4096 ..< (p + 1) * 4096])) } catch {
                        throw failure("round \(round): GPU write of page \(p): \(error)")
                    }
                }
            }
            let t1 = MonotonicClock.now()
            try track.span("CPU reads") {
                for p in 0..<o.pages {
                    let at = base + UInt64(p * 4096)
                    do { try mm.read(at: at, into: UnsafeMutableRawBufferPointer(rebasing: readBack[p * 4096 ..< (p + 1) * 4096])) } catch {
                        throw failure("round \(round): CPU read of page \(p): \(error)")
                    }
                }
            }
            let t2 = MonotonicClock.now()
            gpuNanos.append(t1 - t0)
            cpuNanos.append(t2 - t1)
            for p in 0..<o.pages {
                if let w = ScatterLayout.firstMismatch(readBack.baseAddress! + p * 4096, pageIndex: p, pageSize: 4096, seed: seed) {
                    throw failure("round \(round): the CPU read page \(p) differing at byte \(w * 8) from what the GPU wrote")
                }
            }
        }
        let counts = zip(kinds, before).map { gpu.counters[$0.0] - $0.1 }
        gpu.unbind(mm)

        var r = RunRecord()
        r.set("pages", o.pages)
        r.set("rounds", o.rounds)
        r.set("gpu_fault", o.gpuFault.rawValue)
        r.set("window", o.window)
        r.set("fault_around", o.faultAround)
        r.set("prefetch", o.prefetch.rawValue)
        r.set("residency_ms", o.residencyMilliseconds)
        r.set("backend", o.backend.rawValue)
        r.set("remote_link", o.remoteLink.text)
        r.set("checked", o.checked)
        if let checker = memory.checker { r.set("protocol_violations", checker.violationCount) }
        let gpuMedian = median(gpuNanos), cpuMedian = median(cpuNanos)
        let roundMedian = median(zip(gpuNanos, cpuNanos).map { $0 + $1 })
        r.set("gbps", 2 * Double(bytes) / roundMedian)   // bytes the two sides touched per round, per ns = GB/s
        r.set("round_us", roundMedian / 1e3)
        r.set("gpu_phase_us", gpuMedian / 1e3)
        r.set("cpu_phase_us", cpuMedian / 1e3)
        r.set("us_per_page", roundMedian / 1e3 / Double(o.pages))
        for (name, count) in zip(["gpu_faults", "cpu_faults", "pages_to_device", "pages_to_ram", "residency_waits"], counts) {
            r.set(name, count)
        }
        if let stats = thrashing?.statistics {
            r.set("thrash_threshold", o.thrashThreshold)
            r.set("thrash_lapse_ms", o.thrashLapseMilliseconds)
            r.set("thrash_pin_ms", o.thrashPinMilliseconds)
            r.set("thrashing_pins", stats.pins)
            r.set("pinned_faults", stats.pinnedFaults)
        }
        r.set("verified", true)
        return r
    }

    private static func median(_ xs: [UInt64]) -> Double {
        let s = xs.sorted()
        return s.count % 2 == 1 ? Double(s[s.count / 2]) : Double(s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    static func failure(_ message: String) -> ScenarioError { ScenarioError(scenario: "thrash", message: message) }
}
