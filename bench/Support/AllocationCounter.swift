import MallocInterposerSwift
import NIOConcurrencyHelpers
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Heap allocations made while a timed phase runs: the check of DEVELOPERS.md's "hot paths
/// (per page, per descriptor) allocate nothing". Backs `mallocs_per_page_*` (migrate) and
/// `mallocs_per_page` (copy).
///
/// Counted by ordo-one's malloc-interposer, linked into dmem-bench: on Linux its `malloc`,
/// `calloc`, `realloc`, `posix_memalign`, `aligned_alloc`, `free`… are the process's (it is
/// a `DT_NEEDED` library ahead of libc, so no `LD_PRELOAD` is needed). A count is every
/// allocation call, a `realloc` included (it counts as one allocation), on every thread of
/// the process — the copy engine's reapers and workers too — between `count`'s begin and
/// end. Cost: while counting, one increment of a per-thread counter per call (no atomic,
/// no shared cache line); outside counting, the interposer's 16-byte header per block.
/// Neither is on a path that should allocate at all, so neither moves the GB/s figures.
/// Under AddressSanitizer or ThreadSanitizer the interposer compiles its hooks out:
/// `isAvailable` is false and records carry no `mallocs_*` field.
///
/// Threads: any; measurements may overlap (each reads the difference of two snapshots,
/// and counting stays on while any is open), but then each also counts the other's.
enum AllocationCounter {
    /// Whether allocations are being counted in this process: the interposer's `malloc` is
    /// the one the process calls (a probe allocation is seen).
    /// Only once the interposer's thread blocks are kept alive (`keepThreadBlocksAlive`).
    static let isAvailable: Bool = {
        guard keepThreadBlocksAlive() else { return false }
        let (_, n) = measure { probeAllocation() }
        return n >= 1
    }()

    /// One allocation through the Swift runtime's allocator (swift_slowAlloc → malloc),
    /// which the optimizer cannot elide as it could a malloc/free pair.
    private static func probeAllocation() {
        UnsafeMutableRawPointer.allocate(byteCount: 24, alignment: 8).deallocate()
    }

    /// Works around a use-after-free in malloc-interposer 1.6.1 (`interposer-unix.c`): the
    /// destructor of its pthread key frees the exiting thread's counter block but leaves the
    /// thread's cached pointer to it (`t_block`), so an allocation or free counted later in
    /// that thread's exit — in the destructor of a key created after the interposer's —
    /// writes into freed memory: glibc aborts ("tcache_thread_shutdown(): unaligned tcache
    /// chunk detected") or a reused block is corrupted. Any thread that allocated while
    /// counting and exits while counting is on can do it (a copy pass's channel threads,
    /// another test's threads).
    ///
    /// The interposer creates its key at its first counted allocation, and glibc gives a new
    /// key the lowest free index. So: free an index, count one allocation (the interposer's
    /// key takes that index and this thread's block is stored under it), check it, delete
    /// that key — no destructor runs for it any more — and take its index back with a key
    /// that has no destructor, so that no later key of someone else's inherits the values
    /// the interposer keeps storing there. Blocks then live as long as the process: a few
    /// dozen bytes per thread that ever allocated while counting, and their counts stay in
    /// the interposer's sums. False (counting off) if any step does not go as planned.
    private static func keepThreadBlocksAlive() -> Bool {
        #if canImport(Glibc)
        var index = pthread_key_t()
        guard pthread_key_create(&index, nil) == 0 else { return false }
        pthread_key_delete(index)
        MallocInterposerSwift.hook()
        probeAllocation()
        MallocInterposerSwift.unhook()
        guard pthread_getspecific(index) != nil else { return false }   // not the interposer's key
        pthread_key_delete(index)
        return reclaimKeyIndex(index)
        #else
        return false
        #endif
    }

    #if canImport(Glibc)
    /// Creates a key with no destructor at `index`, just deleted: true if it got that index.
    /// glibc hands out the lowest free index, so keys below `index` (freed meanwhile) are
    /// taken and given back, and a key above it means another thread took `index` first:
    /// stop there. Creating keys on past it would take every free index of the process
    /// (1024 at most) for a moment, and another thread's `pthread_key_create` would fail.
    static func reclaimKeyIndex(_ index: pthread_key_t,
                                create: (inout pthread_key_t) -> Int32 = { pthread_key_create(&$0, nil) }) -> Bool {
        var others: [pthread_key_t] = []
        defer { for key in others { pthread_key_delete(key) } }
        while others.count < 1024 {
            var key = pthread_key_t()
            guard create(&key) == 0 else { return false }
            if key == index { return true }
            others.append(key)
            if key > index { return false }
        }
        return false
    }
    #endif

    /// Runs `body`; returns its value and the allocations made meanwhile by any thread,
    /// nil when `isAvailable` is false.
    static func count<T>(_ body: () throws -> T) rethrows -> (value: T, mallocs: Int?) {
        guard isAvailable else { return (try body(), nil) }
        let (value, n) = try measure(body)
        return (value, n)
    }

    private static let open = NIOLockedValueBox(0)

    /// `DMEM_BENCH_MALLOC_BACKTRACE=N`: every Nth counted allocation prints its call stack
    /// (unsymbolicated addresses, `backtrace_symbols_fd`) on stderr, to find allocation sites.
    fileprivate static let sampleEvery: Int = {
        guard let text = getenv("DMEM_BENCH_MALLOC_BACKTRACE"), let n = Int(String(cString: text)), n > 0 else { return 0 }
        return n
    }()

    /// Whether `DMEM_BENCH_MALLOC_BACKTRACE` sampling is on.
    private static var sampling: Bool { sampleEvery > 0 && execinfo != nil }

    private static func measure<T>(_ body: () throws -> T) rethrows -> (T, Int) {
        open.withLockedValue { depth in
            if depth == 0 {
                if sampling { MallocInterposerSwift.setAllocationHook(sampleAllocation) }
                MallocInterposerSwift.hook()
            }
            depth += 1
        }
        let before = MallocInterposerSwift.getStatistics().mallocCount
        defer {
            open.withLockedValue { depth in
                depth -= 1
                if depth == 0 {
                    MallocInterposerSwift.unhook()
                    if sampling { MallocInterposerSwift.setAllocationHook(nil) }
                }
            }
        }
        let value = try body()
        let after = MallocInterposerSwift.getStatistics().mallocCount
        return (value, after - before)
    }
}

/// Allocations seen by `sampleAllocation`, and whether one is printing (no recursion).
private let sampled = Atomic<Int>(0)
private let printing = Atomic<Bool>(false)

/// glibc's `backtrace` and `backtrace_symbols_fd` (execinfo.h, which the Glibc module
/// leaves out), looked up before the hook is installed.
private typealias Backtrace = @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>?, Int32) -> Int32
private typealias BacktraceSymbolsFD = @convention(c) (UnsafePointer<UnsafeMutableRawPointer?>?, Int32, Int32) -> Void
private nonisolated(unsafe) let execinfo: (Backtrace, BacktraceSymbolsFD)? = {
    #if canImport(Glibc)
    guard let b = dlsym(nil, "backtrace"), let s = dlsym(nil, "backtrace_symbols_fd") else { return nil }
    return (unsafeBitCast(b, to: Backtrace.self), unsafeBitCast(s, to: BacktraceSymbolsFD.self))
    #else
    return nil
    #endif
}()

/// The interposer's allocation hook: prints the stack of every `sampleEvery`th allocation.
/// Runs inside malloc and allocates nothing itself (a nested call returns at once).
private func sampleAllocation(_: Int) {
    let n = sampled.add(1, ordering: .relaxed).newValue
    guard n % AllocationCounter.sampleEvery == 0, let (trace, symbols) = execinfo else { return }
    guard printing.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return }
    defer { printing.store(false, ordering: .releasing) }
    withUnsafeTemporaryAllocation(of: UnsafeMutableRawPointer?.self, capacity: 32) { frames in
        let depth = trace(frames.baseAddress, 32)
        let banner: StaticString = "dmem-bench: a sampled allocation from\n"
        _ = write(2, banner.utf8Start, banner.utf8CodeUnitCount)
        symbols(frames.baseAddress, depth, 2)
    }
}

extension Int {
    /// `self` allocations spread over `units` (pages, batches, faults); 0 for no units.
    func per(_ units: Int) -> Double { units > 0 ? Double(self) / Double(units) : 0 }
}
