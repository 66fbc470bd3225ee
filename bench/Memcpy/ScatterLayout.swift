import DMAEngine

/// Where the pages of a run live: `count` distinct page slots picked at random
/// (seeded) from a span, the way a migration sees the frames of a process scattered
/// over System RAM, plus the data pattern that proves every byte arrived.
///
/// Threads: immutable value; any thread.
struct ScatterLayout: Sendable {
    let pageSize: Int
    /// Byte offset of page `i` inside the span.
    let offsets: [Int]

    /// Picks `count` of the `spanBytes / pageSize` slots (partial Fisher–Yates, SplitMix64 seeded).
    init(pageSize: Int, count: Int, spanBytes: Int, seed: UInt64) {
        self.pageSize = pageSize
        let slots = spanBytes / pageSize
        var order = Array(0..<slots)
        var random = SplitMix64(seed: seed)
        for i in 0..<min(count, slots) {
            let j = i + Int(random.next() % UInt64(slots - i))
            order.swapAt(i, j)
        }
        offsets = order.prefix(count).map { $0 * pageSize }
    }

    var count: Int { offsets.count }

    /// The 8-byte word `word` of page `page`: unique per page and offset, never zero.
    @inline(__always)
    static func patternWord(page: Int, word: Int, seed: UInt64) -> UInt64 {
        let mix = (seed &* 0x9E37_79B9_7F4A_7C15) & 0x7FFF_FFFF_FFFF_FFFF
        let tag = (UInt64(1) << 63) | (UInt64(truncatingIfNeeded: page) & 0x7FFF_FFFF) << 32
            | (UInt64(truncatingIfNeeded: word) & 0xFFFF_FFFF)
        return tag ^ mix
    }

    /// Fills one page with its pattern.
    static func fill(_ page: UnsafeMutableRawPointer, pageIndex: Int, pageSize: Int, seed: UInt64) {
        let words = page.bindMemory(to: UInt64.self, capacity: pageSize / 8)
        for w in 0..<pageSize / 8 { words[w] = patternWord(page: pageIndex, word: w, seed: seed) }
    }

    /// The index of the first wrong word of one page, or nil when it holds its pattern.
    static func firstMismatch(_ page: UnsafeRawPointer, pageIndex: Int, pageSize: Int, seed: UInt64) -> Int? {
        let words = page.bindMemory(to: UInt64.self, capacity: pageSize / 8)
        for w in 0..<pageSize / 8 where words[w] != patternWord(page: pageIndex, word: w, seed: seed) {
            return w
        }
        return nil
    }
}
