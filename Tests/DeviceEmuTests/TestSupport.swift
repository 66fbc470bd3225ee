import DMAEngine
import DeviceEmu
import Foundation
import Glibc
import HostMM
import NIOConcurrencyHelpers
import Synchronization
import Testing

/// Emulated RAM for a test: `mib` MiB, room for 64K device pages per device.
func makeMemory(mib: Int = 256) throws -> PhysicalMemory {
    try PhysicalMemory(ramBytes: mib << 20, maxDevicePages: 1 << 17)
}

/// The backend `makeDevice` uses unless told otherwise: memcpy (synchronous: the plain
/// runs), or what `DMEM_TEST_BACKEND` names (`mapped`, `iouring`), with which `scripts/test`
/// runs the DeviceEmu suites again so that every test also meets an asynchronous engine.
let defaultTestBackend: CopyBackendKind = {
    switch ProcessInfo.processInfo.environment["DMEM_TEST_BACKEND"] {
    case "mapped": return .mappedWorkers(threads: 2)
    case "iouring": return .ioUring
    case nil, "", "memcpy": return .memcpy
    case let other?: fatalError("DMEM_TEST_BACKEND=\(other): use memcpy, mapped or iouring")
    }
}()

/// A device with `vramMiB` of VRAM, on `defaultTestBackend` unless told otherwise.
func makeDevice(_ memory: PhysicalMemory, vramMiB: Int = 64, backend: CopyBackendKind = defaultTestBackend,
                type: MemoryType = .devicePrivate, policy: MigrationPolicy = MigrationPolicy(),
                eviction: EvictionPolicyKind = .leastRecentlyUsed,
                observer: (any MigrationObserver)? = nil, name: String = "gpu") throws -> Device {
    var c = Device.Configuration(name: name, vramSize: vramMiB << 20, memoryType: type, backend: backend, policy: policy)
    c.eviction = eviction
    c.observer = observer
    return try Device(memory: memory, configuration: c)
}

/// A new process with `pages` anonymous pages at the returned address, written by the CPU
/// with `PagePattern(seed:)`.
func makeProcess(_ memory: PhysicalMemory, pages: Int, seed: UInt64) throws -> (mm: AddressSpace, address: UInt64, pattern: PagePattern) {
    let mm = AddressSpace(memory: memory)
    let address = try mm.mmap(length: pages * pageSize)
    let pattern = PagePattern(seed: seed)
    try pattern.fill(mm, address, pages: pages)
    return (mm, address, pattern)
}

/// The known pattern: every page is a shared 4 KiB random block whose first and last
/// words carry (seed, page number), so a misplaced, stale or torn page cannot match.
struct PagePattern: Sendable {
    let seed: UInt64
    private let block: [UInt8]

    init(seed: UInt64) {
        self.seed = seed
        var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        block = (0..<pageSize).map { _ in
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            return UInt8(truncatingIfNeeded: x)
        }
    }

    /// Writes page `index`'s bytes to `out` (4 KiB).
    func render(_ index: Int, into out: UnsafeMutableRawPointer) {
        block.withUnsafeBytes { out.copyMemory(from: $0.baseAddress!, byteCount: pageSize) }
        let tag = seed << 40 ^ UInt64(index) &* 0x100_0001 ^ 0xA5A5
        out.storeBytes(of: tag, as: UInt64.self)
        out.storeBytes(of: ~tag, toByteOffset: pageSize - 8, as: UInt64.self)
    }

    func page(_ index: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: pageSize)
        b.withUnsafeMutableBytes { render(index, into: $0.baseAddress!) }
        return b
    }

    /// True when `bytes` (4 KiB) is page `index`.
    func matches(_ index: Int, _ bytes: UnsafeRawPointer) -> Bool {
        withUnsafeTemporaryAllocation(byteCount: pageSize, alignment: 8) { tmp in
            render(index, into: tmp.baseAddress!)
            return memcmp(tmp.baseAddress!, bytes, pageSize) == 0
        }
    }

    /// Writes pages `0 ..< pages` at `address` of `mm` with the CPU.
    func fill(_ mm: AddressSpace, _ address: UInt64, pages: Int) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        var p = 0
        while p < pages {
            let n = min(64, pages - p)
            for k in 0..<n { render(p + k, into: buffer.baseAddress! + k * pageSize) }
            try mm.write(at: address + UInt64(p * pageSize), from: UnsafeRawBufferPointer(rebasing: buffer[0..<n * pageSize]))
            p += n
        }
    }

    /// Reads pattern pages `first ..< first + pages` with `read` (one call per page, given
    /// the offset from `first`); returns the pattern indices that did not match.
    func mismatches(first: Int, pages: Int, _ read: (Int, UnsafeMutableRawBufferPointer) throws -> Void) rethrows -> [Int] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        var bad: [Int] = []
        for p in 0..<pages {
            try read(p, buffer)
            if !matches(first + p, buffer.baseAddress!) { bad.append(first + p) }
        }
        return bad
    }

    /// CPU check of the pattern pages `first ..< first + pages`, filled from `base`; returns mismatching pages.
    func cpuMismatches(_ mm: AddressSpace, _ base: UInt64, first: Int = 0, pages: Int) throws -> [Int] {
        try mismatches(first: first, pages: pages) { p, buf in
            try mm.read(at: base + UInt64((first + p) * pageSize), into: buf)
        }
    }

    /// GPU check of the pattern pages `first ..< first + pages`, filled from `base`; returns mismatching pages.
    func gpuMismatches(_ space: GPUAddressSpace, _ base: UInt64, first: Int = 0, pages: Int) throws -> [Int] {
        try mismatches(first: first, pages: pages) { p, buf in
            try space.read(at: base + UInt64((first + p) * pageSize), into: buf)
        }
    }
}

/// Counts the CPU page-table entries of each kind in a range.
func entryKinds(_ mm: AddressSpace, _ address: UInt64, pages: Int) -> [PageTableEntry.Kind: Int] {
    var kinds: [PageTableEntry.Kind: Int] = [:]
    for p in 0..<pages { kinds[mm.pageTableEntry(address + UInt64(p * pageSize)).kind, default: 0] += 1 }
    return kinds
}

/// Records every observer event.
final class EventLog: MigrationObserver, @unchecked Sendable {
    let events = NIOLockedValueBox<[MigrationEvent]>([])
    func observe(_ event: MigrationEvent) { events.withLockedValue { $0.append(event) } }
    var all: [MigrationEvent] { events.withLockedValue { $0 } }
    func count(_ kind: MigrationEvent.Kind, _ direction: MigrationEvent.Direction? = nil) -> Int {
        all.filter { $0.kind == kind && (direction == nil || $0.direction == direction) }.count
    }
}

/// Runs `body` on a new thread; `join()` waits for it.
final class TestThread: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    init(_ body: @escaping @Sendable () -> Void) {
        Thread.detachNewThread { [done] in
            body()
            done.signal()
        }
    }
    @discardableResult func join(seconds: Double = 60) -> Bool { done.wait(timeout: .now() + seconds) == .success }
}

extension Device {
    /// The pages of `[address, address + pages * 4K)` currently in this device's VRAM, per the CPU page table.
    func residentPages(_ mm: AddressSpace, _ address: UInt64, pages: Int) -> Int {
        (0..<pages).filter { p in
            let pte = mm.pageTableEntry(address + UInt64(p * pageSize))
            return pte.kind == .devicePrivate && vram.contains(pte.pfn)
        }.count
    }
}

func bytes(_ mib: Int) -> Int { mib << 20 }
func range(_ a: UInt64, pages: Int) -> Range<UInt64> { a ..< a + UInt64(pages * pageSize) }
