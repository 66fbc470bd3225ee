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

    /// Creates the files of `layout` and maps them as one pool. Models a driver
    /// carving its VRAM aperture. Nothing is left behind when it throws.
    ///
    /// The pool is mapped at a 2 MiB-aligned address: unit u of the pool is file
    /// u % n at offset (u / n) × granule, mapped over a reservation with `MAP_FIXED`
    /// (an unstriped pool is one file mapped whole). The alignment lets the kernel
    /// back an advised mapping with huge pages (see `Layout.hugePages`).
    static func create(name: String, size: Int, layout requested: Layout) throws(DMAError) -> Storage {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let (rounded, overflow) = size.addingReportingOverflow(page - 1)
        guard size > 0, !overflow else { throw .invalidArgument("VRAM pool size \(size) is not a positive mappable size") }
        let mapped = rounded & ~(page - 1)
        let layout = try requested.effective(size: size, pageSize: page)
        let n = layout.files, g = layout.granule
        let units = n == 1 ? 1 : (size - 1) / g + 1
        let base = try reserve(mapped, alignment: hugePageSize)
        var files: [FileDescriptor] = []
        do throws(DMAError) {
            var sizes: [Int] = []
            for k in 0..<n {
                let bytes = n == 1 ? size : (units - k + n - 1) / n * g
                files.append(try makeFile(name: n == 1 ? name : "\(name).\(k)", size: bytes, directory: layout.directory))
                sizes.append(bytes)
            }
            for u in 0..<units {
                let length = n == 1 ? mapped : min(g, mapped - u * g)
                let p = mmap(base + u * g, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                             files[u % n].rawValue, off_t((u / n) * g))
                guard p != MAP_FAILED else {
                    throw .system(Errno(rawValue: Glibc.errno), operation: "mmap(MAP_SHARED | MAP_FIXED, unit \(u))")
                }
            }
            if layout.hugePages { _ = madvise(base, mapped, cu_madv_hugepage()) }  // EINVAL without THP: nothing to ask for
            if layout.populate { try populate(base: base, mapped: mapped, files: files, sizes: sizes, layout: layout) }
        } catch {
            munmap(base, mapped)
            for f in files { try? f.close() }
            throw error
        }
        return Storage(files: files, base: base, mappedLength: mapped, layout: layout)
    }

    /// The size of a PMD-mapped transparent huge page on x86-64 and arm64 (4 KiB base pages).
    static let hugePageSize = 2 << 20

    /// Reserves `length` bytes of address space at an `alignment`-aligned address (`PROT_NONE`).
    private static func reserve(_ length: Int, alignment: Int) throws(DMAError) -> UnsafeMutableRawPointer {
        let slack = length >= alignment ? alignment : 0
        let (total, overflow) = length.addingReportingOverflow(slack)
        guard !overflow else { throw .system(.noMemory, operation: "mmap(reserve \(length) bytes)") }
        guard let raw = mmap(nil, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              raw != MAP_FAILED else {
            throw .system(Errno(rawValue: Glibc.errno), operation: "mmap(reserve \(length) bytes)")
        }
        guard slack > 0 else { return raw }
        let address = Int(bitPattern: raw)
        let aligned = (address + alignment - 1) & ~(alignment - 1)
        if aligned > address { munmap(raw, aligned - address) }
        let tail = address + slack - aligned
        if tail > 0 { munmap(UnsafeMutableRawPointer(bitPattern: aligned + length), tail) }
        return UnsafeMutableRawPointer(bitPattern: aligned)!
    }

    /// Allocates every page of the pool now, as real VRAM exists before the first copy.
    /// Through the advised mapping (`MADV_POPULATE_WRITE`) where the kernel would then
    /// use huge pages, so the page cache holds 2 MiB folios; otherwise (and on kernels
    /// before 5.14) with `fallocate` on each file.
    ///
    /// Refuses (ENOMEM) a pool larger than 90 % of `MemAvailable`: populated shmem cannot
    /// be reclaimed, and the OOM killer would pick a victim instead of failing this call.
    private static func populate(base: UnsafeMutableRawPointer, mapped: Int, files: [FileDescriptor], sizes: [Int],
                                 layout: Layout) throws(DMAError) {
        if let available = SystemMemory.available(), mapped > SystemMemory.usable(of: available) {
            throw .system(.noMemory, operation: "populating a VRAM pool of \(mapped >> 20) MiB (MemAvailable \(available >> 20) MiB; use a smaller VRAM size, or populate: false for a sparse pool)")
        }
        if layout.hugePages, layout.directory != nil || ShmemHugePages.current.honoursAdvice {
            if madvise(base, mapped, cu_madv_populate_write()) == 0 { return }
            let e = Glibc.errno
            guard e == EINVAL else {
                throw .system(Errno(rawValue: e), operation: "madvise(MADV_POPULATE_WRITE) to populate the pool of \(mapped) bytes (use populate: false for a sparse pool)")
            }
        }
        for (f, bytes) in zip(files, sizes) {
            var rc: Int32
            repeat { rc = cu_fallocate(f.rawValue, 0, 0, off_t(bytes)) } while rc != 0 && Glibc.errno == EINTR
            if rc != 0 {
                throw .system(Errno(rawValue: Glibc.errno), operation: "fallocate(\(bytes) bytes) to populate the pool (use populate: false for a sparse pool)")
            }
        }
    }

    /// Creates and sizes one file of a pool: a memfd, or an unnamed file in `directory`.
    static func makeFile(name: String, size: Int, directory: String?) throws(DMAError) -> FileDescriptor {
        let fd: Int32
        if let directory {
            fd = cu_open_tmpfile(directory, 0o600)
            guard fd >= 0 else {
                throw .system(Errno(rawValue: Glibc.errno), operation: "open(\(directory), O_TMPFILE) for a VRAM file")
            }
        } else {
            fd = cu_memfd_create("dmem-vram-\(name)", cu_mfd_cloexec())
            guard fd >= 0 else { throw .system(Errno(rawValue: Glibc.errno), operation: "memfd_create") }
        }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let e = Errno(rawValue: Glibc.errno)
            close(fd)
            throw .system(e, operation: "ftruncate(\(directory == nil ? "memfd" : "VRAM file"), \(size))")
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
