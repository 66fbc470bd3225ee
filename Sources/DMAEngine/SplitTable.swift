import NIOConcurrencyHelpers
import SystemPackage

/// Book-keeping for descriptors cut into pieces: a descriptor whose file side
/// crosses a stripe unit of a striped pool is issued as one ring operation per
/// unit, and reported once, when its last piece finished.
///
/// Pieces run in parallel and may finish in any order, so a failure is reported
/// as the prefix before the *earliest* failed piece (every byte before it was
/// copied: those pieces succeeded), with that piece's errno — the same
/// "bytes known to be done" contract as a short vectored operation.
///
/// Entries are recycled; at most one entry per slot in flight plus the one being
/// issued is open, so the table sized `queueDepth + 1` never grows in practice
/// (it would grow rather than fail).
///
/// Threads: opened by the submitter, finished by the reaper or the submitter; internally locked.
final class SplitTable: @unchecked Sendable {
    private struct Entry {
        var remaining = 0
        /// Start of the earliest failed piece plus the bytes it did, or nil.
        var failedAt: Int? = nil
        var errno = Errno.ioError
    }

    /// What finishing a piece decided for its descriptor.
    enum Outcome: Equatable {
        /// Pieces are still outstanding.
        case pending
        case completed
        /// Failed with `errno` after `bytesCompleted` bytes (a prefix).
        case failed(Errno, bytesCompleted: Int)
    }

    private let lock = NIOLock()
    private var entries: [Entry]
    private var free: [Int]

    init(capacity: Int) {
        entries = Array(repeating: Entry(), count: capacity)
        free = Array((0..<capacity).reversed())
    }

    /// Opens an entry for a descriptor of `pieces` pieces.
    func open(pieces: Int) -> Int {
        lock.withLock {
            let index: Int
            if let reused = free.popLast() {
                index = reused
            } else {
                entries.append(Entry())
                index = entries.count - 1
            }
            entries[index] = Entry(remaining: pieces)
            return index
        }
    }

    /// Records one finished piece: it started `pieceOffset` bytes into the descriptor,
    /// was `bytes` long and did `done` of them (`errno` says why if short).
    func finish(_ index: Int, pieceOffset: Int, bytes: Int, done: Int, errno: Errno) -> Outcome {
        lock.withLock {
            var e = entries[index]
            if done < bytes, e.failedAt.map({ pieceOffset + done < $0 }) ?? true {
                e.failedAt = pieceOffset + done
                e.errno = errno
            }
            e.remaining -= 1
            entries[index] = e
            guard e.remaining == 0 else { return .pending }
            free.append(index)
            return e.failedAt.map { .failed(e.errno, bytesCompleted: $0) } ?? .completed
        }
    }
}
