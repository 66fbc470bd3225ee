#if canImport(Glibc)
import Glibc
#endif
import DeviceEmu
import HostMM
import Testing

// The harness of tools/testing/selftests/mm/hmm-tests.c, in Swift: a "machine" with the
// four dmirror devices, a process (`AddressSpace`), hmm-tests' `struct hmm_buffer`, and
// `hmm_dmirror_cmd`, so each ported test reads like the C one.

/// The two fixture variants every test runs in (`hmm_device_private`, `hmm_device_coherent`).
enum MirrorKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case devicePrivate = "hmm_device_private"
    case deviceCoherent = "hmm_device_coherent"

    var memoryType: MemoryType { self == .devicePrivate ? .devicePrivate : .deviceCoherent }
    var isCoherent: Bool { self == .deviceCoherent }
    var testDescription: String { rawValue }
}

/// `HMM_BUFFER_SIZE >> PAGE_SHIFT`.
let hmmBufferPages = 1024
/// `NTIMES`.
let hmmNTimes = 10
/// `read_pmd_pagesize()` on x86-64.
let hmmPMDSize = 2 << 20

/// The fixtures `hmm` (one fd) and `hmm2` (two fds): RAM, the devices of the variant's kind
/// plus private device 0 (hmm-tests' children always open `/dev/hmm_dmirror0`), one process.
final class HMMFixture {
    let memory: PhysicalMemory
    /// `/dev/hmm_dmirror0`: always device-private.
    let privateDevice0: MirrorDevice
    /// The variant's two devices (0 and 1, or 2 and 3).
    let device0: MirrorDevice
    let device1: MirrorDevice
    /// The test process.
    let mm: AddressSpace
    /// `self->fd` / `self->fd0`, and `self->fd1`.
    let fd0: Mirror
    let fd1: Mirror
    var fd: Mirror { fd0 }
    let kind: MirrorKind

    init(_ kind: MirrorKind) throws {
        self.kind = kind
        memory = try PhysicalMemory(ramBytes: 96 << 20, maxDevicePages: 1 << 16)
        let config = MirrorDevice.Configuration(vramSize: 16 << 20, chunkSize: 4 << 20)
        privateDevice0 = try MirrorDevice(memory: memory, kind: .devicePrivate, configuration: config)
        if kind.isCoherent {
            device0 = try MirrorDevice(memory: memory, kind: .deviceCoherent, configuration: config)
        } else {
            device0 = privateDevice0
        }
        device1 = try MirrorDevice(memory: memory, kind: kind.memoryType, configuration: config)
        mm = AddressSpace(memory: memory)
        fd0 = try device0.open(mm)
        fd1 = try device1.open(mm)
    }

    /// An anonymous `size`-byte buffer in the test process whose ints the CPU set to
    /// `pattern` (hmm-tests' `for (i = 0; …) ptr[i] = i;` after the mmap).
    func buffer(size: Int, filledWith pattern: IntPattern) throws -> HMMBuffer {
        let b = try HMMBuffer(mm, size: size)
        try mm.fillInts(b.ptr, bytes: size, pattern)
        return b
    }

    /// `FIXTURE_TEARDOWN`: closes the fds (which evicts), ends the process, and checks that
    /// no device page or protocol error is left behind.
    func teardown() {
        fd0.close()
        fd1.close()
        mm.exit()
        #expect(privateDevice0.inUsePageCount == 0 && device0.inUsePageCount == 0 && device1.inUsePageCount == 0)
        #expect(memory.diagnostics.refcountUnderflowCount == 0)
        #expect(memory.diagnostics.unlocksOfUnlockedPages == 0)
    }
}

/// hmm-tests' `struct hmm_buffer`: `ptr` in the process, `mirror` in "user" memory the
/// device reads into or writes from, and the last successful command's counts.
final class HMMBuffer {
    let mm: AddressSpace
    var ptr: UInt64
    let size: Int
    let mirror: UnsafeMutableRawBufferPointer
    var cpages = 0
    var faults = 0

    /// `mmap` of `size` bytes of `kind`, plus a `mirrorSize`-byte mirror buffer.
    init(_ mm: AddressSpace, size: Int, mirrorSize: Int? = nil, kind: MappingKind = .anonymousPrivate,
         protection: Protection = .readWrite) throws {
        self.mm = mm
        self.size = size
        mirror = .allocate(byteCount: mirrorSize ?? size, alignment: 16)
        mirror.initializeMemory(as: UInt8.self, repeating: 0)
        ptr = try mm.mmap(kind, length: size, protection: protection)
    }

    /// A buffer over an existing mapping.
    init(_ mm: AddressSpace, at ptr: UInt64, size: Int, mirrorSize: Int? = nil) {
        self.mm = mm
        self.ptr = ptr
        self.size = size
        mirror = .allocate(byteCount: mirrorSize ?? size, alignment: 16)
        mirror.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit { mirror.deallocate() }

    /// `hmm_buffer_free`'s munmap.
    func free() throws {
        try mm.munmap(ptr, length: size)
    }

    /// The mirror buffer as ints.
    var mirrorInts: UnsafeMutableBufferPointer<Int32> { mirror.bindMemory(to: Int32.self) }

    /// Fills the mirror buffer: int `i` gets `pattern[i]`.
    func fillMirror(_ pattern: IntPattern) {
        pattern.fill(mirrorInts, firstIndex: 0)
    }

    /// True when the ints of the mirror buffer from byte `offset` (all of it by default)
    /// hold `pattern[i]`, `i` counted from the buffer's start.
    func mirrorMatches(_ pattern: IntPattern, offset: Int = 0, bytes: Int? = nil) -> Bool {
        let count = (bytes ?? mirror.count - offset) / 4
        let expected = pattern.ints(count: count, firstIndex: offset / 4)
        return expected.withUnsafeBytes { memcmp($0.baseAddress!, mirror.baseAddress! + offset, count * 4) == 0 }
    }
}

/// A data pattern of hmm-tests: int `i` holds `scale * i + offset` (`ptr[i] = i`, `-i`, `i + c`, 0).
struct IntPattern: Sendable {
    var scale: Int32
    var offset: Int32
    /// `ptr[i] = i`.
    static let index = IntPattern(scale: 1, offset: 0)
    /// `ptr[i] = -i`.
    static let negated = IntPattern(scale: -1, offset: 0)
    /// All zero.
    static let zero = IntPattern(scale: 0, offset: 0)
    /// `ptr[i] = i + c`.
    static func index(plus c: Int) -> IntPattern { IntPattern(scale: 1, offset: Int32(c)) }

    func fill(_ p: UnsafeMutableBufferPointer<Int32>, firstIndex: Int) {
        var v = scale &* Int32(truncatingIfNeeded: firstIndex) &+ offset
        for i in 0..<p.count {
            p[i] = v
            v = v &+ scale
        }
    }

    func ints(count: Int, firstIndex: Int) -> [Int32] {
        [Int32](unsafeUninitializedCapacity: count) { b, n in
            fill(b, firstIndex: firstIndex)
            n = count
        }
    }
}

extension AddressSpace {
    /// CPU stores: int `i` of `[address, address + bytes)` gets `pattern[firstIndex + i]`.
    func fillInts(_ address: UInt64, bytes: Int, _ pattern: IntPattern, firstIndex: Int = 0) throws {
        try pattern.ints(count: bytes / 4, firstIndex: firstIndex).withUnsafeBytes { try write(at: address, from: $0) }
    }

    /// CPU loads of the ints of `[address, address + bytes)`.
    func ints(_ address: UInt64, bytes: Int) throws -> [Int32] {
        var out = [Int32](repeating: 0, count: bytes / 4)
        try out.withUnsafeMutableBytes { try read(at: address, into: $0) }
        return out
    }

    /// True when int `i` of `[address, address + bytes)` holds `pattern[firstIndex + i]`
    /// (read with CPU loads, which fault like the C test's).
    func intsMatch(_ address: UInt64, bytes: Int, _ pattern: IntPattern, firstIndex: Int = 0) throws -> Bool {
        let got = try ints(address, bytes: bytes)
        let expected = pattern.ints(count: bytes / 4, firstIndex: firstIndex)
        return got.withUnsafeBytes { g in expected.withUnsafeBytes { memcmp(g.baseAddress!, $0.baseAddress!, bytes) == 0 } }
    }
}

/// `hmm_dmirror_cmd`: sends `command` for `npages` pages at `buffer.ptr` with
/// `buffer.mirror` as the user buffer; returns 0 or `-errno`, and copies `cpages` and
/// `faults` back only on success, like the ioctl.
@discardableResult
func hmmDmirrorCmd(_ fd: Mirror, _ command: MirrorCommand, _ buffer: HMMBuffer, _ npages: Int) -> Int32 {
    do throws(MirrorError) {
        let r: MirrorResult
        switch command {
        case .read: r = try fd.read(buffer.ptr, npages: npages, into: buffer.mirror)
        case .write: r = try fd.write(buffer.ptr, npages: npages, from: UnsafeRawBufferPointer(buffer.mirror))
        case .migrateToDevice: r = try fd.migrateToDevice(buffer.ptr, npages: npages, into: buffer.mirror)
        case .migrateToSystem: r = try fd.migrateToSystem(buffer.ptr, npages: npages)
        case .snapshot: r = try fd.snapshot(buffer.ptr, npages: npages, into: buffer.mirror)
        case .exclusive: r = try fd.makeExclusive(buffer.ptr, npages: npages, into: buffer.mirror)
        case .checkExclusive: r = try fd.checkExclusive(buffer.ptr, npages: npages)
        case .release: r = try fd.release(buffer.ptr, npages: npages)
        case .flags: r = try fd.setFlags(buffer.ptr, npages: npages)
        }
        buffer.cpages = r.cpages
        buffer.faults = r.faults
        return 0
    } catch {
        return -error.errno.rawValue
    }
}

/// `hmm_migrate_sys_to_dev`.
@discardableResult
func hmmMigrateSysToDev(_ fd: Mirror, _ buffer: HMMBuffer, _ npages: Int) -> Int32 {
    hmmDmirrorCmd(fd, .migrateToDevice, buffer, npages)
}

/// `hmm_migrate_dev_to_sys`.
@discardableResult
func hmmMigrateDevToSys(_ fd: Mirror, _ buffer: HMMBuffer, _ npages: Int) -> Int32 {
    hmmDmirrorCmd(fd, .migrateToSystem, buffer, npages)
}

/// `-EINVAL`, `-EFAULT`, … as `hmm_dmirror_cmd` returns them.
func negErrno(_ e: MirrorError) -> Int32 { -e.errno.rawValue }

/// `ALIGN(x, a)` for addresses.
func hmmAlign(_ x: UInt64, _ a: Int) -> UInt64 { (x + UInt64(a - 1)) & ~UInt64(a - 1) }

let hmmPage = UInt64(pageSize)

/// A pthread running one closure (hmm-tests' `pthread_create` / `pthread_join`).
final class MirrorTestThread: @unchecked Sendable {
    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    private var thread = pthread_t()

    init(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create failed")
    }

    func join() { pthread_join(thread, nil) }

    /// `hmm_nanosleep`.
    static func sleep(nanoseconds: UInt64) {
        var t = timespec(tv_sec: 0, tv_nsec: Int(nanoseconds))
        nanosleep(&t, nil)
    }
}
