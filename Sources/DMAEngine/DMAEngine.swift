import Foundation
import Glibc
public import Logging
import NIOConcurrencyHelpers
public import SystemPackage

/// The copy engine: registered memory regions and the channels that copy between them.
///
/// Models the copy-engine half of a GPU driver (nouveau's `nouveau_dmem`
/// migrate helpers over its copy channel): the driver registers system RAM and
/// its VRAM pools once, then enqueues copies on channels and waits on fences.
///
/// Threads: every method may be called from any thread.
public final class DMAEngine: @unchecked Sendable {
    /// How channels of this engine are built.
    public struct Configuration: Sendable {
        /// The backend each new channel gets (io_uring by default).
        public var backend: CopyBackendKind = .ioUring
        /// Maximum operations in flight per channel (io_uring SQ entries).
        public var queueDepth: Int = 64
        /// Merge runs contiguous on the file (VRAM) side into one vectored operation.
        public var coalescing: Bool = true
        /// Pending descriptors allowed per channel before `submit()`.
        public var maxBatch: Int = 4096
        /// How many of a channel's latest completed tickets `DMAChannel.status(of:)` can still report on.
        public var statusHistory: Int = 1 << 16
        /// Record what submitted work reads and writes until its fence signals, for
        /// `DMAEngine.copiesInFlight(at:length:)` (checked mode). Off: one branch per submit.
        public var tracksInFlightCopies = false
        /// Register host memory with every io_uring channel as fixed buffers
        /// (`io_uring_register_buffers`, split into 1 GiB pieces) and issue an operation
        /// with the fixed-buffer opcode when all its host memory lies in one piece
        /// (`READ_FIXED`/`WRITE_FIXED`; `READV_FIXED`/`WRITEV_FIXED` on Linux 6.15+).
        ///
        /// Off by default: registering pins every page of the region, so all of it is
        /// allocated and locked at once (a sparse emulated RAM becomes resident). On the
        /// reference machine it made scattered 4 KiB h2d/d2h copies about 10 % faster and
        /// migration no faster (`dmem-bench copy --fixed-buffers on`; README). A region
        /// the kernel cannot pin (RLIMIT_MEMLOCK, file-backed memory) stays usable through
        /// the plain opcodes; `DMAChannel.fixedBuffers` says why. While registered, the
        /// region's pages must stay where they are (no `MADV_DONTNEED`, no remapping).
        public var fixedBuffers = false
        public var logger = Logger(label: "dmem.dma")

        public init(backend: CopyBackendKind = .ioUring, queueDepth: Int = 64, coalescing: Bool = true,
                    maxBatch: Int = 4096, statusHistory: Int = 1 << 16, tracksInFlightCopies: Bool = false,
                    fixedBuffers: Bool = false) {
            self.backend = backend
            self.queueDepth = queueDepth
            self.coalescing = coalescing
            self.maxBatch = maxBatch
            self.statusHistory = statusHistory
            self.tracksInFlightCopies = tracksInFlightCopies
            self.fixedBuffers = fixedBuffers
        }
    }

    /// The largest `Configuration.maxBatch` (descriptor buffers are allocated at that size).
    public static let maxBatchLimit = 1 << 20

    public let configuration: Configuration
    let regions = RegionTable()
    /// Fixed-buffer slots of host regions (nil unless `configuration.fixedBuffers`).
    private let fixedRegistry: FixedBufferRegistry?
    /// Submitted work by region until its fence signals (nil unless `tracksInFlightCopies`).
    let inFlight: InFlightTracker?
    private let lock = NIOLock()
    // Guarded by `lock`:
    private var channels: [DMAChannel] = []
    /// The id the next channel gets (reserved under the lock: concurrent `makeChannel` calls never share one).
    private var nextChannelID = 0
    private var pools: [RegionID: VRAMPool] = [:]
    /// The region each file of a registered pool backs, by file identity (see `adopt`).
    private var poolFiles: [FileIdentity: RegionID] = [:]
    private var isShutDown = false
    /// True once the first `shutdown()` finished draining (a later or concurrent call waits for it).
    private let drained = ConditionLock<Bool>(value: false)

    /// Creates an engine. With the io_uring backend, probes io_uring once so a
    /// missing or disabled io_uring fails here, with the reason and the fallback.
    public convenience init(configuration: Configuration = Configuration()) throws(DMAError) {
        try self.init(configuration: configuration, fixedPieceBytes: FixedBufferRegistry.maxPieceBytes)
    }

    /// An engine whose fixed buffers are cut into pieces of `fixedPieceBytes` (tests: 1 GiB is a lot to pin).
    init(configuration: Configuration, fixedPieceBytes: Int) throws(DMAError) {
        guard configuration.queueDepth >= 1, configuration.queueDepth <= 4096 else {
            throw .invalidArgument("queueDepth \(configuration.queueDepth) outside 1…4096")
        }
        guard (1...DMAEngine.maxBatchLimit).contains(configuration.maxBatch) else {
            throw .invalidArgument("maxBatch \(configuration.maxBatch) outside 1…\(DMAEngine.maxBatchLimit)")
        }
        guard (1...(1 << 30)).contains(configuration.statusHistory) else {
            throw .invalidArgument("statusHistory \(configuration.statusHistory) outside 1…\(1 << 30)")
        }
        if configuration.backend.usesIOURing { _ = try IOURing(entries: 2) }
        self.configuration = configuration
        inFlight = configuration.tracksInFlightCopies ? InFlightTracker() : nil
        fixedRegistry = configuration.fixedBuffers ? FixedBufferRegistry(pieceBytes: fixedPieceBytes) : nil
    }

    deinit { shutdown() }

    // MARK: Regions

    /// Registers host memory (emulated System RAM) for copies; the caller keeps owning it.
    ///
    /// The engine reaches it by pointer (as the memory side of `preadv`/`pwritev`).
    /// Keep it mapped until `unregister` returns.
    public func registerHostMemory(_ memory: UnsafeMutableRawBufferPointer, name: String = "host") throws(DMAError) -> RegionID {
        guard let base = memory.baseAddress, memory.count > 0 else {
            throw .invalidArgument("host memory region is empty")
        }
        try checkOpen()
        guard let id = regions.reserveID() else { throw .invalidArgument("no region ids left in this engine") }
        regions.fill(id, RegionEntry(base: base, length: memory.count, layout: .memory, kind: .host, active: true), name: name)
        if let fixedRegistry {
            lock.withLock {
                guard let pieces = fixedRegistry.add(id, base: base, length: memory.count) else {
                    configuration.logger.warning("no io_uring fixed-buffer slots left for \(id) (\(memory.count) bytes); its copies use the plain opcodes")
                    return
                }
                for channel in channels { channel.backend.installFixedBuffers(pieces) }
            }
        }
        return id
    }

    /// Creates a VRAM pool of `size` bytes (fresh memfds, mapped shared as one range) and registers it.
    ///
    /// `layout` spreads the pool over several memfds so that writes into it run in
    /// parallel (see `VRAMPool.Layout`); by default every page is allocated now.
    /// Throws `.invalidArgument` for a non-positive size or a bad layout, and
    /// `.system` when the kernel refuses the memory (memfd_create, fallocate, mmap).
    public func createVRAMPool(size: Int, name: String = "vram", layout: VRAMPool.Layout = .default) throws(DMAError) -> VRAMPool {
        guard size > 0 else { throw .invalidArgument("VRAM pool size must be positive") }
        try checkOpen()
        return try adopt(VRAMPool.create(name: name, size: size, layout: layout), size: size, name: name)
    }

    /// Registers an existing memfd (or other mappable file) of at least `size` bytes as a VRAM pool.
    /// The engine duplicates `fd`; the caller keeps its own descriptor. The pool is that one
    /// file (`VRAMPool.Layout.singleFile`), not populated.
    ///
    /// Throws `.busy` if the file (by identity, not by descriptor) already backs a pool of this
    /// engine: two regions over one memory would let a copy overlap itself unseen, since
    /// `DMAChannel.enqueueCopy` compares CPU addresses and the two mappings differ. The kernel
    /// refuses a second claim of one physical range the same way (`request_mem_region`, EBUSY).
    /// Unregister the first pool to adopt the file again.
    public func registerVRAMPool(fd: FileDescriptor, size: Int, name: String = "vram") throws(DMAError) -> VRAMPool {
        guard size > 0 else { throw .invalidArgument("VRAM pool size must be positive") }
        try checkOpen()
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { throw .system(Errno(rawValue: Glibc.errno), operation: "fstat") }
        guard Int(st.st_size) >= size else {
            throw .invalidArgument("file of \(st.st_size) bytes is smaller than the pool size \(size)")
        }
        let own = FileDescriptor(rawValue: dup(fd.rawValue))
        guard own.rawValue >= 0 else { throw .system(Errno(rawValue: Glibc.errno), operation: "dup") }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let mapped = (size + page - 1) & ~(page - 1)  // size ≤ st_size: no overflow
        let base: UnsafeMutableRawPointer
        do { base = try VRAMPool.mapShared(own, length: mapped) } catch { try? own.close(); throw error }
        var layout = VRAMPool.Layout.singleFile
        layout.populate = false
        return try adopt(VRAMPool.Storage(files: [own], base: base, mappedLength: mapped, layout: layout), size: size, name: name)
    }

    /// Registers a pool's storage; `.busy` if one of its files already backs a pool (every pool
    /// maps each of its files from offset 0, so a file adopted twice always overlaps itself).
    private func adopt(_ storage: VRAMPool.Storage, size: Int, name: String) throws(DMAError) -> VRAMPool {
        let identities = storage.files.compactMap(FileIdentity.init)
        guard let id = regions.reserveID() else {
            storage.release()
            throw .invalidArgument("no region ids left in this engine")
        }
        // Checked and claimed under one lock: two registrations of one file racing cannot both pass.
        let conflict = lock.withLock { () -> (FileIdentity, RegionID)? in
            for identity in identities { if let owner = poolFiles[identity] { return (identity, owner) } }
            for identity in identities { poolFiles[identity] = id }
            return nil
        }
        if let (identity, owner) = conflict {
            storage.release()
            throw .busy("the file with inode \(identity.inode) already backs \(owner) (\(regions.info(owner)?.name ?? "?")): "
                        + "a second registration would alias its bytes under two regions")
        }
        let pool = VRAMPool(region: id, name: name, size: size, storage: storage)
        regions.fill(id, RegionEntry(base: pool.base, length: size, layout: pool.fileLayout, kind: .vram, active: true), name: name)
        lock.withLock { pools[id] = pool }
        return pool
    }

    /// What the engine knows about `region`, or nil if it is not registered.
    public func region(_ id: RegionID) -> RegionInfo? { regions.info(id) }

    /// Unregisters a region once no copy can touch it.
    ///
    /// New descriptors naming it are refused at once. If a channel still holds
    /// *pending* (unsubmitted) descriptors naming it, the region is re-activated
    /// and `.busy` is thrown (submit or `discardPending()` them first). Otherwise
    /// waits up to `timeout` in all for in-flight work on every channel; on expiry the region stays
    /// registered and `.timedOut` is thrown. When this returns, nothing the engine
    /// started reads or writes the region's memory.
    public func unregister(_ id: RegionID, timeout: Duration = .seconds(30)) throws(DMAError) {
        guard regions.setActive(id, false) else { throw .unknownRegion(id) }
        let all = lock.withLock { channels }
        if let busy = all.first(where: { $0.pendingReferences(id) }) {
            _ = regions.setActive(id, true)
            throw .busy("channel \(busy.id) has pending descriptors naming \(id); submit or discard them first")
        }
        // One deadline for all channels: `timeout` bounds the whole wait.
        let deadline = ContinuousClock.now + timeout
        for channel in all {
            if let fence = channel.timeline.latestUnsignaled,
               !fence.waitForSignal(timeout: max(.zero, deadline - ContinuousClock.now)) {
                _ = regions.setActive(id, true)
                throw .timedOut
            }
        }
        regions.remove(id)
        lock.withLock {
            pools.removeValue(forKey: id)
            poolFiles = poolFiles.filter { $0.value != id }
            if let slots = fixedRegistry?.remove(id), !slots.isEmpty {
                for channel in channels { channel.backend.removeFixedBuffers(slots: slots) }
            }
        }
    }

    // MARK: Channels

    /// Creates a channel with its own backend instance (its own io_uring by default).
    public func makeChannel(name: String? = nil, backend: CopyBackendKind? = nil,
                            coalescing: Bool? = nil, queueDepth: Int? = nil) throws(DMAError) -> DMAChannel {
        try checkOpen()
        let depth = queueDepth ?? configuration.queueDepth
        guard depth >= 1, depth <= 4096 else { throw .invalidArgument("queueDepth \(depth) outside 1…4096") }
        let id = lock.withLock { () -> Int in
            defer { nextChannelID += 1 }
            return nextChannelID
        }
        var settings = ChannelSettings(channelID: id, queueDepth: depth,
                                       coalescing: coalescing ?? configuration.coalescing, logger: configuration.logger,
                                       health: ChannelHealth())
        settings.fixedBuffers = fixedRegistry != nil
        let made = try (backend ?? configuration.backend).make(settings)
        let channel = DMAChannel(id: id, name: name ?? "ch\(id)", maxBatch: configuration.maxBatch,
                                 statusHistory: configuration.statusHistory, regions: regions, backend: made,
                                 health: settings.health, inFlight: inFlight)
        let accepted = lock.withLock { () -> Bool in
            guard !isShutDown else { return false }
            channels.append(channel)
            if let fixedRegistry { made.installFixedBuffers(fixedRegistry.all) }
            return true
        }
        guard accepted else {
            made.shutdown(cancelInFlight: false)
            throw .shutDown
        }
        return channel
    }

    /// Stops the engine: refuses new work, drops pending descriptors, then either
    /// drains in-flight work or (with `cancelInFlight`) cancels what the kernel
    /// has not started; in both cases waits for every completion, so nothing is
    /// left writing into memory after this returns. Idempotent: a later or concurrent
    /// call returns when the first one's drain has finished.
    ///
    /// Called from a fence callback (or when a callback drops the last reference to
    /// the engine), it cannot wait: the completions it would wait for need the thread
    /// it runs on. It then refuses new work at once and drains on a thread of its own;
    /// wait on the channels' last fences to know when the copies are done.
    public func shutdown(cancelInFlight: Bool = false) {
        let taken = lock.withLock { () -> ([DMAChannel], [RegionID: VRAMPool])? in
            guard !isShutDown else { return nil }
            isShutDown = true
            defer { self.pools.removeAll(); self.poolFiles.removeAll() }
            return (channels, self.pools)
        }
        guard let (all, pools) = taken else {
            if !FenceCallbackContext.isActive {
                drained.lock(whenValue: true)
                drained.unlock()
            }
            return
        }
        for channel in all { _ = channel.close() }
        let (regions, drained) = (self.regions, self.drained)
        let drain: @Sendable () -> Void = {
            for channel in all { channel.backend.shutdown(cancelInFlight: cancelInFlight) }
            for id in regions.registeredIDs { regions.remove(id) }
            withExtendedLifetime(pools) {}  // the pools' memory outlives every copy into it
            drained.lock()
            drained.unlock(withValue: true)
        }
        guard FenceCallbackContext.isActive else { return drain() }
        let thread = Thread(block: drain)
        thread.name = "dma-shutdown"
        thread.start()
    }

    private func checkOpen() throws(DMAError) {
        if lock.withLock({ isShutDown }) { throw .shutDown }
    }
}

extension CopyBackendKind {
    var usesIOURing: Bool {
        switch self {
        case .ioUring: return true
        case .memcpy, .mappedWorkers, .custom: return false
        case .faultInjecting(_, let inner), .linkModel(_, let inner): return inner.usesIOURing
        }
    }
}

/// What makes two descriptors one file: the `st_dev` and `st_ino` of `fstat`.
///
/// Threads: a value; any thread.
struct FileIdentity: Hashable, Sendable {
    var device: UInt64
    var inode: UInt64

    /// The identity of `fd`'s file; nil if `fstat` fails (a descriptor the engine cannot compare).
    init?(_ fd: FileDescriptor) {
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { return nil }
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }
}
