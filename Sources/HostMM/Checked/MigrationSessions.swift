import NIOConcurrencyHelpers

/// Checked mode's record of each migration between setup and finalize, so that the pages
/// step and finalize can be checked for order, arrays and source contents.
///
/// A migration is identified by the address of its `src` array, as the kernel's
/// `struct migrate_vma` is by the driver's arrays: setup (`migrate_vma_setup`, or
/// `migrate_device_range` on a slice) opens a session over `[src, src + npages)`; the
/// pages step and finalize find every session their arrays overlap (eviction collects
/// several PFN runs into slices of one array and finishes them together). Finalized
/// sessions stay in a short history, so a second finalize or a late pages step is told
/// apart from one on arrays nobody set up.
///
/// Threads: any; one lock. Sessions are mutated under it only.
final class MigrationSessions: @unchecked Sendable {
    enum Phase: Sendable { case setUp, pagesDone, finalized }

    /// One migration's record.
    final class Session: @unchecked Sendable {
        /// Address of its first `src` entry, and one past its last.
        let base: UInt
        let end: UInt
        /// Entries setup filled (`npages`).
        let count: Int
        /// Entries setup left migrating (`cpages`): 0 means nothing is locked.
        let collected: Int
        /// Virtual address of entry 0 (nil on the PFN path).
        let start: UInt64?
        let site: CallSite
        var phase: Phase = .setUp
        /// Source pages with CPU-visible bytes and their checksum at setup (entry index, pfn, sum).
        var checksums: [(index: Int32, pfn: PFN, sum: UInt64)] = []

        init(base: UInt, count: Int, collected: Int, start: UInt64?, site: CallSite) {
            self.base = base
            self.end = base + UInt(count * MemoryLayout<MigratePFN>.stride)
            self.count = count
            self.collected = collected
            self.start = start
            self.site = site
        }

        /// The index in an array starting at `arrayBase` of this session's entry 0.
        func offset(in arrayBase: UInt) -> Int { Int(bitPattern: base &- arrayBase) / MemoryLayout<MigratePFN>.stride }
    }

    private static let historyCapacity = 1024
    private static let liveLimit = 4096
    private let lock = NIOLock()
    private var live: [UInt: Session] = [:]
    private var history: [Session] = []
    private var historyNext = 0

    /// Sessions overlapping `[base, end)`: those in progress and finalized ones still remembered.
    func find(_ base: UInt, _ end: UInt) -> (live: [Session], finished: [Session]) {
        lock.withLock {
            let l = live.values.filter { $0.base < end && base < $0.end }.sorted { $0.base < $1.base }
            let f = history.filter { $0.base < end && base < $0.end }
            return (l, f)
        }
    }

    /// Opens `session`; returns the sessions in progress it replaces (their arrays are reused).
    func open(_ session: Session) -> [Session] {
        lock.withLock {
            let replaced = live.values.filter { $0.base < session.end && session.base < $0.end }
            for s in replaced { live[s.base] = nil }
            history.removeAll { $0.base < session.end && session.base < $0.end }
            historyNext = min(historyNext, history.count)
            if live.count >= Self.liveLimit {
                // Setups that collected nothing need no finalize; drivers often skip it.
                for (key, s) in live where s.collected == 0 {
                    live[key] = nil
                    remember(s)
                }
            }
            live[session.base] = session
            return replaced
        }
    }

    /// Appends to the bounded history (the lock is held).
    private func remember(_ s: Session) {
        if history.count < Self.historyCapacity {
            history.append(s)
        } else {
            history[historyNext] = s
            historyNext = (historyNext + 1) % Self.historyCapacity
        }
    }

    /// Moves `sessions` from in progress to the history.
    func close(_ sessions: [Session]) {
        lock.withLock {
            for s in sessions {
                s.phase = .finalized
                guard live[s.base] === s else { continue }
                live[s.base] = nil
                remember(s)
            }
        }
    }

    /// Sets the phase of `sessions` under the lock.
    func mark(_ sessions: [Session], _ phase: Phase) {
        lock.withLock { for s in sessions { s.phase = phase } }
    }

    /// Migrations set up and not finalized (that collected pages): leaks if the driver is done.
    var unfinished: [Session] {
        lock.withLock { live.values.filter { $0.collected > 0 && $0.phase != .finalized } }
    }
}

/// A checksum of a page's 4 KiB (FNV-style over 64-bit words): equal contents give
/// equal sums; any changed word almost surely changes it.
@inline(__always)
func pageChecksum(_ bytes: UnsafeRawPointer) -> UInt64 {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for i in 0..<(pageSize / 8) {
        h = (h ^ bytes.load(fromByteOffset: i &* 8, as: UInt64.self)) &* 0x0000_0100_0000_01B3
        h ^= h >> 29
    }
    return h
}
