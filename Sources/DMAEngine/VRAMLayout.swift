extension VRAMPool {
    /// How a pool's bytes are spread over memfds: RAID-0 style, in `granule`-sized
    /// units dealt round-robin to `files` memfds, all mapped at consecutive addresses
    /// so the CPU (and `mapping`) still sees one contiguous pool.
    ///
    /// Why stripe: a write into a memfd (`pwritev`, H2D and D2D) holds that file's
    /// inode lock for the whole call, and io-wq serialises buffered writes per inode,
    /// so one memfd takes one write at a time however many operations are in flight.
    /// With the pool spread over several files, writes into different units proceed
    /// in parallel on io-wq workers. Reads never took the lock.
    ///
    /// The layout actually used (`VRAMPool.layout`) may differ from the one asked
    /// for: a pool smaller than two units is one file; `files` is at most the
    /// number of units; the granule doubles until the pool has at most
    /// `maxMappings` units (each unit is one mapping, one VMA).
    ///
    /// Threads: a value; any thread.
    public struct Layout: Sendable, Equatable, CustomStringConvertible {
        /// memfds the pool is striped over (1: the whole pool is one memfd).
        public var files: Int
        /// Bytes per stripe unit: a power of two, a multiple of the page size.
        public var granule: Int
        /// Allocate every page when the pool is created (`fallocate`), as real VRAM
        /// exists before the first copy; otherwise pages are allocated (and zeroed)
        /// inside the first write that reaches them, which then costs about twice as much.
        public var populate: Bool
        /// Where the pool's files live: nil for memfds; otherwise a directory in which
        /// they are created as unnamed files (`O_TMPFILE`), typically a tmpfs mounted
        /// with `huge=always` (`mount -t tmpfs -o huge=always,size=4G none DIR`): its
        /// 2 MiB pages take the kernel's per-4 KiB-page work out of every `pwritev`
        /// into VRAM, which then runs at memcpy speed (see README "Performance").
        public var directory: String?
        /// Ask for transparent huge pages (`MADV_HUGEPAGE` on the mapping, which is
        /// aligned to 2 MiB). When populating where the kernel honours that advice
        /// (shmem THP set to `advise`, or a `directory`), pages are allocated through
        /// the advised mapping (`MADV_POPULATE_WRITE`) so they come as 2 MiB folios;
        /// elsewhere it changes nothing.
        public var hugePages: Bool

        public init(files: Int = 16, granule: Int = 2 << 20, populate: Bool = true,
                    directory: String? = nil, hugePages: Bool = true) {
            self.files = files
            self.granule = granule
            self.populate = populate
            self.directory = directory
            self.hugePages = hugePages
        }

        /// 16 memfds, 2 MiB units (the size of a device chunk), populated.
        public static let `default` = Layout()
        /// One memfd for the whole pool, populated.
        public static let singleFile = Layout(files: 1)

        /// The most mappings one pool is cut into (see the type's discussion).
        public static let maxMappings = 4096
        /// The most memfds one pool may use.
        public static let maxFiles = 256

        public var description: String {
            let shape = files == 1 ? "1 file" : "\(files) files × \(granule >> 10) KiB units"
            return directory.map { "\(shape) in \($0)" } ?? shape
        }

        /// The layout used for a pool of `size` bytes; throws `.invalidArgument` for a bad request.
        func effective(size: Int, pageSize: Int) throws(DMAError) -> Layout {
            guard (1...Self.maxFiles).contains(files) else {
                throw .invalidArgument("VRAM layout files \(files) outside 1…\(Self.maxFiles)")
            }
            if let directory, directory.isEmpty || directory.utf8.contains(0) {
                throw .invalidArgument("VRAM layout directory \(directory.debugDescription) is not a usable path")
            }
            guard granule >= pageSize, granule & (granule - 1) == 0 else {
                throw .invalidArgument("VRAM layout granule \(granule) is not a power of two of at least one page (\(pageSize))")
            }
            var out = self
            while out.granule < (1 << 40), (size - 1) / out.granule + 1 > Self.maxMappings { out.granule <<= 1 }
            let units = (size - 1) / out.granule + 1
            out.files = min(files, units)
            if out.files == 1 { out.granule = Self.default.granule }
            return out
        }
    }
}

/// Where the bytes of a region live for the kernel: which memfd, at which offset.
///
/// A trivial value copied into every resolved descriptor (no ARC): `first` is the
/// only file of an unstriped pool; a striped pool's files are in `files`, owned by
/// the `VRAMPool` (valid while the region is registered, which outlives every
/// descriptor naming it). Memory-only regions (host RAM) have `first == -1`.
///
/// Threads: a value; any thread.
@usableFromInline
struct FileLayout: @unchecked Sendable {
    var first: Int32
    var files: UnsafePointer<Int32>?
    var count: Int
    var shift: Int

    static let memory = FileLayout(first: -1, files: nil, count: 0, shift: 0)

    static func single(_ fd: Int32) -> FileLayout { FileLayout(first: fd, files: nil, count: fd >= 0 ? 1 : 0, shift: 0) }

    var isStriped: Bool { count > 1 }

    /// The file, the offset in it, and how many bytes from there stay in that file, of region offset `offset`.
    @inline(__always)
    func locate(_ offset: Int) -> (fd: Int32, offset: Int, extent: Int) {
        guard count > 1, let files else { return (first, offset, Int.max - offset) }
        let unit = offset >> shift
        let within = offset & ((1 << shift) - 1)
        return (files[unit % count], (unit / count) << shift | within, (1 << shift) - within)
    }
}
