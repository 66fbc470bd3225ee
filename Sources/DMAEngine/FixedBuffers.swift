import Glibc
import NIOConcurrencyHelpers

/// One piece of registered host memory in io_uring's fixed-buffer table
/// (`io_uring_register_buffers`): at most `FixedBufferRegistry.maxPieceBytes`,
/// at slot `slot` of every io_uring channel's table.
public struct FixedBufferPiece: Sendable, Equatable {
    public var region: RegionID
    public var base: UInt
    public var length: Int
    public var slot: Int

    var iovec: iovec { Glibc.iovec(iov_base: UnsafeMutableRawPointer(bitPattern: base), iov_len: length) }
    func contains(_ low: UInt, _ high: UInt) -> Bool { low >= base && high <= base + UInt(length) }
}

/// The engine's fixed-buffer slots: which host regions occupy which slots
/// (`IORING_REGISTER_BUFFERS2` sparse table plus `IORING_REGISTER_BUFFERS_UPDATE`).
///
/// A host region is split into pieces of at most 1 GiB (the kernel's limit per
/// buffer); each piece takes one slot, the same in every channel's ring, so that
/// channels created later install the same table.
///
/// Threads: any; every method takes the lock.
final class FixedBufferRegistry: @unchecked Sendable {
    /// Slots in each ring's sparse table.
    static let capacity = 1024
    /// The kernel refuses a fixed buffer larger than 1 GiB.
    static let maxPieceBytes = 1 << 30

    private let lock = NIOLock()
    private let pieceBytes: Int
    private var free: [Int]  // guarded by lock
    private var pieces: [FixedBufferPiece] = []  // guarded by lock

    init(pieceBytes: Int = FixedBufferRegistry.maxPieceBytes) {
        self.pieceBytes = pieceBytes
        free = Array((0..<Self.capacity).reversed())
    }

    /// Every piece now registered (what a new channel installs).
    var all: [FixedBufferPiece] { lock.withLock { pieces } }

    /// Takes slots for `length` bytes at `base`; nil (nothing taken) if too few slots are free.
    func add(_ region: RegionID, base: UnsafeMutableRawPointer, length: Int) -> [FixedBufferPiece]? {
        let count = (length - 1) / pieceBytes + 1
        return lock.withLock { () -> [FixedBufferPiece]? in
            guard free.count >= count else { return nil }
            var made: [FixedBufferPiece] = []
            for k in 0..<count {
                let start = k * pieceBytes
                made.append(FixedBufferPiece(region: region, base: UInt(bitPattern: base) + UInt(start),
                                             length: min(pieceBytes, length - start), slot: free.removeLast()))
            }
            pieces += made
            return made
        }
    }

    /// Releases the slots of `region`; returns them (to be cleared in every ring).
    func remove(_ region: RegionID) -> [Int] {
        lock.withLock {
            let slots = pieces.filter { $0.region == region }.map(\.slot)
            pieces.removeAll { $0.region == region }
            free += slots
            return slots
        }
    }
}

/// One ring's view of the fixed buffers it holds, to find the slot an operation's
/// memory lies in. Sorted by base; read once per operation by the submitter.
///
/// Threads: any; the lock guards `pieces`.
final class FixedBufferTable: @unchecked Sendable {
    private let lock = NIOLock()
    private var pieces: [FixedBufferPiece] = []  // guarded by lock

    func insert(_ piece: FixedBufferPiece) {
        lock.withLock {
            pieces.append(piece)
            pieces.sort { $0.base < $1.base }
        }
    }

    /// Forgets the pieces at `slots`; returns the slots this table held.
    func remove(slots: [Int]) -> [Int] {
        lock.withLock {
            let held = pieces.filter { slots.contains($0.slot) }.map(\.slot)
            pieces.removeAll { slots.contains($0.slot) }
            return held
        }
    }

    /// The slot of the piece holding all of `[low, high)`, or nil.
    func slot(containing low: UInt, _ high: UInt) -> Int? {
        lock.withLock {
            var lo = 0, hi = pieces.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if pieces[mid].base + UInt(pieces[mid].length) <= low { lo = mid + 1 } else { hi = mid }
            }
            return lo < pieces.count && pieces[lo].contains(low, high) ? pieces[lo].slot : nil
        }
    }
}
