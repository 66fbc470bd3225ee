public import DMAEngine
public import HostMM
import NIOConcurrencyHelpers
import Synchronization

/// The kernel's HMM test device (lib/test_hmm.c, `struct dmirror_device`, "dmirror"):
/// device memory of one kind, an owner token, and the `dev_pagemap_ops` its pages fault
/// through. Each `open(_:)` gives a `Mirror` of one address space that takes the
/// hmm-tests commands (read, write, migrate, snapshot, exclusive, release, flags).
///
/// ```swift
/// let memory = try PhysicalMemory(ramBytes: 256 << 20)
/// let dev0 = try MirrorDevice(memory: memory, kind: .devicePrivate)   // /dev/hmm_dmirror0
/// let mm = AddressSpace(memory: memory)
/// let a = try mm.mmap(length: 1024 * 4096)
/// let fd = try dev0.open(mm)
/// let r = try fd.migrateToDevice(a, npages: 1024)      // r.cpages == 1024
/// let bytes = try fd.snapshot(a, npages: 1024)          // [.devicePrivateLocal | .write, …]
/// fd.close()                                            // evicts the device's pages
/// ```
///
/// Memory comes from DeviceEmu's `DeviceMemory` (memfd pools cut into chunks, each a
/// pgmap, and a free list), shared with `Device`. Differences from the kernel that no
/// command can observe: chunks are registered on first use up to `vramSize` instead of
/// one at probe and more without limit; a private page's data lives in its VRAM bytes
/// rather than in a separately allocated system page; `release` evicts every chunk but
/// keeps it registered.
///
/// With `Configuration.observer` set, the commands report their steps as `MigrationEvent`s
/// (the kinds `Device` reports; `batch` numbers are device-wide, `seqno` 0 and `channel`
/// -1 throughout: test_hmm copies with the CPU, inside alloc_and_copy, so a batch has no
/// fence and `copiesSubmitted` is reported once its copies are done):
/// - `migrateToDevice`, per batch of 512 pages, direction `.toDevice`: `setupBegin`,
///   `setupEnd` (pages collected), `copiesSubmitted` (pages copied or cleared),
///   `migratePagesBegin`, `migratePagesEnd`, `deviceMap` (finalize_and_map's entries),
///   `finalizeBegin`, `finalizeEnd`. The read-back reports nothing.
/// - `migrateToSystem`, per batch, direction `.toRAM`: the same without `deviceMap`; when
///   a system page cannot be had, `setupEnd` is followed by `finalizeBegin`/`End`.
/// - A CPU fault (`dmirror_devmem_fault`): `cpuFaultBegin`, one `.toRAM` batch of one page
///   as above, `cpuFaultEnd` (pages moved).
/// - `release`, `close()` and `shutdown()` evict by PFN, 512 at a time, direction `.evict`:
///   `setupBegin`, `setupEnd`, then, when pages were collected, `copiesSubmitted`,
///   `migratePagesBegin`, `migratePagesEnd`, `finalizeBegin`, `finalizeEnd`.
/// - `read` and `write`, per `dmirror_fault` (a missing or read-only entry): `gpuFault`
///   (`address` = the first page faulted) and, once stored, `gpuFaultResolved` (pages);
///   a fault that fails reports no resolution.
/// - `makeExclusive`: `deviceExclusive` per page taken, before the mirror maps it.
/// - `snapshot`, `checkExclusive`, `setFlags` and `mmap` report nothing.
///
/// Threads: any. `pageFree` and `migrateToRAM` are HostMM callbacks and run on whichever
/// thread frees a page or faults.
public final class MirrorDevice: DevicePagemapOps, @unchecked Sendable {
    /// Sizes and timeouts.
    public struct Configuration: Sendable {
        /// A label for the memfds.
        public var name: String
        /// Device memory in bytes (a multiple of `chunkSize`).
        public var vramSize: Int
        /// Bytes per chunk (`DEVMEM_CHUNK_SIZE`, 256 MiB in the kernel).
        public var chunkSize: Int
        /// How long the fault and snapshot loops retry invalidated walks before `EBUSY`
        /// (`HMM_RANGE_DEFAULT_TIMEOUT`, 1000 ms).
        public var rangeTimeout: Duration
        /// Told about every step of the commands (see the type's comment for which);
        /// nil costs one check per step. A `StepProbe` here pins a race.
        public var observer: (any MigrationObserver)?

        public init(name: String = "dmirror", vramSize: Int = 1 << 30, chunkSize: Int = 256 << 20,
                    rangeTimeout: Duration = .milliseconds(1000), observer: (any MigrationObserver)? = nil) {
            self.name = name
            self.vramSize = vramSize
            self.chunkSize = chunkSize
            self.rangeTimeout = rangeTimeout
            self.observer = observer
        }
    }

    public let memory: PhysicalMemory
    /// `.devicePrivate` (the kernel's devices 0 and 1) or `.deviceCoherent` (2 and 3).
    public let kind: MemoryType
    /// `pagemap.owner` of the chunks, `pgmap_owner` of the migrations, `dev_private_owner`
    /// of the HMM walks: the device itself, shared by all its mirrors.
    public let owner: PgmapOwner
    /// The device memory: chunks, free list, PFN → bytes.
    public let vram: DeviceMemory
    public let configuration: Configuration

    /// `MIGRATE_VMA_SELECT_*` for memory of this device (`dmirror_select_device`).
    var selectDevice: MigrateVMA.Flags { kind == .devicePrivate ? .selectDevicePrivate : .selectDeviceCoherent }
    let rangeTimeoutNanoseconds: UInt64
    /// `configuration.observer`, read once per step.
    let observer: (any MigrationObserver)?
    private let batchCounter = Atomic<UInt64>(0)

    private let engine: DMAEngine
    private let ownsEngine: Bool
    private let forwarder = PagemapOpsForwarder()
    private let ownerToken = MirrorOwnerToken()
    /// Open mirrors by id: `zone_device_data` of a device page names the mirror that
    /// migrated it (the kernel keeps a pointer in the backing page).
    private let mirrors = NIOLockedValueBox<[UInt64: WeakMirror]>([:])
    private let nextMirrorID = Atomic<UInt64>(1)
    private let isShutDown = Atomic<Bool>(false)
    /// Migration batches (to the device, to system memory, CPU faults, evictions) between
    /// their setup and their finalize: the ones holding device pages locked.
    private let migrationsInFlight = Atomic<Int>(0)
    /// Checked mode only: what every mirror's page table maps (see `DeviceMappingOracle`).
    let reverseMappings: ReverseMappings?

    /// Creates the device. Its memory pools are registered with `engine` (a memcpy-backed
    /// engine of its own when nil); page copies are CPU copies, as test_hmm's are.
    /// - Throws: `.invalidArgument` for sizes that do not divide or a kind mismatch;
    ///   `.outOfMemory` if the pools cannot be created.
    public init(memory: PhysicalMemory, kind: MemoryType = .devicePrivate,
                configuration: Configuration = Configuration(), engine: DMAEngine? = nil) throws(MirrorError) {
        let c = configuration
        guard c.vramSize > 0, c.chunkSize > 0 else {
            throw .invalidArgument(reason: "vramSize \(c.vramSize) and chunkSize \(c.chunkSize) must be positive")
        }
        if let engine {
            self.engine = engine
            ownsEngine = false
        } else {
            do { self.engine = try DMAEngine(configuration: .init(backend: .memcpy)) } catch { throw .outOfMemory }
            ownsEngine = true
        }
        self.memory = memory
        self.kind = kind
        self.configuration = c
        owner = PgmapOwner(ownerToken)
        rangeTimeoutNanoseconds = MonotonicTime.nanoseconds(c.rangeTimeout)
        observer = c.observer
        reverseMappings = memory.checker != nil ? ReverseMappings() : nil
        do {
            vram = try DeviceMemory(memory: memory, engine: self.engine,
                                    configuration: .init(size: c.vramSize, chunkSize: c.chunkSize,
                                                         poolSize: max(c.chunkSize, min(c.vramSize, 1 << 30) / c.chunkSize * c.chunkSize),
                                                         type: kind, name: c.name),
                                    owner: owner, ops: forwarder)
        } catch {
            if ownsEngine { self.engine.shutdown() }
            if case .invalidArgument(let why) = error { throw .invalidArgument(reason: why) }
            throw .outOfMemory
        }
        forwarder.target = self
        memory.checker?.register(self as any DeviceMappingOracle)
    }

    deinit { shutdown() }

    /// Opens a mirror of `mm` (`dmirror_fops_open`): an empty device page table and an
    /// interval notifier over the whole address space.
    /// - Throws: `.invalidArgument` after `shutdown` or when `mm` has exited.
    public func open(_ mm: AddressSpace) throws(MirrorError) -> Mirror {
        guard !isShutDown.load(ordering: .acquiring) else { throw .invalidArgument(reason: "the device was shut down") }
        guard !mm.hasExited else { throw .invalidArgument(reason: Mirror.addressSpaceGone) }
        let id = nextMirrorID.wrappingAdd(1, ordering: .relaxed).oldValue
        let mirror = try Mirror(device: self, mm: mm, id: id)
        mirrors.withLockedValue { $0[id] = WeakMirror(mirror) }
        return mirror
    }

    /// Refuses new device allocations, waits for the migrations in flight (at most 10 s),
    /// then evicts every device page, closes nothing, unregisters the chunks and, if the
    /// device made its engine, shuts the engine down. Waiting is what `memunmap_pages` does
    /// for the pgmap's references: a batch between setup and finalize (or a CPU fault, from
    /// the handler's page lock to its return) holds its device pages locked, and an
    /// eviction that skipped them would leave them behind. Pages that cannot be evicted
    /// (pinned) cost 20 passes of 1 ms and keep their chunk registered. Idempotent; also run by
    /// `deinit`. Not from an observer: the migration it reports from would be waited for.
    public func shutdown() {
        guard !isShutDown.exchange(true, ordering: .sequentiallyConsistent) else { return }
        waitForMigrations()
        // A page still busy is pinned (faults in flight were waited for): a few more passes,
        // 1 ms apart, for one unpinned meanwhile.
        for _ in 0..<20 {
            evictAll()
            guard vram.inUsePageCount > 0 else { break }
            MonotonicTime.sleep(nanoseconds: 1_000_000)
            waitForMigrations()
        }
        try? vram.retire()
        if ownsEngine { engine.shutdown() }
    }

    /// Waits (1 ms polls, 10 s at most) until no migration batch is in flight and no CPU
    /// fault holds a device page (`DeviceMemory.faultsInFlight`).
    private func waitForMigrations() {
        var polls = 0
        while polls < 10_000 && (migrationsInFlight.load(ordering: .sequentiallyConsistent) > 0 || vram.faultsInFlight > 0) {
            MonotonicTime.sleep(nanoseconds: 1_000_000)
            polls += 1
        }
    }

    /// Counts a migration batch from before its setup (`enterMigration`) to after its
    /// finalize (`leaveMigration`), for `shutdown`.
    func enterMigration() { migrationsInFlight.add(1, ordering: .sequentiallyConsistent) }
    func leaveMigration() { migrationsInFlight.subtract(1, ordering: .sequentiallyConsistent) }

    /// Device pages in use (allocated and not yet freed).
    public var inUsePageCount: Int { vram.inUsePageCount }

    // MARK: Mirrors by id

    func mirror(id: UInt64) -> Mirror? { mirrors.withLockedValue { $0[id]?.mirror } }

    func forget(_ id: UInt64) { _ = mirrors.withLockedValue { $0.removeValue(forKey: id) } }

    // MARK: Page allocation (dmirror_devmem_alloc_page)

    /// A free device page, locked with refcount 1, whose data the caller fills; nil when
    /// device memory is exhausted.
    func allocPage() -> PFN? {
        // Sequentially consistent with `shutdown`: either it sees this batch in flight, or
        // this batch sees the device shut down.
        guard !isShutDown.load(ordering: .sequentiallyConsistent) else { return nil }
        return vram.allocPage()
    }

    /// The bytes behind a page the mirror may map: RAM, the zero page, coherent memory
    /// (CPU-reachable) or a private page of this device (its VRAM bytes).
    @inline(__always)
    func dataPointer(_ pfn: PFN) -> UnsafeMutableRawPointer? {
        if memory.isRAM(pfn) { return memory.baseAddress + Int(pfn.rawValue) * pageSize }
        return vram.bytes(of: pfn) ?? memory.bytes(pfn)   // lock-free for this device's pages
    }

    // MARK: Observer

    /// Reports one step to the observer; nothing is built when there is none.
    @inline(__always)
    func emit(_ kind: MigrationEvent.Kind, _ direction: MigrationEvent.Direction, begin: UInt64 = 0,
              batch: UInt64 = 0, address: UInt64 = 0, pages: @autoclosure () -> Int = 0) {
        guard let observer else { return }
        observer.observe(MigrationEvent(kind: kind, direction: direction, time: MonotonicTime.now(), beginTime: begin,
                                        batch: batch, address: address, pages: pages()))
    }

    /// A timestamp for a `…Begin` event, or 0 when nobody observes.
    @inline(__always)
    func stamp() -> UInt64 { observer == nil ? 0 : MonotonicTime.now() }

    /// The next device-wide batch number (1, 2, …).
    func nextBatch() -> UInt64 { batchCounter.wrappingAdd(1, ordering: .relaxed).newValue }

    // MARK: dev_pagemap_ops

    /// `dmirror_devmem_free`: back on the free list.
    public func pageFree(_ pfn: PFN, pagemap: DevicePagemap) {
        memory.setZoneDeviceData(pfn, 0)
        vram.freePage(pfn)
    }

    /// `dmirror_devmem_fault`: see `MirrorMigrateToRAM.swift`.
    public func migrateToRAM(_ fault: VMFault) -> VMFaultResult { devmemFault(fault) }
}

/// The identity behind a device's owner token.
private final class MirrorOwnerToken: Sendable {}

/// A registry slot that does not keep a mirror alive.
struct WeakMirror {
    weak var mirror: Mirror?
    init(_ mirror: Mirror) { self.mirror = mirror }
}
