public import DMAEngine
public import HostMM
import NIOConcurrencyHelpers
import Synchronization

/// A fake GPU and its dmem driver: VRAM (memfd pools cut into 2 MiB device-pgmap chunks),
/// a copy engine, device page tables for the address spaces it is bound to, and the
/// nouveau migration flow between them.
///
/// Models `struct nouveau_dmem` + `nouveau_svm`: `migrateToDevice` is
/// `nouveau_dmem_migrate_vma`, the pgmap's `migrateToRAM` is
/// `nouveau_dmem_migrate_to_ram`, `suspend`/`shutdown` evict like
/// `nouveau_dmem_evict_chunk`, and `bind(_:)` gives a device address space whose GPU
/// reads, writes and atomics fault like nouveau's SVM.
///
/// ```swift
/// let memory = try PhysicalMemory(ramBytes: 1 << 30)
/// let gpu = try Device(memory: memory, configuration: .init(vramSize: 256 << 20))
/// let mm = AddressSpace(memory: memory)
/// let a = try mm.mmap(length: 64 << 20)
/// let gpuView = try gpu.bind(mm)
/// let moved = try gpu.migrateToDevice(mm, range: a ..< a + (64 << 20))  // CPU PTEs → device-private
/// try gpuView.read(at: a, into: buffer)                                    // GPU reads VRAM
/// _ = try mm.read(at: a, count: 4096)                                      // CPU fault → migrateToRAM
/// try gpu.shutdown()                                                       // evicts what is left
/// ```
///
/// Threads: every method may be called from any thread. Migrations hold the address
/// space's mmap lock (read) for their duration; `pageFree` and `migrateToRAM(_:)` are
/// HostMM's callbacks and run on whichever thread frees a page or faults.
public final class Device: DevicePagemapOps, @unchecked Sendable {
    /// What a device is made of and how its driver behaves.
    public struct Configuration: Sendable {
        /// A label for memfds and channels.
        public var name: String = "gpu"
        /// VRAM bytes (a multiple of `chunkSize`).
        public var vramSize: Int = 256 << 20
        /// Bytes per device pgmap chunk (nouveau: 2 MiB).
        public var chunkSize: Int = 2 << 20
        /// Bytes per memfd pool.
        public var poolSize: Int = 1 << 30
        /// `.devicePrivate` (the nouveau case) or `.deviceCoherent` (CPU-reachable VRAM).
        public var memoryType: MemoryType = .devicePrivate
        /// How each pool is laid out in files (striping, population, huge pages, or a
        /// directory such as a `huge=always` tmpfs instead of memfds).
        public var vramLayout: VRAMPool.Layout = .default
        /// Register System RAM with the copy engine's rings as fixed buffers (pinned;
        /// `DMAEngine.Configuration.fixedBuffers`). Only when the device makes its own engine.
        public var fixedBuffers = false
        /// Backend of the device's copy channels (the engine's default when nil).
        public var backend: CopyBackendKind? = nil
        /// Backend of the channels serving CPU faults (`migrateToRAM`); nil uses `backend`.
        /// A fault moves one page (or a fault-around window) while the CPU waits: a driver
        /// may prefer a CPU copy through the VRAM mapping (`.memcpy`) to a trip through
        /// the bulk copy engine, as TTM falls back to memcpy for small moves.
        public var faultBackend: CopyBackendKind? = nil
        /// The driver's policies; can be changed later with `Device.setPolicy`.
        public var policy = MigrationPolicy()
        /// Which resident pages VRAM pressure evicts first.
        public var eviction: EvictionPolicyKind = .leastRecentlyUsed
        /// The bus GPU accesses to system memory cross (through mapped entries, and
        /// device-exclusive pages): each occupies the link for its latency plus its bytes
        /// at its bandwidth, and the accessing thread sleeps off what runs more than
        /// 200 µs ahead. nil (the default): a remote access costs what a VRAM access does.
        public var remoteAccessLink: LinkModel? = nil
        /// Told about every step; nil costs one check per step.
        public var observer: (any MigrationObserver)? = nil

        public init(name: String = "gpu", vramSize: Int = 256 << 20, memoryType: MemoryType = .devicePrivate,
                    backend: CopyBackendKind? = nil, policy: MigrationPolicy = MigrationPolicy()) {
            self.name = name
            self.vramSize = vramSize
            self.memoryType = memoryType
            self.backend = backend
            self.policy = policy
        }
    }

    public let memory: PhysicalMemory
    public let engine: DMAEngine
    /// The device's VRAM: chunks, free list, PFN ↔ VRAM translation.
    public let vram: DeviceMemory
    /// `dev_pagemap.owner` of its chunks and `pgmap_owner` of its migrations.
    public let owner: PgmapOwner
    public let name: String
    public let counters = DeviceCounters()
    /// The eviction policy built from `Configuration.eviction`.
    public let eviction: any EvictionPolicy

    let observer: (any MigrationObserver)?
    /// Checked mode only: what the device page tables of every bound space map.
    let reverseMappings: ReverseMappings?
    /// Checked mode only: the engine's in-flight copies, by PFN (registered with the checker).
    let copyOracle: EngineCopyOracle?
    /// System RAM as the copy engine sees it (offset = PFN × page size): the region the
    /// driver's copies from and to RAM name, for copies of your own on `engine`.
    public let hostRegion: RegionID
    let channels: ChannelPool
    /// Channels for CPU faults (the same pool as `channels` unless `faultBackend` is set).
    let faultChannels: ChannelPool
    /// Synchronous CPU-copy channels for small CPU faults (`MigrationPolicy.cpuCopyFaultPages`);
    /// nil when `faultBackend` is set or the backend already copies on the CPU.
    let cpuCopyChannels: ChannelPool?
    let gate = OperationGate()
    /// Serializes `suspend`, `resume` and `shutdown`, as the PM core orders a driver's
    /// suspend, resume and removal callbacks (`nouveau_dmem_suspend` / `_resume` / `_fini`).
    let lifecycle = NIOLock()
    let ownsEngine: Bool
    let isCoherent: Bool
    private let ownerToken = OwnerToken()
    private let forwarder = PagemapOpsForwarder()
    private let policyBox: NIOLockedValueBox<MigrationPolicy>
    /// The policy's `GPUFaultPolicy` counts remote accesses: one relaxed load per GPU access
    /// to system memory when it does not.
    let countsRemoteAccesses = Synchronization.Atomic<Bool>(false)
    /// `Configuration.remoteAccessLink`, when set.
    let remoteLink: RemoteAccessLink?
    private let spaces = NIOLockedValueBox<[ObjectIdentifier: GPUAddressSpace]>([:])
    /// When each device page (dense index) last became resident, for the minimum-residency policy.
    let residentSince: UnsafeMutablePointer<Synchronization.Atomic<UInt64>>
    /// Per device page (dense index): 1 once a migration out of VRAM committed the page
    /// (its mappings now name a RAM page), until `pageFree`. See `DepartedPages.swift`.
    let departed: UnsafeMutablePointer<Synchronization.Atomic<UInt8>>
    private let batchCounter = Synchronization.Atomic<UInt64>(0)
    /// Migrations in flight that hold device pages locked without passing `gate`: CPU
    /// faults' `migrateToRAM`, `migrateRangeToRAM`, and eviction batches. Teardown and
    /// suspend wait for them before calling what is left in VRAM pinned or leaked, as
    /// `memunmap_pages` waits for the pgmap's last reference.
    let ungatedMigrations = Synchronization.Atomic<Int>(0)
    /// Scratch arrays reused by CPU faults.
    let spareBuffers = BufferCache()

    /// Builds the device: creates (or joins) a copy engine, registers System RAM and the
    /// VRAM pools with it. No chunk is registered before the first allocation.
    /// - Parameter engine: share an engine between devices; nil creates one with
    ///   `configuration.backend` (io_uring by default) that the device shuts down with itself.
    /// - Throws: `.invalidArgument` for sizes that do not divide or a policy the channels
    ///   cannot carry (batch above the engine's `maxBatch`); `.dma` when the engine fails.
    public init(memory: PhysicalMemory, configuration: Configuration = Configuration(),
                engine: DMAEngine? = nil) throws(DeviceError) {
        let c = configuration
        ownsEngine = engine == nil
        let made: DMAEngine
        if let given = engine { made = given } else { made = try Self.makeEngine(c, tracking: memory.checker != nil) }
        if let problem = c.policy.problem(maxBatch: made.configuration.maxBatch) {
            if ownsEngine { made.shutdown() }
            throw .invalidArgument(reason: "policy: \(problem)")
        }
        do { remoteLink = try c.remoteAccessLink.map { (m) throws(DeviceError) in try RemoteAccessLink(m) } } catch {
            if ownsEngine { made.shutdown() }
            throw error
        }
        self.memory = memory
        self.engine = made
        name = c.name
        owner = PgmapOwner(ownerToken)
        observer = c.observer
        isCoherent = c.memoryType == .deviceCoherent
        reverseMappings = memory.checker != nil ? ReverseMappings() : nil
        policyBox = NIOLockedValueBox(c.policy)
        countsRemoteAccesses.store(c.policy.gpuFault.customPolicy?.countsRemoteAccesses ?? false, ordering: .relaxed)
        do {
            hostRegion = try made.registerHostMemory(
                UnsafeMutableRawBufferPointer(start: memory.baseAddress, count: memory.byteCount), name: "\(c.name)-ram")
        } catch { throw .dma(error) }
        vram = try DeviceMemory(memory: memory, engine: made,
                                configuration: .init(size: c.vramSize, chunkSize: c.chunkSize, poolSize: c.poolSize,
                                                     type: c.memoryType, name: c.name, layout: c.vramLayout),
                                owner: owner, ops: forwarder)
        copyOracle = memory.checker == nil ? nil
            : EngineCopyOracle(memory: memory, engine: made, hostRegion: hostRegion, deviceMemories: [vram])
        let bulk = try ChannelPool(engine: made, backend: c.backend, name: "dmem")
        channels = bulk
        faultChannels = try c.faultBackend.map { kind throws(DeviceError) in try ChannelPool(engine: made, backend: kind, name: "fault") } ?? bulk
        cpuCopyChannels = try ChannelPool.cpuCopyKind(c.faultBackend == nil ? (c.backend ?? made.configuration.backend) : .memcpy)
            .map { kind throws(DeviceError) in try ChannelPool(engine: made, backend: kind, name: "cpucopy") }
        eviction = c.eviction.make(capacity: vram.pageCount)
        residentSince = UnsafeMutableRawPointer.allocate(byteCount: max(vram.pageCount, 1) * 8, alignment: 8)
            .initializeMemory(as: UInt64.self, repeating: 0, count: max(vram.pageCount, 1))
            .withMemoryRebound(to: Synchronization.Atomic<UInt64>.self, capacity: max(vram.pageCount, 1)) { $0 }
        departed = UnsafeMutableRawPointer.allocate(byteCount: max(vram.pageCount, 1), alignment: 1)
            .initializeMemory(as: UInt8.self, repeating: 0, count: max(vram.pageCount, 1))
            .withMemoryRebound(to: Synchronization.Atomic<UInt8>.self, capacity: max(vram.pageCount, 1)) { $0 }
        forwarder.memory = vram
        forwarder.target = self
        registerWithChecker()
    }

    /// A device dropped without `shutdown()` tears itself down (best effort: pages that
    /// cannot be evicted keep their chunks registered). A bound address space keeps its
    /// device alive until `unbind` or `shutdown`.
    deinit {
        try? shutdown()
        residentSince.deallocate()
        departed.deallocate()
    }

    private static func makeEngine(_ c: Configuration, tracking: Bool) throws(DeviceError) -> DMAEngine {
        var ec = DMAEngine.Configuration(maxBatch: max(4096, c.policy.batchPages))
        ec.tracksInFlightCopies = tracking  // checked mode asks which copies are in flight
        if let backend = c.backend { ec.backend = backend }
        ec.fixedBuffers = c.fixedBuffers
        do { return try DMAEngine(configuration: ec) } catch { throw .dma(error) }
    }

    /// The driver's policies (`setPolicy` changes them).
    public var policy: MigrationPolicy { policyBox.withLockedValue { $0 } }

    /// Replaces the driver's policies; operations that start afterwards use them.
    /// - Throws: `.invalidArgument` for a batch of 0 or above the engine's `maxBatch`, a
    ///   pipeline depth outside 1…8, a fault-around or GPU-fault window of 0 pages, or a
    ///   negative residency, retry count or CPU-copy limit (`cpuCopyFaultPages`);
    ///   `policy.problem(maxBatch:)` says which.
    public func setPolicy(_ policy: MigrationPolicy) throws(DeviceError) {
        if let problem = policy.problem(maxBatch: engine.configuration.maxBatch) {
            throw .invalidArgument(reason: "policy: \(problem)")
        }
        policyBox.withLockedValue {
            $0 = policy
            countsRemoteAccesses.store(policy.gpuFault.customPolicy?.countsRemoteAccesses ?? false, ordering: .relaxed)
        }
    }

    /// Copy channels created so far (one per concurrent batch at most).
    public var channelCount: Int {
        channels.channelCount + (faultChannels === channels ? 0 : faultChannels.channelCount) + (cpuCopyChannels?.channelCount ?? 0)
    }

    /// The io_uring fixed buffers of the device's copy channels, summed over them
    /// (`Configuration.fixedBuffers`): pieces installed, operations that used one, and the
    /// first reason a registration failed.
    public var fixedBuffers: FixedBufferStatus {
        var pools = [channels]
        if faultChannels !== channels { pools.append(faultChannels) }
        if let cpu = cpuCopyChannels { pools.append(cpu) }
        return .combined(pools.map(\.fixedBuffers))
    }

    // MARK: Address spaces

    /// The device's view of `mm` (GPU VA = CPU VA): a device page table kept coherent by an
    /// MMU interval notifier over the whole address space. Binding the same `mm` again
    /// returns the same view (`nouveau_svmm_init` / opening a dmirror).
    /// - Throws: `.shutDown`, `.hostMM` if the notifier cannot be inserted.
    public func bind(_ mm: AddressSpace) throws(DeviceError) -> GPUAddressSpace {
        guard gate.state != .shutDown else { throw .shutDown }
        let key = ObjectIdentifier(mm)
        if let existing = spaces.withLockedValue({ $0[key] }) { return existing }
        let space = try GPUAddressSpace(device: self, mm: mm)
        let winner = spaces.withLockedValue { table -> GPUAddressSpace in
            if let other = table[key] { return other }
            table[key] = space
            return space
        }
        if winner !== space { space.detach() }
        // A teardown between the check above and the insertion unbound everything but this
        // view. Teardown closes the gate before it unbinds: seeing it still open here means
        // its `unbindAll` comes later and finds the view.
        if gate.state == .shutDown {
            unbind(mm)
            throw .shutDown
        }
        return winner
    }

    /// Drops the view of `mm`: its device page table is emptied and the notifier removed.
    /// Waits for the view's GPU accesses in flight to finish (they fail with `.shutDown`
    /// at their next page), then tells the policies to forget `mm`: no GPU fault or remote
    /// access of the view reaches them after that.
    public func unbind(_ mm: AddressSpace) {
        // Closed before it can no longer be found (see `GPUAddressSpace.close`).
        let space = spaces.withLockedValue { table -> GPUAddressSpace? in
            let space = table.removeValue(forKey: ObjectIdentifier(mm))
            space?.close()
            return space
        }
        space?.detach()
        if space != nil { policiesForget(mm) }
    }

    /// Tells the policy objects of `policy` that `mm` is unbound.
    private func policiesForget(_ mm: AddressSpace) {
        let policy = self.policy
        policy.gpuFault.customPolicy?.addressSpaceUnbound(ObjectIdentifier(mm))
        if case .custom(let custom) = policy.cpuFaultGranularity { custom.addressSpaceUnbound(ObjectIdentifier(mm)) }
    }

    /// The bound view of `mm`, if any.
    public func addressSpace(for mm: AddressSpace) -> GPUAddressSpace? {
        spaces.withLockedValue { $0[ObjectIdentifier(mm)] }
    }

    var boundSpaces: [GPUAddressSpace] { spaces.withLockedValue { Array($0.values) } }

    func unbindAll() {
        let all = spaces.withLockedValue { table -> [GPUAddressSpace] in
            defer { table.removeAll() }
            for space in table.values { space.close() }
            return Array(table.values)
        }
        for space in all {
            space.detach()
            policiesForget(space.mm)
        }
    }

    // MARK: dev_pagemap_ops

    /// `page_free`: the page's last reference is gone; back to the free list
    /// (`nouveau_dmem_page_free`).
    public func pageFree(_ pfn: PFN, pagemap: DevicePagemap) {
        if let index = vram.pageIndex(of: pfn) {
            eviction.pageFreed(index)
            residentSince[index].store(0, ordering: .relaxed)
            departed[index].store(0, ordering: .releasing)   // before the free list can hand it out
        }
        counters.add(.pagesFreed)
        vram.freePage(pfn)
    }

    // MARK: Observer

    @inline(__always)
    func emit(_ kind: MigrationEvent.Kind, _ direction: MigrationEvent.Direction, begin: UInt64 = 0,
              batch: UInt64 = 0, seqno: UInt64 = 0, channel: Int = -1, address: UInt64 = 0,
              pages: @autoclosure () -> Int = 0) {
        guard let observer else { return }
        observer.observe(MigrationEvent(kind: kind, direction: direction, time: MonotonicTime.now(), beginTime: begin,
                                        batch: batch, seqno: seqno, channel: channel, address: address, pages: pages()))
    }

    /// A timestamp for a `…Begin` event, or 0 when nobody observes.
    @inline(__always)
    func stamp() -> UInt64 { observer == nil ? 0 : MonotonicTime.now() }

    func nextBatch() -> UInt64 { batchCounter.wrappingAdd(1, ordering: .relaxed).newValue }

    /// Starts timing a batch's fence (only when observed): its submit time; the signal
    /// time is the fence's own `timestamp`.
    func observeSignal(_ fence: Fence) -> SignalStamp? {
        observer == nil ? nil : SignalStamp(submitted: MonotonicTime.now())
    }

    /// Emits `.fenceSignaled` at the fence's timestamp, once the driver has waited for it.
    /// A fence that signalled before its submit was stamped (a synchronous backend copies
    /// inside `submit`) shows as signalled at that stamp.
    func reportSignal(_ stamp: SignalStamp?, _ fence: Fence, _ direction: MigrationEvent.Direction, batch: UInt64,
                      address: UInt64 = 0) {
        guard let stamp, let observer else { return }
        let signalled = max(fence.timestamp ?? MonotonicTime.now(), stamp.submitted)
        observer.observe(MigrationEvent(kind: .fenceSignaled, direction: direction,
                                        time: signalled, beginTime: stamp.submitted,
                                        batch: batch, seqno: fence.seqno, channel: fence.channelID, address: address))
    }

    /// The engine address of a System-RAM frame.
    @inline(__always)
    func ramAddress(_ pfn: PFN) -> DMAAddress {
        DMAAddress(region: hostRegion, offset: Int(pfn.rawValue) * pageSize)
    }

    /// The channels a fault (CPU or GPU) moving `window` copies on: the CPU-copy ones for a
    /// window of at most `policy.cpuCopyFaultPages` pages, else the fault channels (the
    /// bulk ones unless `faultBackend` is set).
    func channels(forFault window: Range<UInt64>, _ policy: MigrationPolicy) -> ChannelPool {
        let pages = Int((window.upperBound - window.lowerBound) >> 12)
        return pages <= policy.cpuCopyFaultPages ? cpuCopyChannels ?? faultChannels : faultChannels
    }
}

/// When an observed batch was submitted (its fence's `timestamp` says when it signalled).
struct SignalStamp: Sendable {
    let submitted: UInt64
}

/// The identity behind a device's `PgmapOwner` (it must exist before the device does).
private final class OwnerToken: Sendable {}
