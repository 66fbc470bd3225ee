#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers

/// Hands out System-RAM frames: a bump pointer over never-used frames plus a LIFO free
/// stack of returned ones (the buddy allocator's order-0 behaviour, without orders).
///
/// Thread-safe (one `NIOLock`); batch calls amortise the lock for the migration paths.
final class FrameAllocator: @unchecked Sendable {
    private let lock = NIOLock()
    private let firstPFN: UInt32
    private let endPFN: UInt32
    /// Next never-allocated frame.
    private var bump: UInt32
    /// Returned frames, most recent last (reserved lazily with `MAP_NORESERVE`).
    private let stack: UnsafeMutablePointer<UInt32>
    private var stackCount = 0
    private let stackBytes: Int

    init(firstPFN: UInt32, endPFN: UInt32) throws(HostMMError) {
        self.firstPFN = firstPFN
        self.endPFN = endPFN
        self.bump = firstPFN
        stackBytes = max(pageSize, Int(endPFN) * 4)
        guard let raw = mmap(nil, stackBytes, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              raw != MAP_FAILED else { throw .outOfMemory }
        stack = raw.bindMemory(to: UInt32.self, capacity: Int(endPFN))
    }

    deinit { munmap(stack, stackBytes) }

    /// Number of frames that can still be allocated.
    var freeCount: Int { lock.withLock { stackCount + Int(endPFN - bump) } }

    func allocate() -> UInt32? {
        lock.withLock {
            if stackCount > 0 {
                stackCount -= 1
                return stack[stackCount]
            }
            guard bump < endPFN else { return nil }
            defer { bump += 1 }
            return bump
        }
    }

    /// Fills `out` with up to `out.count` frames; returns how many were allocated.
    func allocate(into out: UnsafeMutableBufferPointer<UInt32>) -> Int {
        lock.withLock {
            var n = 0
            while n < out.count, stackCount > 0 {
                stackCount -= 1
                out[n] = stack[stackCount]
                n += 1
            }
            while n < out.count, bump < endPFN {
                out[n] = bump
                bump += 1
                n += 1
            }
            return n
        }
    }

    func free(_ pfn: UInt32) {
        lock.withLock {
            stack[stackCount] = pfn
            stackCount += 1
        }
    }

    func free(_ pfns: UnsafeBufferPointer<UInt32>) {
        guard !pfns.isEmpty else { return }
        lock.withLock {
            for pfn in pfns {
                stack[stackCount] = pfn
                stackCount += 1
            }
        }
    }
}
