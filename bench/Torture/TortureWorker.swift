#if canImport(Glibc)
import Glibc
#endif
import DeviceEmu
import HostMM

/// One torture thread: a process (address space) of its own, bound to the GPU, with
/// regions whose every page has an expected version (the shadow model). It draws
/// operations at random from its seed, and after each one reads back — by CPU or GPU —
/// the pages the operation touched and compares them with the shadow.
///
/// Only this worker writes its pages, so the shadow is exact; every other worker's
/// migrations, evictions, suspends and VRAM pressure move them around underneath.
///
/// Threads: `run` on the worker's own thread; the rest of the world is shared.
final class TortureWorker: @unchecked Sendable {
    struct Region {
        var address: UInt64
        var generation: UInt32
        var versions: [UInt32]
    }
    enum Via { case cpu, gpu }

    let world: TortureWorld
    let index: Int
    let mm: AddressSpace
    let space: GPUAddressSpace
    var regions: [Region] = []
    var rng: TortureRandom
    var stats = TortureStats()
    let page = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: pageSize)
    var nextGeneration: UInt32 = 1
    var pagesPerRegion: Int { world.options.pagesPerRegion }

    init(world: TortureWorld, index: Int) throws {
        self.world = world
        self.index = index
        mm = AddressSpace(memory: world.memory)
        space = try world.gpu.bind(mm)
        rng = TortureRandom(seed: world.options.seed &* 0x2545_F491_4F6C_DD1D ^ UInt64(index + 1))
        for _ in 0..<world.options.regionsPerThread { regions.append(try mapRegion()) }
    }

    deinit { page.deallocate() }

    func mapRegion() throws -> Region {
        let a = try mm.mmap(length: pagesPerRegion * pageSize)
        defer { nextGeneration += 1 }
        return Region(address: a, generation: nextGeneration, versions: [UInt32](repeating: 0, count: pagesPerRegion))
    }

    func address(_ r: Int, _ p: Int) -> UInt64 { regions[r].address + UInt64(p * pageSize) }

    func key(_ r: Int, _ p: Int, version: UInt32? = nil) -> UInt64 {
        TorturePattern.key(worker: index, generation: regions[r].generation, page: p, version: version ?? regions[r].versions[p])
    }

    func random(_ n: Int) -> Int { Int(rng.next() % UInt64(max(n, 1))) }

    /// Draws operations until the deadline.
    func run() {
        while MonotonicClock.now() < world.deadline {
            perform(TortureOp.pick(random(TortureOp.totalWeight)))
            stats.operations += 1
        }
    }

    // MARK: Checking

    /// Reads page `p` of region `r` (retrying transient failures) and compares it with the
    /// shadow; a mismatch is logged with the version it does match, if any.
    func verify(_ r: Int, _ p: Int, via: Via, in other: AddressSpace? = nil, expect: UInt64? = nil) {
        let key = expect ?? self.key(r, p)
        guard read(address(r, p), via: via, in: other) else { return }
        stats.bytesVerified += pageSize
        if TorturePattern.matches(page, key: key) { return }
        stats.mismatches += 1
        let current = regions[r].versions[p]
        let found = (0...current + 1).first { TorturePattern.matches(page, key: self.key(r, p, version: $0)) }
        world.logMismatch("worker \(index) region \(r) gen \(regions[r].generation) page \(p) va:0x\(String(address(r, p), radix: 16)) via \(via): expected version \(current), found \(found.map { "version \($0)" } ?? "foreign bytes")")
    }

    /// Reads the page at `address` into `page`; false (counted) if it could not. Transient
    /// failures (a suspended device, an injected fault-copy failure) are retried for up to
    /// ten seconds — a bound in time, not in tries, so a slow machine (a sanitizer build)
    /// is not mistaken for a broken one.
    func read(_ address: UInt64, via: Via, in other: AddressSpace? = nil) -> Bool {
        let buffer = UnsafeMutableRawBufferPointer(start: page, count: pageSize)
        let giveUp = MonotonicClock.now() + 10_000_000_000
        var attempt = 0
        while MonotonicClock.now() < giveUp {
            attempt += 1
            do {
                if via == .gpu && other == nil {
                    try space.read(at: address, into: buffer)
                } else {
                    try (other ?? mm).read(at: address, into: buffer)
                }
                return true
            } catch {
                guard transient(error) else { return false }
                if attempt > 3 { MonotonicClock.sleep(nanoseconds: 200_000) }
            }
        }
        stats.unverified += 1
        return false
    }

    /// Counts `error`; true when it is one the workload expects and a retry may succeed.
    @discardableResult
    func transient(_ error: any Error) -> Bool {
        switch error {
        case HostMMError.busError, DeviceError.hostMM(.busError):
            stats.sigbus += 1
            return true
        case DeviceError.fault where world.options.injectRate > 0:
            // A GPU fault resolved through a CPU fault whose copy failed: SIGBUS there is
            // EFAULT here (hmm_range_fault's answer). Without injection it is a bug.
            stats.sigbus += 1
            return true
        case DeviceError.suspended, DeviceError.busy, DeviceError.hostMM(.busy):
            stats.refused += 1
            return true
        default:
            stats.unexpectedErrors += 1
            world.logError("worker \(index): unexpected \(error)")
            return false
        }
    }
}
