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
        /// Destination pages claimed at its pages step, and its id in the claim table
        /// (0 until its first claim; guarded by the sessions' lock).
        var destinations: [PFN] = []
        var claimID: UInt32 = 0
        /// The `dst` entries its pages step accepted (entry index, entry), kept until it is
        /// finalized: what recording mode finalizes it with when a new setup on the PFN path
        /// (whose setup has no `dst` array) abandons it.
        var pagesStepDestinations: [(index: Int32, entry: MigratePFN)] = []

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
    private let lock = NIOLock()
    /// Migrations in progress that collected pages (a handful: one per migrating thread
    /// and pipeline slot), by `base`.
    private var live: [UInt: Session] = [:]
    /// Finished sessions (finalized, or setups that collected nothing), by `base`; the
    /// oldest are forgotten past `historyCapacity`.
    private var history: [UInt: Session] = [:]
    private var historyOrder: [Session] = []
    private var historyNext = 0
    /// PFNs the claim table covers (the memory's `pfnLimit`).
    private let pfnLimit: UInt64
    /// The destination pages of migrations in progress: the claiming session's `claimID`
    /// per PFN (0: none). Allocated at the first claim.
    private var claimTable: UnsafeMutablePointer<UInt32>?
    /// Sessions holding claims, by `claimID`.
    private var claimants: [UInt32: Session] = [:]
    private var nextClaimID: UInt32 = 0

    init(pfnLimit: UInt64 = 0) { self.pfnLimit = pfnLimit }

    deinit { claimTable?.deallocate() }

    /// Sessions overlapping `[base, end)`: those in progress (sorted by base) and — only
    /// when none is, the error path — finished ones still remembered.
    func find(_ base: UInt, _ end: UInt, finished wanted: Bool = true) -> (live: [Session], finished: [Session]) {
        lock.withLock {
            var l: [Session] = []
            if let s = live[base] {
                l.append(s)
                if s.end >= end { return (l, []) }   // the address path: one exact session
            }
            for s in live.values where s !== l.first && s.base < end && base < s.end { l.append(s) }
            guard l.isEmpty, wanted else { return (l.sorted { $0.base < $1.base }, []) }
            return ([], history.values.filter { $0.base < end && base < $0.end })
        }
    }

    /// Opens `session`; returns the sessions in progress it replaces (their arrays are
    /// reused). A setup that collected nothing is finished at once: nothing is locked.
    func open(_ session: Session) -> [Session] {
        lock.withLock {
            let replaced = live.values.filter { $0.base < session.end && session.base < $0.end }
            for s in replaced {
                live[s.base] = nil
                dropClaims(s)
            }
            history[session.base] = nil
            if session.collected > 0 {
                live[session.base] = session
            } else {
                remember(session)
            }
            return replaced
        }
    }

    /// Appends to the bounded history (the lock is held).
    private func remember(_ s: Session) {
        history[s.base] = s
        if historyOrder.count < Self.historyCapacity {
            historyOrder.append(s)
            return
        }
        let old = historyOrder[historyNext]
        if history[old.base] === old { history[old.base] = nil }
        historyOrder[historyNext] = s
        historyNext = (historyNext + 1) % Self.historyCapacity
    }

    /// Moves `sessions` from in progress to the history.
    func close(_ sessions: [Session]) {
        lock.withLock {
            for s in sessions {
                s.phase = .finalized
                dropClaims(s)
                s.pagesStepDestinations = []
                guard live[s.base] === s else { continue }
                live[s.base] = nil
                remember(s)
            }
        }
    }

    /// Records each page as a destination of its session. Returns the entries whose page
    /// is already a destination of another migration in progress (those are not recorded).
    func claimDestinations(_ pages: [(index: Int, page: PFN, session: Session)]) -> [(index: Int, other: Session)] {
        guard !pages.isEmpty else { return [] }
        return lock.withLock {
            guard pfnLimit > 0 else { return [] }
            let table = claimTable ?? {
                let t = UnsafeMutablePointer<UInt32>.allocate(capacity: Int(pfnLimit))
                t.initialize(repeating: 0, count: Int(pfnLimit))
                claimTable = t
                return t
            }()
            var taken: [(index: Int, other: Session)] = []
            for (index, page, session) in pages where page.rawValue < pfnLimit {
                let slot = Int(page.rawValue)
                if session.claimID == 0 {
                    nextClaimID = nextClaimID == .max ? 1 : nextClaimID + 1
                    session.claimID = nextClaimID
                    claimants[nextClaimID] = session
                }
                let holder = table[slot]
                if holder != 0, holder != session.claimID, let other = claimants[holder], live[other.base] === other {
                    taken.append((index, other))
                    continue
                }
                table[slot] = session.claimID
                session.destinations.append(page)
            }
            return taken
        }
    }

    /// Forgets the destinations `sessions` claimed (their pages step was refused).
    func releaseDestinations(_ sessions: [Session]) {
        lock.withLock { for s in sessions { dropClaims(s) } }
    }

    /// Drops `s`'s claims (the lock is held).
    private func dropClaims(_ s: Session) {
        guard s.claimID != 0 else { return }
        if let table = claimTable {
            for page in s.destinations where table[Int(page.rawValue)] == s.claimID { table[Int(page.rawValue)] = 0 }
        }
        claimants[s.claimID] = nil
        s.claimID = 0
        s.destinations = []
    }

    /// Destinations recording mode finalized when it finished an abandoned migration on the
    /// PFN path, by the address of the `src` array the new setup got (index into it, page):
    /// the driver's `dst` array still names them.
    private var recovered: [UInt: [(index: Int, page: PFN)]] = [:]

    /// Records the destinations `finishAbandoned` finalized for arrays at `base` (or, after
    /// the pages step judged them, those still to be judged by finalize).
    func noteRecovered(_ base: UInt, _ pages: [(index: Int, page: PFN)]) {
        lock.withLock { recovered[base] = pages.isEmpty ? nil : pages }
    }

    /// The destinations recorded for arrays at `base`; `take` forgets them (their finalize).
    func recovered(_ base: UInt, take: Bool) -> [(index: Int, page: PFN)] {
        lock.withLock { take ? recovered.removeValue(forKey: base) ?? [] : recovered[base] ?? [] }
    }

    /// Records what `s`'s pages step accepted as destinations.
    func setPagesStepDestinations(_ s: Session, _ entries: [(index: Int32, entry: MigratePFN)]) {
        lock.withLock { s.pagesStepDestinations = entries }
    }

    /// Sets the phase of `sessions` under the lock.
    func mark(_ sessions: [Session], _ phase: Phase) {
        lock.withLock { for s in sessions { s.phase = phase } }
    }

    /// Migrations set up and not finalized (that collected pages): leaks if the driver is done.
    var unfinished: [Session] {
        lock.withLock { live.values.filter { $0.phase != .finalized } }
    }
}

/// A checksum of a page's 4 KiB: four independent lanes of `(h ^ word) * odd`, each
/// step a bijection of the lane state, so a change to any one word always changes the
/// sum; the lanes let the CPU overlap the multiplies (checked mode hashes every source
/// page up to three times).
@inline(__always)
func pageChecksum(_ bytes: UnsafeRawPointer) -> UInt64 {
    var a: UInt64 = 0xCBF2_9CE4_8422_2325, b: UInt64 = 0x8422_2325_CBF2_9CE4
    var c: UInt64 = 0x9E37_79B9_7F4A_7C15, d: UInt64 = 0x7F4A_7C15_9E37_79B9
    var i = 0
    while i < pageSize {
        a = (a ^ bytes.load(fromByteOffset: i, as: UInt64.self)) &* 0x0000_0100_0000_01B3
        b = (b ^ bytes.load(fromByteOffset: i &+ 8, as: UInt64.self)) &* 0xBF58_476D_1CE4_E5B9
        c = (c ^ bytes.load(fromByteOffset: i &+ 16, as: UInt64.self)) &* 0x94D0_49BB_1331_11EB
        d = (d ^ bytes.load(fromByteOffset: i &+ 24, as: UInt64.self)) &* 0x9E37_79B9_7F4A_7C15
        i &+= 32
    }
    return a ^ (b << 17 | b >> 47) ^ (c << 31 | c >> 33) ^ (d << 47 | d >> 17)
}
