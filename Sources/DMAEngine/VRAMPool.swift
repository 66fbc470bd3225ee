import CUring
import Glibc
public import SystemPackage

/// A pool of emulated device memory: one or more memfds (see `Layout`), plus one
/// contiguous shared CPU mapping of all of them.
///
/// The copy engine reaches the pool through its files (`pwritev`/`preadv` on the
/// memfds, over io_uring), and the CPU reaches the same bytes through `mapping`:
/// that is the device-coherent view (and what the memcpy backend copies through).
/// The pool owns its mapping and files and releases them in `deinit`, so a pool a
/// caller still holds stays readable after it is unregistered from the engine.
///
/// Threads: immutable after creation; any thread may read its properties and
/// access `mapping` (byte-level races on the mapping are the caller's business,
/// as with real device memory).
public final class VRAMPool: @unchecked Sendable {
    /// The region id of this pool in the engine that registered it.
    public let region: RegionID
    /// A human-readable name (the memfd name, visible in /proc/self/fd).
    public let name: String
    /// Size in bytes.
    public let size: Int
    /// How the bytes are spread over `files` (the layout used, which may differ from the one asked for).
    public let layout: Layout
    /// The memfds holding the pool's bytes, in stripe order (owned; closed in deinit).
    public let files: [FileDescriptor]
    /// The memfd of an unstriped pool; for a striped pool, the one holding its first unit.
    @available(*, deprecated, message: "a pool may span several memfds: use `files` and `layout`")
    public var fileDescriptor: FileDescriptor { files[0] }
    /// A `MAP_SHARED` mapping of the whole pool: the CPU's coherent view of its bytes.
    public var mapping: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base, count: size)
    }

    let base: UnsafeMutableRawPointer
    private let mappedLength: Int
    /// The raw descriptors of `files`, for `FileLayout` (read by channels while the pool is registered).
    private let rawFiles: UnsafeMutablePointer<Int32>

    /// The address of `offset` in this pool.
    public func address(_ offset: Int) -> DMAAddress { DMAAddress(region: region, offset: offset) }

    init(region: RegionID, name: String, size: Int, storage: Storage) {
        self.region = region
        self.name = name
        self.size = size
        self.layout = storage.layout
        self.files = storage.files
        self.base = storage.base
        self.mappedLength = storage.mappedLength
        rawFiles = .allocate(capacity: storage.files.count)
        for (i, f) in storage.files.enumerated() { rawFiles[i] = f.rawValue }
    }

    deinit {
        munmap(base, mappedLength)
        for f in files { try? f.close() }
        rawFiles.deallocate()
    }

    /// How the engine finds the file and file offset of a pool offset.
    var fileLayout: FileLayout {
        guard files.count > 1 else { return .single(files[0].rawValue) }
        return FileLayout(first: rawFiles[0], files: UnsafePointer(rawFiles), count: files.count,
                          shift: layout.granule.trailingZeroBitCount)
    }

    // MARK: Creation

    /// The files and mapping of a pool before it has a region id.
    struct Storage {
        var files: [FileDescriptor]
        var base: UnsafeMutableRawPointer
        var mappedLength: Int
        var layout: Layout

        /// Releases everything (for a registration that failed after creation).
        func release() {
            munmap(base, mappedLength)
            for f in files { try? f.close() }
        }
    }

    /// Creates the memfds of `layout` and maps them as one pool. Models a driver
    /// carving its VRAM aperture. Nothing is left behind when it throws.
    static func create(name: String, size: Int, layout requested: Layout) throws(DMAError) -> Storage {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let (rounded, overflow) = size.addingReportingOverflow(page - 1)
        guard size > 0, !overflow else { throw .invalidArgument("VRAM pool size \(size) is not a positive mappable size") }
        let mapped = rounded & ~(page - 1)
        let layout = try requested.effective(size: size, pageSize: page)
        if layout.files == 1 {
            let fd = try makeMemfd(name: name, size: size, populate: layout.populate)
            do {
                return Storage(files: [fd], base: try mapShared(fd, length: mapped), mappedLength: mapped, layout: layout)
            } catch {
                try? fd.close()
                throw error
            }
        }
        return try createStriped(name: name, size: size, mapped: mapped, layout: layout)
    }

    /// Reserves `mapped` bytes of address space, then maps unit u of the pool from
    /// file u % n at offset (u / n) × granule over it (`MAP_FIXED`).
    private static func createStriped(name: String, size: Int, mapped: Int, layout: Layout) throws(DMAError) -> Storage {
        let n = layout.files, g = layout.granule
        let units = (size - 1) / g + 1
        guard let reserved = mmap(nil, mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              reserved != MAP_FAILED else {
            throw .system(Errno(rawValue: Glibc.errno), operation: "mmap(reserve \(mapped) bytes)")
        }
        var files: [FileDescriptor] = []
        do throws(DMAError) {
            for k in 0..<n {
                let unitsOfFile = (units - k + n - 1) / n
                files.append(try makeMemfd(name: "\(name).\(k)", size: unitsOfFile * g, populate: layout.populate))
            }
            for u in 0..<units {
                let length = min(g, mapped - u * g)
                let p = mmap(reserved + u * g, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                             files[u % n].rawValue, off_t((u / n) * g))
                guard p != MAP_FAILED else {
                    throw .system(Errno(rawValue: Glibc.errno), operation: "mmap(MAP_SHARED | MAP_FIXED, unit \(u))")
                }
            }
        } catch {
            munmap(reserved, mapped)
            for f in files { try? f.close() }
            throw error
        }
        return Storage(files: files, base: reserved, mappedLength: mapped, layout: layout)
    }

    /// Creates and sizes a memfd, optionally allocating every page now.
    static func makeMemfd(name: String, size: Int, populate: Bool) throws(DMAError) -> FileDescriptor {
        let fd = cu_memfd_create("dmem-vram-\(name)", cu_mfd_cloexec())
        guard fd >= 0 else { throw .system(Errno(rawValue: Glibc.errno), operation: "memfd_create") }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let e = Errno(rawValue: Glibc.errno)
            close(fd)
            throw .system(e, operation: "ftruncate(memfd, \(size))")
        }
        if populate {
            var rc: Int32
            repeat { rc = cu_fallocate(fd, 0, 0, off_t(size)) } while rc != 0 && Glibc.errno == EINTR
            if rc != 0 {
                let e = Errno(rawValue: Glibc.errno)
                close(fd)
                throw .system(e, operation: "fallocate(memfd, \(size)) to populate the pool (use populate: false for a sparse pool)")
            }
        }
        return FileDescriptor(rawValue: fd)
    }

    /// Maps `length` bytes of `fd` shared, read-write.
    static func mapShared(_ fd: FileDescriptor, length: Int) throws(DMAError) -> UnsafeMutableRawPointer {
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0)
        guard let p, p != MAP_FAILED else {
            throw .system(Errno(rawValue: Glibc.errno), operation: "mmap(MAP_SHARED, \(length))")
        }
        return p
    }
}
