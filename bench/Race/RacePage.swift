import HostMM

/// The shadow model of one page in a race-matrix cell: the content the flow and the racing
/// action imply. The flows only move pages; the actions are the only writers.
///
/// Threads: a value; any thread.
enum RacePage: Equatable, Sendable, CustomStringConvertible {
    /// The process's pattern (what every page starts with).
    case pattern
    /// The racing store's marker page.
    case marker
    /// The pattern with its first 64-bit word incremented (a GPU fetch-add of 1).
    case incremented
    /// Zeros: anonymous memory after `MADV_DONTNEED`, or never touched (a hole).
    case zeros
    /// Zeros with the first 64-bit word 1 (a GPU fetch-add of 1 to a hole).
    case zerosIncremented
    /// No mapping: a CPU access is SIGSEGV (SEGV_MAPERR).
    case unmapped

    /// The 4 KiB page `page` must hold (nil: unmapped).
    func bytes(page: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: pageSize)
        let key: UInt64
        switch self {
        case .unmapped: return nil
        case .zeros: return out
        case .zerosIncremented:
            out.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(1), as: UInt64.self) }
            return out
        case .marker: key = TorturePattern.key(worker: 1, generation: 0, page: page, version: 1)
        case .pattern, .incremented: key = TorturePattern.key(worker: 0, generation: 0, page: page, version: 1)
        }
        out.withUnsafeMutableBytes { TorturePattern.fill($0.baseAddress!, key: key) }
        if self == .incremented { out.withUnsafeMutableBytes { $0.storeBytes(of: RacePage.pattern.firstWord(page) &+ 1, as: UInt64.self) } }
        return out
    }

    /// The page's first word (what a fetch-add there returns).
    func firstWord(_ page: Int) -> UInt64 {
        (bytes(page: page) ?? [UInt8](repeating: 0, count: 8)).withUnsafeBytes { $0.load(as: UInt64.self) }
    }

    /// The page after a GPU fetch-add of 1 to its first word.
    var incremented: RacePage { self == .zeros ? .zerosIncremented : .incremented }

    var description: String {
        switch self {
        case .pattern: return "the pattern"
        case .marker: return "the marker"
        case .incremented: return "the pattern + 1"
        case .zeros: return "zeros"
        case .zerosIncremented: return "zeros + 1"
        case .unmapped: return "unmapped"
        }
    }
}
