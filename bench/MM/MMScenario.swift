import Foundation
import HostMM

/// `dmem-bench mm`: the cost of HostMM's migration control path with a no-op copy.
///
/// Migrates `pages` present anonymous pages to device-private memory in `batch`-page
/// steps (setup → allocate destinations → pages → finalize, the nouveau order) and
/// times each HostMM step; then times CPU faults on device-private entries, each one a
/// `migrateToRAM` that migrates one page back with a 4 KiB memcpy. Source pages are
/// faulted in one batch ahead of the migration (untimed) so host memory stays small at
/// 4 Mi pages. A 4 KiB memcpy measured in the same run is reported for scale.
enum MMScenario {
    /// Runs the scenario; throws if any page failed to migrate or fault back.
    static func run(pages: Int, batch: Int, faultSamples: Int = 4096, checked: Bool = false) throws -> RunRecord {
        guard pages > 0 else { throw HostMMError.invalidArgument(reason: "pages must be positive (got \(pages))") }
        guard batch > 0 else { throw HostMMError.invalidArgument(reason: "batch must be positive (got \(batch))") }
        let samples = min(pages, faultSamples)
        let ramBytes = (64 << 20) + 4 * batch * 4096 + samples * 4096
        let memory = try PhysicalMemory(ramBytes: ramBytes, maxDevicePages: pages + 1024, prefault: true,
                                        checked: checked ? .on : .off)
        let device = try MMBenchDevice(memory: memory, pageCount: pages)
        let mm = AddressSpace(memory: memory)
        let base = try mm.mmap(length: pages * 4096)
        let src = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: batch)
        let dst = UnsafeMutableBufferPointer<MigratePFN>.allocate(capacity: batch)
        defer { src.deallocate(); dst.deallocate() }

        var setupNs = 0, pagesNs = 0, finalizeNs = 0, allocNs = 0, migrated = 0
        var addr = base
        let end = base + UInt64(pages * 4096)
        while addr < end {
            let next = min(end, addr + UInt64(batch * 4096))
            try mm.touch(addr, length: Int(next - addr), write: true)
            try mm.mmapLock.withReadLock {
                var args = MigrateVMA(vma: mm.findVMA(addr), start: addr, end: next, src: src, dst: dst,
                                      pgmapOwner: device.owner, flags: .selectSystem)
                let t0 = now()
                try migrateVMASetup(&args)
                let t1 = now()
                try device.allocateDestinations(src, dst, args.npages)
                let t2 = now()
                try migrateVMAPages(&args)
                let t3 = now()
                migrateVMAFinalize(&args)
                let t4 = now()
                setupNs += t1 - t0; allocNs += t2 - t1; pagesNs += t3 - t2; finalizeNs += t4 - t3
                for i in 0..<args.npages where src[i].contains(.migrate) { migrated += 1 }
            }
            addr = next
        }
        guard migrated == pages else { throw BenchFailure("migrated \(migrated) of \(pages) pages") }

        var probe = [UInt8](repeating: 0, count: 8)
        let f0 = now()
        for i in 0..<samples {
            try probe.withUnsafeMutableBytes { try mm.read(at: base + UInt64(i * 4096), into: $0) }
        }
        let faultNs = now() - f0
        guard mm.faultCounters[.devicePrivate] == samples, probe == [UInt8](repeating: 0x5A, count: 8) else {
            throw BenchFailure("CPU faults did not bring device pages back")
        }

        var r = RunRecord()
        r.set("pages", pages)
        r.set("batch", batch)
        r.set("setup_ns_per_page", Double(setupNs) / Double(pages))
        r.set("pages_ns_per_page", Double(pagesNs) / Double(pages))
        r.set("finalize_ns_per_page", Double(finalizeNs) / Double(pages))
        r.set("control_ns_per_page", Double(setupNs + pagesNs + finalizeNs) / Double(pages))
        r.set("driver_alloc_ns_per_page", Double(allocNs) / Double(pages))
        r.set("cpu_fault_ns", Double(faultNs) / Double(samples))
        r.set("cpu_fault_samples", samples)
        r.set("memcpy_4k_ns", memcpyPageNs())
        r.set("checked", checked)
        if let checker = memory.checker { r.set("protocol_violations", checker.violationCount) }
        mm.exit()
        return r
    }

    private static func now() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    }

    /// ns to copy one 4 KiB page, over 4096 scattered pages of a 16 MiB buffer.
    private static func memcpyPageNs() -> Double {
        let count = 4096
        let a = UnsafeMutableRawPointer.allocate(byteCount: count * 4096, alignment: 4096)
        let b = UnsafeMutableRawPointer.allocate(byteCount: count * 4096, alignment: 4096)
        defer { a.deallocate(); b.deallocate() }
        memset(a, 1, count * 4096)
        memset(b, 2, count * 4096)
        var best = Int.max
        for _ in 0..<3 {
            let t0 = now()
            for i in 0..<count { memcpy(b + ((i * 37) % count) * 4096, a + i * 4096, 4096) }
            best = min(best, now() - t0)
        }
        return Double(best) / Double(count)
    }
}

struct BenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
