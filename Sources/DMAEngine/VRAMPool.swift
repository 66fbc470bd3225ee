import CUring
import Glibc
public import SystemPackage

/// A pool of emulated device memory: a memfd, plus one shared CPU mapping of it.
///
/// The copy engine reaches the pool through the file (`pwritev`/`preadv` on the
/// memfd, over io_uring), and the CPU reaches the same bytes through `mapping`:
/// that is the device-coherent view (and what the memcpy backend copies through).
/// The pool owns its mapping and fd and releases them in `deinit`, so a pool a
/// caller still holds stays readable after it is unregistered from the engine.
///
/// Threads: immutable after creation; any thread may read its properties and
/// access `mapping` (byte-level races on the mapping are the caller's business,
/// as with real device memory).
public final class VRAMPool: Sendable {
    /// The region id of this pool in the engine that registered it.
    public let region: RegionID
    /// A human-readable name (the memfd name, visible in /proc/self/fd).
    public let name: String
    /// Size in bytes.
    public let size: Int
    /// The memfd holding the pool's bytes (owned; closed in deinit).
    public let fileDescriptor: FileDescriptor
    /// A `MAP_SHARED` mapping of the whole memfd: the CPU's coherent view of the pool.
    public var mapping: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base, count: size)
    }

    nonisolated(unsafe) let base: UnsafeMutableRawPointer

    /// The address of `offset` in this pool.
    public func address(_ offset: Int) -> DMAAddress { DMAAddress(region: region, offset: offset) }

    init(region: RegionID, name: String, size: Int, fd: FileDescriptor, base: UnsafeMutableRawPointer) {
        self.region = region
        self.name = name
        self.size = size
        self.fileDescriptor = fd
        self.base = base
    }

    deinit {
        munmap(base, size)
        try? fileDescriptor.close()
    }

    /// Creates and sizes a memfd. Models a driver carving its VRAM aperture.
    static func makeMemfd(name: String, size: Int) throws(DMAError) -> FileDescriptor {
        let fd = cu_memfd_create("dmem-vram-\(name)", cu_mfd_cloexec())
        guard fd >= 0 else { throw .system(Errno(rawValue: Glibc.errno), operation: "memfd_create") }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let e = Errno(rawValue: Glibc.errno)
            close(fd)
            throw .system(e, operation: "ftruncate(memfd, \(size))")
        }
        return FileDescriptor(rawValue: fd)
    }

    /// Maps `size` bytes of `fd` shared, read-write.
    static func mapShared(_ fd: FileDescriptor, size: Int) throws(DMAError) -> UnsafeMutableRawPointer {
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0)
        guard let p, p != MAP_FAILED else {
            throw .system(Errno(rawValue: Glibc.errno), operation: "mmap(MAP_SHARED, \(size))")
        }
        return p
    }
}
