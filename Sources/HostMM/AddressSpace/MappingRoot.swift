import NIOConcurrencyHelpers

/// The reverse-mapping root of a set of VMAs that may map the same pages: an
/// anonymous VMA family (`struct anon_vma` with its chain, flattened: a forked child's
/// VMAs join their parent's root) or a file's `i_mmap` tree (`struct address_space`).
///
/// `page->mapping` names a root by id; walking the root's VMAs and computing each
/// one's address from `page->index` finds every page-table entry that may map the
/// page (`rmap_walk`). `vmas` and the range fields of its VMAs change only with `lock`
/// held (plus the owning mmap lock in write mode), so a walker holding `lock` sees
/// stable VMAs. Lock order: page lock → root lock → page-table lock.
final class MappingRoot: @unchecked Sendable {
    let id: UInt64
    let isAnon: Bool
    let lock = NIOLock()
    /// VMAs linked to this root; guarded by `lock`.
    var vmas: [VMA] = []
    /// The file whose page cache this root describes (nil for anonymous roots).
    weak var file: PageCacheFile?

    init(id: UInt64, isAnon: Bool) {
        self.id = id
        self.isAnon = isAnon
    }

    /// The `page->mapping` word for pages of this root.
    var mappingWord: UInt64 { isAnon ? PageMapping.anon(id) : PageMapping.file(id) }

    func link(_ vma: VMA) { lock.withLock { vmas.append(vma) } }

    /// Unlinks `vma`; returns true when no VMA is left.
    func unlink(_ vma: VMA) -> Bool {
        lock.withLock {
            vmas.removeAll { $0 === vma }
            return vmas.isEmpty
        }
    }
}

/// Id → root table behind `page->mapping`. Anonymous roots leave it when their last
/// VMA goes (pages still naming them then have no mapping to find); file roots leave
/// it with their file. Thread-safe.
final class MappingRootRegistry: @unchecked Sendable {
    private let lock = NIOLock()
    private var roots: [UInt64: MappingRoot] = [:]
    private var nextID: UInt64 = 1

    func create(anon: Bool) -> MappingRoot {
        lock.withLock {
            let root = MappingRoot(id: nextID, isAnon: anon)
            nextID += 1
            roots[root.id] = root
            return root
        }
    }

    func lookup(_ mappingWord: UInt64) -> MappingRoot? {
        guard mappingWord != 0 else { return nil }
        return lock.withLock { roots[PageMapping.rootID(mappingWord)] }
    }

    func remove(_ root: MappingRoot) { _ = lock.withLock { roots.removeValue(forKey: root.id) } }
}
