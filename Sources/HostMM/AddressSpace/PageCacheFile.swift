#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers

/// A minimal in-memory file: its page cache (`struct address_space` with `i_pages`),
/// used by file-backed mappings and, privately, by shared anonymous mappings (shmem).
///
/// Each cached page holds one reference for the cache, has `page->mapping` set to the
/// file and `page->index` to its page offset. Thread-safe (one lock for the cache).
public final class PageCacheFile: @unchecked Sendable {
    public let memory: PhysicalMemory
    /// File size in pages.
    public let pageCount: Int
    let root: MappingRoot
    let isShmem: Bool
    private let lock = NIOLock()
    private var cache: [Int: PFN] = [:]

    /// Creates an empty (all-zero) file of `pageCount` pages (a negative count makes an
    /// empty file; one whose bytes would not fit an `Int` is cut to the largest that does).
    public convenience init(memory: PhysicalMemory, pageCount: Int) {
        self.init(memory: memory, pageCount: pageCount, shmem: false)
    }

    init(memory: PhysicalMemory, pageCount: Int, shmem: Bool) {
        self.memory = memory
        self.pageCount = min(max(pageCount, 0), Int.max / pageSize)
        self.isShmem = shmem
        root = memory.roots.create(anon: false)
        root.file = self
    }

    deinit {
        for pfn in cache.values {
            memory.setMapping(pfn, 0, index: 0)
            memory.putPage(pfn)
        }
        memory.roots.remove(root)
    }

    /// The cached page at `pgoff`, created zero-filled if missing, with an extra reference
    /// for the caller (`filemap_fault` / `shmem_get_folio`). Nil past EOF or out of memory.
    func getPage(_ pgoff: Int) -> PFN? {
        guard pgoff >= 0, pgoff < pageCount else { return nil }
        return lock.withLock {
            if let pfn = cache[pgoff] {
                memory.getPage(pfn)
                return pfn
            }
            guard let pfn = memory.allocPage(zeroed: true) else { return nil }
            memory.setMapping(pfn, root.mappingWord, index: UInt64(pgoff))
            var f: PageFlags = [.uptodate, .lru]
            if isShmem { f.insert(.swapBacked) }
            memory.setFlags(pfn, f)
            cache[pgoff] = pfn
            memory.getPage(pfn)
            return pfn
        }
    }

    /// The cached page at `pgoff`, if any (no reference taken).
    public func cachedPage(_ pgoff: Int) -> PFN? { lock.withLock { cache[pgoff] } }

    /// Replaces `old` by `new` in the cache if `old` is still there (`__folio_migrate_mapping`'s
    /// xarray store). The cache's reference moves with it.
    func replace(_ pgoff: Int, old: PFN, new: PFN) -> Bool {
        lock.withLock {
            guard cache[pgoff] == old else { return false }
            cache[pgoff] = new
            return true
        }
    }

    /// The EINVAL of a read or write of `count` bytes at `offset` that leaves the file.
    private func outsideFile(_ offset: Int, _ count: Int) -> HostMMError {
        .invalidArgument(reason: offset < 0 ? "negative offset \(offset)" : count < 0 ? "negative count \(count)"
                         : "\(count) bytes at offset \(offset) leave the file's \(pageCount * pageSize) bytes")
    }

    /// Writes into the file through its page cache (`write(2)`).
    /// - Throws: `.invalidArgument` for a range outside the file (or past `Int.max`).
    public func write(offset: Int, _ bytes: [UInt8]) throws(HostMMError) {
        guard offset >= 0, offset <= pageCount * pageSize, bytes.count <= pageCount * pageSize - offset else {
            throw outsideFile(offset, bytes.count)
        }
        var done = 0
        while done < bytes.count {
            let at = offset + done
            guard let pfn = getPage(at / pageSize), let dst = memory.bytes(pfn) else { throw .outOfMemory }
            let n = min(pageSize - at % pageSize, bytes.count - done)
            bytes.withUnsafeBytes { _ = memcpy(dst + at % pageSize, $0.baseAddress! + done, n) }
            memory.setFlags(pfn, .dirty)
            memory.putPage(pfn)
            done += n
        }
    }

    /// Reads from the file through its page cache (`read(2)`); holes read as zeros.
    /// - Throws: `.invalidArgument` for a range outside the file (or past `Int.max`).
    public func read(offset: Int, count: Int) throws(HostMMError) -> [UInt8] {
        guard offset >= 0, count >= 0, offset <= pageCount * pageSize, count <= pageCount * pageSize - offset else {
            throw outsideFile(offset, count)
        }
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let at = offset + done
            let n = min(pageSize - at % pageSize, count - done)
            if let pfn = cachedPage(at / pageSize), let src = memory.bytes(pfn) {
                out.withUnsafeMutableBytes { _ = memcpy($0.baseAddress! + done, src + at % pageSize, n) }
            }
            done += n
        }
        return out
    }
}
