public import HostMM
import NIOConcurrencyHelpers
import Synchronization

/// One open of a `MirrorDevice` (`struct dmirror`): the device's page table for one
/// address space, kept coherent by an MMU interval notifier over all of it, and the
/// commands of lib/test_hmm.c's ioctls as methods.
///
/// Every command takes `(address, npages)` and applies the ioctl's checks first: an
/// unaligned address, `npages == 0` or a range that wraps is `EINVAL`. It returns
/// `cpages` and `faults` as the ioctl copies them out, or throws the ioctl's errno — and
/// then, like the kernel, writes nothing to the caller's buffer.
///
/// The mirror is bound to the address space that opened it: a forked child must open its
/// own (as hmm-tests does). Dropping the last reference closes it, as closing the last
/// descriptor of an open file does; neither the device nor the address space keeps it alive.
///
/// Threads: any; commands of one mirror may run concurrently. Lock order: HostMM locks
/// (mmap, page) → `lock`; nothing calls into HostMM with `lock` held.
public final class Mirror: @unchecked Sendable {
    public let device: MirrorDevice
    /// The mirrored address space; nil once deallocated (commands then fail as the
    /// kernel's `mmget_not_zero` would).
    public weak let mm: AddressSpace?
    let id: UInt64
    /// `dmirror->mutex`: guards `table`, `isClosed`, `isClosing` and `commandsInFlight`.
    let lock = NIOLock()
    /// `dmirror->pt`: entries hold no page reference; the notifier keeps them valid.
    var table = DevicePageTable()
    /// The release has run (notifier removed, table emptied).
    var isClosed = false
    /// `close()` was called: no new command starts; the release runs when the last
    /// command in flight returns (the file reference an ioctl holds).
    private var isClosing = false
    private var commandsInFlight = 0
    /// `dmirror->flags`.
    private let flagBits = Atomic<UInt64>(0)
    private(set) var notifier: MMUIntervalNotifier!

    /// One past the highest user address (`ULONG_MAX & PAGE_MASK` on the model's 47-bit VA).
    static let addressLimit: UInt64 = 1 << 47

    init(device: MirrorDevice, mm: AddressSpace, id: UInt64) throws(MirrorError) {
        self.device = device
        self.mm = mm
        self.id = id
        if let shared = device.reverseMappings { table.trackReverseMappings(in: shared) }
        let ops = MirrorInvalidator()
        do {
            notifier = try mm.notifiers.insert(start: 0, length: Self.addressLimit, ops: ops)
        } catch { throw MirrorError(error) }
        ops.mirror = self
    }

    deinit { close() }

    /// `close()` of the descriptor: later commands throw `.invalidArgument`, and
    /// `dmirror_fops_release` runs — now, or, while commands are in flight, when the last
    /// of them returns (an ioctl holds a reference to the file, so in the kernel the release
    /// cannot overtake it; those commands complete as if the descriptor were open). The
    /// release removes the notifier, empties the page table and evicts every page of the
    /// device (from every mirror and process, as the kernel does since it stopped leaking
    /// them). Idempotent.
    public func close() {
        let releaseNow: Bool = lock.withLock {
            guard !isClosing else { return false }
            isClosing = true
            return commandsInFlight == 0
        }
        if releaseNow { releaseFile() }
    }

    /// `dmirror_fops_release`.
    private func releaseFile() {
        lock.withLock { isClosed = true }
        notifier.remove()
        // Emptied before the eviction (as the kernel's xa_destroy follows the notifier's
        // removal): without its notifier the table would keep entries of evicted pages.
        lock.withLock { table.removeAll() }
        device.evictAll()
        device.forget(id)
    }

    /// Enters a command (the ioctl's `fdget`): `.invalidArgument` once `close()` was called.
    func beginCommand() throws(MirrorError) {
        let entered: Bool = lock.withLock {
            guard !isClosing else { return false }
            commandsInFlight += 1
            return true
        }
        guard entered else { throw .invalidArgument(reason: "the mirror is closed") }
    }

    /// Leaves a command (`fdput`); the last one out of a closed descriptor releases it.
    func endCommand() {
        let release: Bool = lock.withLock {
            commandsInFlight -= 1
            return commandsInFlight == 0 && isClosing && !isClosed
        }
        if release { releaseFile() }
    }

    /// False once `close()` was called.
    public var isOpen: Bool { lock.withLock { !isClosing } }

    /// True once the release has run.
    var isReleased: Bool { lock.withLock { isClosed } }

    /// The mirror's entry for `address`, for tests: nil when missing, else the page it
    /// maps and its tag (`.write` for `DPT_XA_TAG_WRITE`, `.atomic` for `DPT_XA_TAG_ATOMIC`).
    public func entry(at address: UInt64) -> (page: PFN, tag: MirrorEntryTag)? {
        let e = lock.withLock { table.entry(address) }
        guard e.isValid else { return nil }
        return (e.pfn, e.kind == .exclusive ? .atomic : e.isWritable ? .write : .readOnly)
    }

    /// Valid entries in the page table.
    public var mappedPageCount: Int { lock.withLock { table.count } }

    // MARK: Flags

    /// Takes the one-shot allocation failure if it is armed (`dmirror->flags &= ~FAIL_ALLOC`).
    func takeAllocationFailure() -> Bool {
        let old = flagBits.bitwiseAnd(~MirrorFlags.failAllocation.rawValue, ordering: .acquiringAndReleasing).oldValue
        return old & MirrorFlags.failAllocation.rawValue != 0
    }

    func storeFlags(_ flags: MirrorFlags) { flagBits.store(flags.rawValue, ordering: .releasing) }

    /// The current flags.
    public var flags: MirrorFlags { MirrorFlags(rawValue: flagBits.load(ordering: .acquiring)) }

    // MARK: mmu_interval_notifier_ops

    /// `dmirror_interval_invalidate`: drop the entries of the range — through the page
    /// after its end, as the kernel's inclusive xarray walk does — unless this is a
    /// migration started by this device (its own mirrors update themselves).
    func invalidate(_ notifier: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool {
        if range.event == .migrate && range.owner == device.owner { return true }
        let lastPage = range.end >> 12
        let end = lastPage < Self.addressLimit >> 12 ? (lastPage + 1) << 12 : Self.addressLimit
        lock.withLock {
            notifier.setSequence(currentSequence)
            if range.start < end { _ = table.zap(range.start & ~4095, end) }
        }
        return true
    }

    // MARK: Helpers of the commands

    /// The live address space, or the error the command returns when it is gone.
    /// The reason of the `EINVAL` of a command on a mirror whose address space is gone.
    static let addressSpaceGone = "the mirrored address space has exited"

    func liveMM(orElse error: MirrorError) throws(MirrorError) -> AddressSpace {
        guard let mm, !mm.hasExited else { throw error }
        return mm
    }

    /// `dmirror_do_read`: copies the mirrored pages of `[start, end)` into `bounce` (at
    /// their offset from `base`), counting them in `cpages`; false at the first missing
    /// entry. Takes `lock`.
    func doRead(_ start: UInt64, _ end: UInt64, base: UInt64, _ bounce: UnsafeMutableRawPointer, _ cpages: inout Int) -> Bool {
        lock.withLock {
            var a = start
            while a < end {
                let e = table.entry(a)
                guard e.isValid, let page = device.dataPointer(e.pfn) else { return false }
                bounce.advanced(by: Int(a - base)).copyMemory(from: page, byteCount: pageSize)
                cpages += 1
                a += UInt64(pageSize)
            }
            return true
        }
    }

    /// `dmirror_do_write`: like `doRead` the other way, for entries tagged writable only.
    func doWrite(_ start: UInt64, _ end: UInt64, base: UInt64, _ bounce: UnsafeRawPointer, _ cpages: inout Int) -> Bool {
        lock.withLock {
            var a = start
            while a < end {
                let e = table.entry(a)
                guard e.isValid, e.isWritable, e.kind != .exclusive, let page = device.dataPointer(e.pfn) else { return false }
                page.copyMemory(from: bounce.advanced(by: Int(a - base)), byteCount: pageSize)
                cpages += 1
                a += UInt64(pageSize)
            }
            return true
        }
    }
}

/// The notifier callback object of a mirror: holds it weakly, so the address space's
/// notifier list does not keep a mirror alive (nor a closed one in a reference cycle).
/// Threads: any; `mirror` is set once, before any invalidation can reach it.
final class MirrorInvalidator: MMUIntervalNotifierOps, @unchecked Sendable {
    weak var mirror: Mirror?

    func invalidate(_ notifier: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool {
        guard let mirror else {
            notifier.setSequence(currentSequence)
            return true
        }
        return mirror.invalidate(notifier, range: range, currentSequence: currentSequence)
    }
}

/// The tag of a mirror page-table entry (`DPT_XA_TAG_*`).
public enum MirrorEntryTag: Sendable, Equatable {
    /// Tag 0: read-only.
    case readOnly
    /// `DPT_XA_TAG_WRITE` (3): writable.
    case write
    /// `DPT_XA_TAG_ATOMIC` (1): held for device atomics; readable, not writable.
    case atomic
}
