import Glibc

/// The CPU's copy of one descriptor through the regions' mappings.
enum MemoryCopy {
    /// Performs at most `limit` bytes of `d`; returns the bytes done.
    @inline(__always) @discardableResult
    static func perform(_ d: CopyDescriptor, limit: Int = .max) -> Int {
        let n = min(d.length, limit)
        guard n > 0 else { return 0 }
        switch d.operation {
        case .copy: memcpy(d.destination.pointer, d.source.pointer, n)
        case .fill: memset(d.destination.pointer, Int32(d.fillValue), n)
        }
        return n
    }

    /// Performs bytes `start ..< start + bytes` of `d` (a piece of it).
    @inline(__always)
    static func perform(_ d: CopyDescriptor, from start: Int, bytes: Int) {
        let n = min(bytes, d.length - start)
        guard start >= 0, n > 0 else { return }
        switch d.operation {
        case .copy: memcpy(d.destination.pointer + start, d.source.pointer + start, n)
        case .fill: memset(d.destination.pointer + start, Int32(d.fillValue), n)
        }
    }
}

/// Copies with `memcpy` on the submitting thread; every fence is signalled when `submit()` returns.
///
/// The reference implementation the others are checked against, and the
/// fallback when io_uring cannot be set up (`--backend memcpy`).
/// Threads: stateless; see `CopyBackend`.
final class MemcpyBackend: CopyBackend {
    var name: String { "memcpy" }

    func execute(_ batch: CopyBatch) -> Int {
        for i in batch.indices {
            MemoryCopy.perform(batch[i])
        }
        batch.complete(batch.indices)
        return 0
    }

    func shutdown(cancelInFlight: Bool) {}
}
