/// Per-descriptor flags given to `DMAChannel.enqueue…`.
public struct DescriptorFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Start this descriptor only after every earlier descriptor of the channel
    /// has completed (DPDK's `RTE_DMA_OP_FLAG_FENCE`; io_uring's `IOSQE_IO_DRAIN`).
    /// Without it, descriptors of a channel may run concurrently and in any order;
    /// only their fences signal in order. The `submit()` that carries it blocks
    /// until the earlier work is done (the io_uring backend finishes a short
    /// operation itself, after the CQE that would release an `IO_DRAIN`).
    public static let fence = DescriptorFlags(rawValue: 1 << 0)
}

/// One side of a resolved descriptor: where the bytes are for the CPU, and for the kernel.
@frozen
public struct CopyEndpoint: @unchecked Sendable {
    /// The bytes as the CPU sees them (host memory, or the VRAM pool's shared mapping).
    public var pointer: UnsafeMutableRawPointer
    /// The file holding the first byte (a VRAM memfd), or -1 when the region is memory only.
    public var fd: Int32
    /// The offset of the first byte in `fd` (the region offset for an unstriped pool).
    public var fileOffset: Int
    public var region: RegionID
    /// The offset in the region.
    public var offset: Int
    /// The region's files (to find later bytes of a descriptor that crosses a stripe unit).
    @usableFromInline var layout: FileLayout

    /// An endpoint in an unstriped file `fd` (or memory, with `fd == -1`) at `fileOffset`.
    public init(pointer: UnsafeMutableRawPointer, fd: Int32, fileOffset: Int, region: RegionID) {
        self.init(pointer: pointer, region: region, offset: fileOffset, layout: .single(fd))
    }

    init(pointer: UnsafeMutableRawPointer, region: RegionID, offset: Int, layout: FileLayout) {
        let place = layout.locate(offset)
        self.pointer = pointer
        self.fd = place.fd
        self.fileOffset = place.offset
        self.region = region
        self.offset = offset
        self.layout = layout
    }

    /// Whether the kernel can reach this side through a file (`preadv`/`pwritev`).
    @inlinable public var isFileBacked: Bool { fd >= 0 }

    /// Bytes from the first one that stay in `fd` at consecutive offsets (a stripe unit's rest; unbounded when unstriped).
    public var fileExtent: Int { layout.locate(offset).extent }

    /// Whether the region is striped over several files (writes to it may run in parallel).
    var isStriped: Bool { layout.isStriped }

    /// The file, file offset and extent of the byte `delta` bytes in.
    func locate(_ delta: Int) -> (fd: Int32, offset: Int, extent: Int) { layout.locate(offset + delta) }
}

/// A validated descriptor as a backend receives it: bounds checked, regions resolved.
///
/// Backends never see region ids they must look up: a `CopyDescriptor` stays
/// valid (its memory registered) until the backend reports it completed.
@frozen
public struct CopyDescriptor: @unchecked Sendable {
    public enum Operation: UInt8, Sendable {
        /// Copy `length` bytes from `source` to `destination` (memcpy semantics, no overlap).
        case copy
        /// Set `length` bytes at `destination` to `fillValue` (`source` is unused).
        case fill
    }

    public var operation: Operation
    public var flags: DescriptorFlags
    public var fillValue: UInt8
    public var length: Int
    public var source: CopyEndpoint
    public var destination: CopyEndpoint
    public var ticket: DMATicket
}

/// The kernel-visible side of a descriptor for the ring backends.
enum FileAccess: Equatable {
    /// `pwritev(fd)` from memory: the destination is file-backed.
    case write(fd: Int32, offset: Int)
    /// `preadv(fd)` into memory: the source is file-backed.
    case read(fd: Int32, offset: Int)
    /// Neither side is file-backed: the CPU copies (host-to-host).
    case memory

    /// The preferred access for `d`: read the source file when there is one
    /// (reads of a memfd run in parallel on io-wq workers, while writes to one
    /// memfd serialise on its inode lock), else write the destination file.
    init(_ d: CopyDescriptor) {
        if d.operation == .copy && d.source.isFileBacked {
            self = .read(fd: d.source.fd, offset: d.source.fileOffset)
        } else if d.destination.isFileBacked {
            self = .write(fd: d.destination.fd, offset: d.destination.fileOffset)
        } else {
            self = .memory
        }
    }

    /// The other way to reach `d` through a file: writing the destination when both sides are files (D2D).
    static func alternative(_ d: CopyDescriptor) -> FileAccess? {
        guard d.operation == .copy, d.source.isFileBacked, d.destination.isFileBacked else { return nil }
        return .write(fd: d.destination.fd, offset: d.destination.fileOffset)
    }

    /// The access for `d` on its own: the preferred one, unless only the other side
    /// keeps all of `d` in one file (D2D across a stripe boundary on one side).
    static func best(_ d: CopyDescriptor) -> FileAccess {
        let preferred = FileAccess(d)
        if !preferred.fits(d), let other = alternative(d), other.fits(d) { return other }
        return preferred
    }

    /// Whether `d` can be reached through exactly this access.
    func admits(_ d: CopyDescriptor) -> Bool {
        FileAccess(d) == self || FileAccess.alternative(d) == self
    }

    /// Whether all of `d`'s bytes on this access's file side lie in one file (no stripe boundary inside).
    func fits(_ d: CopyDescriptor) -> Bool {
        switch self {
        case .read: return d.source.fileExtent >= d.length
        case .write: return d.destination.fileExtent >= d.length
        case .memory: return true
        }
    }

    /// The endpoint this access reaches through a file, and the one that is memory to it.
    func sides(_ d: CopyDescriptor) -> (file: CopyEndpoint, memory: CopyEndpoint) {
        if case .read = self { return (d.source, d.destination) }
        return (d.destination, d.source)
    }
}
