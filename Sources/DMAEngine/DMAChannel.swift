import NIOConcurrencyHelpers
import Synchronization
import SystemPackage

/// A copy-engine channel: a software queue of descriptors, a backend (one
/// io_uring by default) and a fence timeline.
///
/// Models a GPU copy channel as nouveau drives it (`nouveau_channel` plus its
/// fence context), with DPDK dmadev's calling convention: `enqueue…` is cheap
/// and returns a ticket; `submit()` rings the doorbell for everything enqueued
/// since the last submit and returns the `Fence` for that batch.
///
/// Ordering: descriptors may run concurrently and complete in any order
/// (use `DescriptorFlags.fence` to order one after all earlier ones); fences
/// signal strictly in submit order.
///
/// Batch size: at most `maxBatch` descriptors may be pending; one more throws
/// `.batchFull` (nothing is split behind your back: size bursts with
/// `capacity`). The backend does split a batch into as many ring operations as
/// IOV_MAX, the 1 GiB per-operation limit and the stripe units of the VRAM pools
/// need; each descriptor is still reported once, on its ticket.
///
/// Threads: every method may be called from any thread; enqueue and submit
/// serialise on the channel's submit lock. A batch is whatever was enqueued,
/// by any thread, before `submit()`: give each producer thread its own channel
/// if batches must not mix. `submit()` may block while the ring is full.
public final class DMAChannel: @unchecked Sendable {
    /// Largest single descriptor: 1 GiB (also io_uring's per-op byte budget here).
    public static let maxDescriptorLength = 1 << 30

    public let id: Int
    public let name: String
    /// Pending descriptors allowed before a `submit()`.
    public let maxBatch: Int
    /// The backend's short name.
    public var backendName: String { backend.name }

    let backend: any CopyBackend
    let timeline: ChannelTimeline
    /// Set by the backend when its queue fails for good (see `ChannelHealth`).
    public let health: ChannelHealth
    /// The engine's in-flight record (nil unless the engine tracks in-flight copies).
    private let inFlight: InFlightTracker?
    private let regions: RegionTable
    private let pool: DescriptorPool
    private let submitLock = NIOLock()
    // Guarded by `submitLock`:
    private var snapshot = RegionSnapshot()
    private var pending: UnsafeMutableBufferPointer<CopyDescriptor>
    private var pendingCount = 0
    private var nextTicket: UInt64 = 0
    private var nextSeqno: UInt64 = 1
    private var closed = false
    private var stats = ChannelStatistics()
    /// `nextTicket`, read without the submit lock: `status(of:)` from a fence callback must
    /// not wait for a submit that waits for the backend (a `.fence`, a full ring) to drain.
    private let issuedTickets = Synchronization.Atomic<UInt64>(0)

    init(id: Int, name: String, maxBatch: Int, statusHistory: Int, regions: RegionTable, backend: any CopyBackend,
         health: ChannelHealth, inFlight: InFlightTracker? = nil) {
        self.id = id
        self.inFlight = inFlight
        self.health = health
        self.name = name
        self.maxBatch = maxBatch
        self.regions = regions
        self.backend = backend
        self.pool = DescriptorPool(capacity: maxBatch)
        self.timeline = ChannelTimeline(pool: pool, statusHistory: statusHistory, backend: backend)
        self.pending = pool.take()
    }

    deinit {
        pending.deallocate()
    }

    /// Descriptors that can still be enqueued before `submit()`: size a burst with it
    /// instead of meeting `.batchFull` half-way. Models dmadev's `rte_dma_burst_capacity()`.
    /// 0 once the channel is shut down or failed.
    public var capacity: Int {
        submitLock.withLock { closed || health.failure != nil ? 0 : maxBatch - pendingCount }
    }

    /// Every descriptor with a ticket at or below this one has completed and its fence signalled
    /// (or was discarded before submit: see `discardPending()`).
    /// The cheap completion query (dmadev `rte_dma_completed()`'s `last_idx`); whether any
    /// of them failed is on their fences, or per ticket with `status(of:)`.
    public var lastCompletedTicket: DMATicket? { timeline.lastCompletedTicket }

    /// The status of every ticket in `tickets`, in order: the slower per-operation query
    /// (dmadev `rte_dma_completed_status()`), answerable after the fences are gone for the
    /// last `statusHistory` completed tickets. Takes the timeline lock once (not the submit
    /// lock: a fence callback may call it); allocates the result.
    ///
    /// Throws `.invalidArgument` for tickets this channel has not issued yet, or a range
    /// longer than `statusHistory`.
    public func status(of tickets: Range<DMATicket>) throws(DMAError) -> [DescriptorStatus] {
        let issued = issuedTickets.load(ordering: .acquiring)
        let raw = tickets.lowerBound.rawValue..<tickets.upperBound.rawValue
        guard raw.upperBound <= issued else {
            throw .invalidArgument("tickets up to \(raw.upperBound - 1) asked, but the channel issued only \(issued)")
        }
        guard raw.count <= Int(timeline.statusWindow) else {
            throw .invalidArgument("\(raw.count) tickets asked; at most statusHistory (\(timeline.statusWindow)) at a time")
        }
        return timeline.status(raw)
    }

    /// The status of one ticket (see `status(of:)` for a range).
    public func status(of ticket: DMATicket) throws(DMAError) -> DescriptorStatus {
        guard ticket.rawValue < UInt64.max else { throw .invalidArgument("ticket \(ticket.rawValue) was never issued") }
        return try status(of: ticket..<DMATicket(rawValue: ticket.rawValue + 1))[0]
    }

    /// Counters since the channel was created.
    public var statistics: ChannelStatistics { submitLock.withLock { stats } }

    /// The channel's io_uring fixed buffers: pieces installed, operations that used one,
    /// and why registration failed, if it did (`DMAEngine.Configuration.fixedBuffers`).
    public var fixedBuffers: FixedBufferStatus { backend.fixedBufferStatus }

    /// Enqueues a copy of `length` bytes; the direction (H2D, D2H, D2D, H2H) follows from the regions.
    ///
    /// Throws `.zeroLength`, `.unknownRegion`, `.outOfRange`, `.overlappingRange`,
    /// `.invalidArgument` (longer than `maxDescriptorLength`), `.batchFull`, `.shutDown`,
    /// `.channelFailed`.
    @discardableResult
    public func enqueueCopy(from source: DMAAddress, to destination: DMAAddress, length: Int,
                            flags: DescriptorFlags = []) throws(DMAError) -> DMATicket {
        submitLock.lock()
        defer { submitLock.unlock() }
        try checkCanEnqueue(length)
        let src = try resolve(source, length)
        let dst = try resolve(destination, length)
        // By the CPU address, not the region: memory registered twice (or a VRAM pool's
        // mapping registered as host memory) is one range under two region ids. A file adopted
        // twice as a pool (two mappings of it) is refused at registration (`DMAEngine.adopt`);
        // host memory that is another mapping of a pool's file is not caught.
        let from = UInt(bitPattern: src.pointer), to = UInt(bitPattern: dst.pointer)
        if from < to + UInt(length), to < from + UInt(length) {
            throw .overlappingRange(source: source, destination: destination, length: length)
        }
        return append(CopyDescriptor(operation: .copy, flags: flags, fillValue: 0, length: length,
                                     source: src, destination: dst, ticket: DMATicket(rawValue: 0)))
    }

    /// Enqueues a fill of `length` bytes at `destination` with `value` (0 clears, like nouveau's clear for holes).
    @discardableResult
    public func enqueueFill(_ destination: DMAAddress, length: Int, value: UInt8 = 0,
                            flags: DescriptorFlags = []) throws(DMAError) -> DMATicket {
        submitLock.lock()
        defer { submitLock.unlock() }
        try checkCanEnqueue(length)
        let dst = try resolve(destination, length)
        return append(CopyDescriptor(operation: .fill, flags: flags, fillValue: value, length: length,
                                     source: dst, destination: dst, ticket: DMATicket(rawValue: 0)))
    }

    /// Hands every pending descriptor to the backend and returns their fence.
    ///
    /// With nothing pending the fence carries no work and signals once every
    /// earlier fence has: a pure ordering point. Throws `.shutDown` after shutdown
    /// and `.channelFailed` once the backend's queue failed (pending descriptors
    /// stay pending: `discardPending()` them).
    public func submit() throws(DMAError) -> Fence {
        submitLock.lock()
        defer { submitLock.unlock() }
        guard !closed else { throw .shutDown }
        if let failure = health.failure { throw .channelFailed(channel: id, failure) }
        let count = pendingCount
        let first = nextTicket - UInt64(count)
        let fence = Fence(seqno: nextSeqno, channelID: id, tickets: first..<nextTicket,
                          descriptors: pending, timeline: timeline)
        nextSeqno += 1
        pending = pool.take()
        pendingCount = 0
        timeline.append(fence)
        if count == 0 {
            timeline.fenceWorkDone(fence)
        } else {
            if let inFlight { inFlight.track(fence, UnsafeBufferPointer(rebasing: fence.descriptors[0..<count])) }
            let ops = backend.execute(CopyBatch(fence: fence, base: UnsafePointer(fence.descriptors.baseAddress!),
                                                indices: 0..<count))
            stats.batches += 1
            stats.operations += ops
        }
        fence.releaseBufferHold()
        return fence
    }

    /// Drops every pending (unsubmitted) descriptor; returns how many were dropped.
    /// Their tickets report `.failed(.canceled, bytesCompleted: 0)` in `status(of:)`
    /// (they never ran; later fences still move `lastCompletedTicket` past them).
    @discardableResult
    public func discardPending() -> Int {
        submitLock.withLock { dropPending() }
    }

    // MARK: Engine side

    /// Whether any pending descriptor names `region` (unregistration must not race them).
    func pendingReferences(_ region: RegionID) -> Bool {
        submitLock.withLock {
            (0..<pendingCount).contains { i in
                pending[i].destination.region == region
                    || (pending[i].operation == .copy && pending[i].source.region == region)
            }
        }
    }

    /// Refuses further work and drops pending descriptors; returns the last fence to wait for.
    func close() -> Fence? {
        submitLock.withLock {
            closed = true
            dropPending()
        }
        return timeline.latestUnsignaled
    }

    /// Drops the pending descriptors and records their tickets as canceled (submit lock held).
    @discardableResult
    private func dropPending() -> Int {
        let dropped = pendingCount
        if dropped > 0 { timeline.discard(nextTicket - UInt64(dropped)..<nextTicket) }
        pendingCount = 0
        return dropped
    }

    // MARK: Per-descriptor path (submit lock held)

    @inline(__always)
    private func checkCanEnqueue(_ length: Int) throws(DMAError) {
        guard !closed else { throw .shutDown }
        if let failure = health.failure { throw .channelFailed(channel: id, failure) }
        guard length > 0 else { throw length == 0 ? .zeroLength : .invalidArgument("negative length \(length)") }
        guard length <= Self.maxDescriptorLength else {
            throw .invalidArgument("length \(length) exceeds the per-descriptor limit of \(Self.maxDescriptorLength) bytes")
        }
        guard pendingCount < maxBatch else { throw .batchFull(capacity: maxBatch) }
    }

    @inline(__always)
    private func resolve(_ address: DMAAddress, _ length: Int) throws(DMAError) -> CopyEndpoint {
        let generation = regions.generation.load(ordering: .acquiring)
        if generation != snapshot.generation {
            let (entries, g) = regions.copy()
            snapshot.refresh(from: entries, generation: g)
        }
        guard let entry = snapshot.lookup(address.region) else { throw .unknownRegion(address.region) }
        let (end, overflow) = address.offset.addingReportingOverflow(length)
        guard address.offset >= 0, !overflow, end <= entry.length else {
            throw .outOfRange(address, length: length, regionLength: entry.length)
        }
        guard let base = entry.base else { throw .unknownRegion(address.region) }
        return CopyEndpoint(pointer: base + address.offset, region: address.region, offset: address.offset,
                            layout: entry.layout)
    }

    @inline(__always)
    private func append(_ descriptor: CopyDescriptor) -> DMATicket {
        let ticket = DMATicket(rawValue: nextTicket)
        nextTicket += 1
        issuedTickets.store(nextTicket, ordering: .releasing)
        var d = descriptor
        d.ticket = ticket
        pending[pendingCount] = d
        pendingCount += 1
        stats.descriptors += 1
        stats.bytes += d.length
        return ticket
    }
}

/// Counters of one channel (monotonic since creation).
public struct ChannelStatistics: Sendable, Equatable {
    /// Descriptors enqueued (submitted or still pending).
    public var descriptors = 0
    /// Bytes described by those descriptors.
    public var bytes = 0
    /// Non-empty batches submitted.
    public var batches = 0
    /// Operations the backend issued (io_uring SQEs; 0 for memcpy).
    public var operations = 0
}
