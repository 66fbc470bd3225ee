import Foundation

/// How much memory the machine can still give without swapping: `MemAvailable` of
/// `/proc/meminfo` (the kernel's `si_mem_available()` estimate).
///
/// A populated VRAM pool is shmem the kernel cannot reclaim (memfds have no size limit of
/// their own), so asking for more than this ends in the OOM killer, which may pick any
/// process; pools check it first and throw instead.
public enum SystemMemory {
    /// `MemAvailable` in bytes; nil where `/proc/meminfo` is missing or has no such line.
    public static func available() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        return parseAvailable(text)
    }

    /// The `MemAvailable:   123456 kB` line of meminfo text, in bytes.
    static func parseAvailable(_ text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, let kib = Int(fields[1]), kib >= 0 else { return nil }
            let unit = fields.count >= 3 ? fields[2].lowercased() : "kb"
            guard unit == "kb" else { return nil }
            let (bytes, overflow) = kib.multipliedReportingOverflow(by: 1024)
            return overflow ? Int.max : bytes
        }
        return nil
    }

    /// The part of `available` a single request may take: 90 %, so that what else runs keeps
    /// some room (the estimate also counts page cache that reclaim must first write back).
    public static func usable(of available: Int) -> Int { available / 10 * 9 }
}
