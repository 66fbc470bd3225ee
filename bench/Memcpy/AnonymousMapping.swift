#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A private anonymous mapping (`mmap(MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE)`):
/// memory the OS backs lazily, so a 1 GiB span costs only the pages touched.
///
/// Threads: the owner unmaps it in `deinit`; the bytes may be used from any thread meanwhile.
final class AnonymousMapping {
    let base: UnsafeMutableRawPointer
    let length: Int

    init(length: Int) throws(ScenarioError) {
        guard length > 0 else { throw ScenarioError(scenario: "memcpy", message: "cannot map 0 bytes") }
        var flags = MAP_PRIVATE | MAP_ANONYMOUS
        #if os(Linux)
        flags |= MAP_NORESERVE
        #endif
        let address = mmap(nil, length, PROT_READ | PROT_WRITE, flags, -1, 0)
        guard let address, address != UnsafeMutableRawPointer(bitPattern: -1) else {
            let reason = String(cString: strerror(errno))
            throw ScenarioError(scenario: "memcpy", message: "mmap of \(ByteCount(length)) failed: \(reason)")
        }
        base = address
        self.length = length
    }

    deinit { munmap(base, length) }
}
