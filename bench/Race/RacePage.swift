import HostMM

/// The shadow model of one page in a race-matrix cell: the content the flow and the racing
/// action imply — one of the process's contents (`Base`) with its first 64-bit word raised
/// by the GPU fetch-adds of 1 that reached it (`adds`).
///
/// Threads: a value; any thread.
struct RacePage: Hashable, Sendable, CustomStringConvertible {
    enum Base: Hashable, Sendable {
        /// The process's pattern (what every page starts with).
        case pattern
        /// The racing store's marker page (a CPU or GPU store of it).
        case marker
        /// Zeros: anonymous memory after `MADV_DONTNEED`, or never touched (a hole).
        case zeros
        /// No mapping: a CPU access is SIGSEGV (SEGV_MAPERR).
        case unmapped
    }

    var base: Base
    /// GPU fetch-adds of 1 applied to the first word since `base` was written.
    var adds: UInt64 = 0

    static let pattern = RacePage(base: .pattern)
    static let marker = RacePage(base: .marker)
    static let zeros = RacePage(base: .zeros)
    static let unmapped = RacePage(base: .unmapped)
    /// The pattern with its first word incremented (a GPU fetch-add of 1).
    static let incremented = RacePage(base: .pattern, adds: 1)

    /// The 4 KiB page `page` must hold (nil: unmapped).
    func bytes(page: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: pageSize)
        switch base {
        case .unmapped: return nil
        case .zeros: break
        case .marker:
            out.withUnsafeMutableBytes { TorturePattern.fill($0.baseAddress!, key: TorturePattern.key(worker: 1, generation: 0, page: page, version: 1)) }
        case .pattern:
            out.withUnsafeMutableBytes { TorturePattern.fill($0.baseAddress!, key: TorturePattern.key(worker: 0, generation: 0, page: page, version: 1)) }
        }
        if adds > 0 {
            out.withUnsafeMutableBytes { $0.storeBytes(of: $0.load(as: UInt64.self) &+ adds, as: UInt64.self) }
        }
        return out
    }

    /// The page's first word (what a fetch-add there returns).
    func firstWord(_ page: Int) -> UInt64 {
        (bytes(page: page) ?? [UInt8](repeating: 0, count: 8)).withUnsafeBytes { $0.load(as: UInt64.self) }
    }

    /// The page after a GPU fetch-add of 1 to its first word (an unmapped page stays so:
    /// the access faults).
    var incremented: RacePage { base == .unmapped ? self : RacePage(base: base, adds: adds + 1) }

    /// The page after a store of the whole marker page (an unmapped page stays so).
    var overwrittenByMarker: RacePage { base == .unmapped ? self : .marker }

    /// Every content a cell can leave a page in (to name what a wrong page holds instead).
    static let known: [RacePage] = [Base.pattern, .marker, .zeros].flatMap { b in (0...2).map { RacePage(base: b, adds: $0) } }

    var description: String {
        let name: String
        switch base {
        case .pattern: name = "the pattern"
        case .marker: name = "the marker"
        case .zeros: name = "zeros"
        case .unmapped: return "unmapped"
        }
        return adds == 0 ? name : "\(name) + \(adds)"
    }
}
