/// The content every page of a torture run must have: a pure function of who owns the
/// page, which mapping of it this is, the page and how many times it was written — so
/// the shadow model is a version number per page, and a stale, misplaced or torn page
/// cannot match.
///
/// Version 0 is a page nobody wrote since it was mapped (or since `MADV_DONTNEED`):
/// zeros, as anonymous memory reads.
///
/// Threads: pure functions; any thread.
enum TorturePattern {
    /// Identifies (worker, region generation, page, version); never 0 for a version ≥ 1.
    static func key(worker: Int, generation: UInt32, page: Int, version: UInt32) -> UInt64 {
        guard version > 0 else { return 0 }
        return mix(UInt64(worker) << 48 ^ UInt64(generation) << 32 ^ UInt64(page) << 20 ^ UInt64(version)) | 1
    }

    /// Writes the 4 KiB of `key` to `out`.
    static func fill(_ out: UnsafeMutableRawPointer, key: UInt64) {
        for i in 0..<512 { out.storeBytes(of: word(key, i), toByteOffset: i * 8, as: UInt64.self) }
    }

    /// True when the 4 KiB at `bytes` are those of `key`.
    static func matches(_ bytes: UnsafeRawPointer, key: UInt64) -> Bool {
        for i in 0..<512 where bytes.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self) != word(key, i) {
            return false
        }
        return true
    }

    @inline(__always)
    private static func word(_ key: UInt64, _ i: Int) -> UInt64 { key == 0 ? 0 : mix(key &+ UInt64(i)) }

    /// SplitMix64's finalizer.
    @inline(__always)
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A small seedable generator for the workers' choices (SplitMix64).
struct TortureRandom: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return TorturePattern.mix(state)
    }
}
