public import Logging

/// The seam where copy implementations vary: one instance serves one channel.
///
/// Threads: `execute` is called with the channel's submit lock held, so calls
/// on one instance never overlap; completions may be reported from any thread.
/// `shutdown` is called once, after the last `execute`.
public protocol CopyBackend: AnyObject, Sendable {
    /// A short name for reports: "iouring", "memcpy", "faulty(iouring)", …
    var name: String { get }

    /// Starts every descriptor of `batch` and arranges for each to be reported
    /// exactly once (see `CopyBatch`). May block for back-pressure (a full ring),
    /// never for completion of the batch itself. Returns the number of
    /// operations issued to the backend's queue (SQEs for io_uring, 0 for memcpy).
    func execute(_ batch: CopyBatch) -> Int

    /// Waits until every descriptor handed to `execute` has been reported, then
    /// releases the backend's resources. With `cancelInFlight`, asks the kernel
    /// to cancel what has not started; cancelled descriptors fail with ECANCELED.
    func shutdown(cancelInFlight: Bool)

    /// Installs pieces of registered host memory in this backend's fixed-buffer table
    /// (io_uring's; other backends have none and ignore them). Called by the engine
    /// from any thread, concurrently with `execute`.
    func installFixedBuffers(_ pieces: [FixedBufferPiece])
    /// Clears fixed-buffer `slots` (their region is being unregistered; nothing in flight uses it).
    func removeFixedBuffers(slots: [Int])
    /// What the fixed-buffer table holds and how often operations used it.
    var fixedBufferStatus: FixedBufferStatus { get }

    /// Lends the calling thread, about to block on one of this channel's fences, to
    /// the backend: it runs queued work until `done()` or nothing is left to take.
    /// Models io_uring's `IORING_SETUP_DEFER_TASKRUN`, where the waiting task runs
    /// the completion work itself. Called from any thread, concurrently with
    /// `execute`; backends whose work runs elsewhere (the kernel, a timer) ignore it.
    func assist(until done: () -> Bool)

    /// Blocks until every descriptor handed to `execute` so far has been copied, so that
    /// the caller may run a `.fence` descriptor itself (a wrapper's injected copy). Called
    /// under the channel's submit lock. Backends that copy inside `execute` need nothing.
    func waitUntilIdle()
}

extension CopyBackend {
    public func assist(until done: () -> Bool) {}
    public func waitUntilIdle() {}
    public func installFixedBuffers(_ pieces: [FixedBufferPiece]) {}
    public func removeFixedBuffers(slots: [Int]) {}
    public var fixedBufferStatus: FixedBufferStatus { FixedBufferStatus() }
}

/// A channel's io_uring fixed buffers (`DMAEngine.Configuration.fixedBuffers`).
public struct FixedBufferStatus: Sendable, Equatable {
    /// Pieces of host memory installed in the ring's table (pinned by the kernel).
    public var installedPieces = 0
    /// Operations issued with a fixed-buffer opcode (`READ_FIXED`, `WRITEV_FIXED`, …).
    public var operations = 0
    /// Why the last table setup or installation failed (e.g. ENOMEM: RLIMIT_MEMLOCK;
    /// EFAULT/EOPNOTSUPP: memory the kernel cannot pin), or nil. Copies still run,
    /// through the plain opcodes.
    public var failure: String?

    public init(installedPieces: Int = 0, operations: Int = 0, failure: String? = nil) {
        self.installedPieces = installedPieces
        self.operations = operations
        self.failure = failure
    }

    /// The status of several channels: pieces and operations summed, the first failure kept.
    public static func combined(_ all: some Sequence<FixedBufferStatus>) -> FixedBufferStatus {
        all.reduce(into: FixedBufferStatus()) { sum, s in
            sum.installedPieces += s.installedPieces
            sum.operations += s.operations
            sum.failure = sum.failure ?? s.failure
        }
    }
}

/// What a backend is told about the channel it serves.
public struct ChannelSettings: Sendable {
    /// The channel's id in its engine.
    public var channelID: Int
    /// Maximum operations in flight (io_uring SQ entries).
    public var queueDepth: Int
    /// Whether runs contiguous on the file side become one vectored operation.
    public var coalescing: Bool
    public var logger: Logger
    /// Where the backend records a failure that makes the channel unusable (shared with the channel).
    public var health: ChannelHealth
    /// Set up a fixed-buffer table for registered host memory (`DMAEngine.Configuration.fixedBuffers`).
    public var fixedBuffers = false
}

/// Which `CopyBackend` a channel uses.
public indirect enum CopyBackendKind: Sendable, CustomStringConvertible {
    /// One io_uring per channel and one reaper thread blocked in `io_uring_wait_cqe`;
    /// `preadv` from / `pwritev` to the VRAM memfds, coalesced. The default.
    /// Reads (D2H, D2D) run on io-wq workers in parallel. A write holds its memfd's
    /// inode lock, so writes (H2D, D2D) run in parallel only across the files of a
    /// striped pool (`VRAMPool.Layout`); each one costs the kernel's per-page shmem
    /// work, about 1.4× a scattered memcpy on the reference machine.
    case ioUring
    /// Synchronous memcpy through the VRAM mapping on the submitting thread: the reference, and the fallback when io_uring is unavailable.
    case memcpy
    /// Worker threads memcpy through the regions' mappings (VRAM via its shared
    /// mapping); a thread about to wait on a fence copies queued slices itself
    /// (`CopyBackend.assist`). Ordering and fences as for every backend. Not io_uring.
    case mappedWorkers(threads: Int)
    /// Wraps another backend and injects the faults of `plan` (seeded, reproducible).
    case faultInjecting(FaultPlan, wrapping: CopyBackendKind)
    /// Wraps another backend and makes host↔device batches complete no earlier than
    /// the `LinkModel` (bandwidth, latency) says: PCIe or NVLink on top of the emulation.
    case linkModel(LinkModel, wrapping: CopyBackendKind)
    /// A backend of your own.
    case custom(name: String, make: @Sendable (ChannelSettings) throws(DMAError) -> any CopyBackend)

    public var description: String {
        switch self {
        case .ioUring: return "iouring"
        case .memcpy: return "memcpy"
        case .mappedWorkers: return "mapped"
        case .faultInjecting(_, let inner): return "faulty(\(inner))"
        case .linkModel(_, let inner): return "link(\(inner))"
        case .custom(let name, _): return name
        }
    }

    func make(_ settings: ChannelSettings) throws(DMAError) -> any CopyBackend {
        switch self {
        case .ioUring: return try IOURingBackend(settings)
        case .memcpy: return MemcpyBackend()
        case .mappedWorkers(let threads):
            guard (1...64).contains(threads) else { throw .invalidArgument("mappedWorkers threads \(threads) outside 1…64") }
            return MappedWorkersBackend(threads: threads, queueDepth: settings.queueDepth)
        case .faultInjecting(let plan, let inner):
            return FaultInjectingBackend(plan: plan, wrapping: try inner.make(settings), channelID: settings.channelID)
        case .linkModel(let model, let inner):
            return LinkModelBackend(model: try model.validated(), wrapping: try inner.make(settings), channelID: settings.channelID)
        case .custom(_, let make): return try make(settings)
        }
    }
}
