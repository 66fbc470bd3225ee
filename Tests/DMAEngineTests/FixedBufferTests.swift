@testable import DMAEngine
import Foundation
import Glibc
import SystemPackage
import Testing

/// Host memory registered as io_uring fixed buffers: installed in every channel's ring
/// (before or after the channel exists), split into pieces, used by the fixed-buffer
/// opcodes, cleared on unregister, and never required for a copy to work.
@Suite struct FixedBufferTests {
    static func engine(pieceBytes: Int = FixedBufferRegistry.maxPieceBytes, fixed: Bool = true) throws -> DMAEngine {
        var c = DMAEngine.Configuration(backend: .ioUring, queueDepth: 8)
        c.fixedBuffers = fixed
        return try DMAEngine(configuration: c, fixedPieceBytes: pieceBytes)
    }

    /// Whether this process may pin a few MiB for io_uring (CAP_IPC_LOCK, or RLIMIT_MEMLOCK
    /// above what the tests pin at once): containers without either cannot install buffers.
    static let canPin: Bool = {
        guard let engine = try? engine() else { return false }
        defer { engine.shutdown() }
        let probe = HostBuffer(2 << 20)
        guard let ch = try? engine.makeChannel(), (try? engine.registerHostMemory(probe.bytes)) != nil else { return false }
        return ch.fixedBuffers.installedPieces == 1
    }()

    /// Copies `size` bytes host → VRAM → other host buffer with 4 KiB scattered descriptors; true if intact.
    static func roundTrip(_ engine: DMAEngine, _ ch: DMAChannel, from src: HostBuffer, _ s: RegionID,
                          to back: HostBuffer, _ b: RegionID, pool: VRAMPool, seed: UInt64) throws -> Bool {
        fillPattern(src.bytes, seed: seed)
        memset(back.bytes.baseAddress!, 0, back.bytes.count)
        let pages = src.bytes.count / 4096
        for p in 0..<pages {  // reversed host pages: contiguous in VRAM, scattered in RAM
            try ch.enqueueCopy(from: DMAAddress(region: s, offset: (pages - 1 - p) * 4096), to: pool.address(p * 4096), length: 4096)
        }
        try ch.submit().wait(timeout: .seconds(20))
        for p in 0..<pages {
            try ch.enqueueCopy(from: pool.address(p * 4096), to: DMAAddress(region: b, offset: (pages - 1 - p) * 4096), length: 4096)
        }
        try ch.submit().wait(timeout: .seconds(20))
        return same(src.bytes.baseAddress!, back.bytes.baseAddress!, src.bytes.count)
    }

    @Test(.enabled(if: canPin, "needs CAP_IPC_LOCK or ulimit -l of a few MiB"), arguments: [true, false])
    func regionsRegisteredBeforeAndAfterAChannelUseFixedOpcodes(_ coalescing: Bool) throws {
        let engine = try Self.engine()
        defer { engine.shutdown() }
        let size = 64 * 4096
        let src = HostBuffer(size), back = HostBuffer(size)
        let s = try engine.registerHostMemory(src.bytes)  // before the channel
        let ch = try engine.makeChannel(coalescing: coalescing)
        let b = try engine.registerHostMemory(back.bytes)  // after it
        let pool = try engine.createVRAMPool(size: size)
        #expect(ch.fixedBuffers.installedPieces == 2 && ch.fixedBuffers.failure == nil)
        #expect(try Self.roundTrip(engine, ch, from: src, s, to: back, b, pool: pool, seed: 3))
        let ops = ch.statistics.operations
        #expect(ops > 0 && ch.fixedBuffers.operations == ops, "every operation's memory lies in one registered buffer")
    }

    /// A region larger than a piece takes several slots; an operation whose memory spans two
    /// pieces runs with the plain opcode, and the data is right either way.
    @Test(.enabled(if: canPin, "needs CAP_IPC_LOCK or ulimit -l of a few MiB"))
    func largeRegionsAreSplitAndOperationsAcrossPiecesFallBack() throws {
        let engine = try Self.engine(pieceBytes: 16 * 4096)
        defer { engine.shutdown() }
        let size = 64 * 4096
        let src = HostBuffer(size), back = HostBuffer(size)
        let ch = try engine.makeChannel()
        let s = try engine.registerHostMemory(src.bytes), b = try engine.registerHostMemory(back.bytes)
        let pool = try engine.createVRAMPool(size: size)
        #expect(ch.fixedBuffers.installedPieces == 8)
        fillPattern(src.bytes, seed: 9)
        // One descriptor across the boundary of pieces 0 and 1; one inside piece 2.
        try ch.enqueueCopy(from: DMAAddress(region: s, offset: 12 * 4096), to: pool.address(0), length: 8 * 4096)
        try ch.enqueueCopy(from: DMAAddress(region: s, offset: 33 * 4096), to: pool.address(100 * 4096 % size), length: 4096)
        try ch.submit().wait(timeout: .seconds(20))
        #expect(ch.statistics.operations == 2 && ch.fixedBuffers.operations == 1)
        #expect(same(pool.mapping.baseAddress!, src.bytes.baseAddress! + 12 * 4096, 8 * 4096))
        #expect(try Self.roundTrip(engine, ch, from: src, s, to: back, b, pool: pool, seed: 10))
    }

    @Test(.enabled(if: canPin, "needs CAP_IPC_LOCK or ulimit -l of a few MiB"))
    func unregisterClearsTheSlotsAndTheyAreReused() throws {
        let engine = try Self.engine()
        defer { engine.shutdown() }
        let size = 16 * 4096
        let ch1 = try engine.makeChannel(), ch2 = try engine.makeChannel()
        let first = HostBuffer(size)
        let id = try engine.registerHostMemory(first.bytes)
        #expect(ch1.fixedBuffers.installedPieces == 1 && ch2.fixedBuffers.installedPieces == 1)
        try engine.unregister(id)
        #expect(ch1.fixedBuffers.installedPieces == 0 && ch2.fixedBuffers.installedPieces == 0)
        let src = HostBuffer(size), back = HostBuffer(size)
        let s = try engine.registerHostMemory(src.bytes), b = try engine.registerHostMemory(back.bytes)
        let pool = try engine.createVRAMPool(size: size)
        #expect(ch2.fixedBuffers.installedPieces == 2)
        #expect(try Self.roundTrip(engine, ch2, from: src, s, to: back, b, pool: pool, seed: 4))
        #expect(ch2.fixedBuffers.operations == ch2.statistics.operations)
    }

    /// Memory the kernel will not pin for writing (a read-only mapping) is not installed;
    /// the channel says why, and copies from it still run through the plain opcodes.
    @Test func memoryThatCannotBePinnedStaysUsable() throws {
        let engine = try Self.engine()
        defer { engine.shutdown() }
        let size = 8 * 4096
        let ch = try engine.makeChannel()
        let raw = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        defer { munmap(raw, size) }
        let readOnly = UnsafeMutableRawBufferPointer(start: raw, count: size)
        fillPattern(readOnly, seed: 12)
        #expect(mprotect(raw, size, PROT_READ) == 0)
        let r = try engine.registerHostMemory(readOnly)
        #expect(ch.fixedBuffers.installedPieces == 0)
        let failure = try #require(ch.fixedBuffers.failure)
        #expect(failure.contains("pinning \(size) bytes of \(r)") && failure.contains("plain opcodes"), "\(failure)")
        let pool = try engine.createVRAMPool(size: size)
        try ch.enqueueCopy(from: DMAAddress(region: r, offset: 0), to: pool.address(0), length: size)
        try ch.submit().wait(timeout: .seconds(20))
        #expect(same(pool.mapping.baseAddress!, raw, size) && ch.fixedBuffers.operations == 0)
    }

    /// More pieces than the table has slots: the region is not installed, copies still work.
    @Test(.enabled(if: canPin, "needs CAP_IPC_LOCK or ulimit -l of a few MiB"))
    func aRegionNeedingMoreSlotsThanLeftIsNotInstalled() throws {
        let engine = try Self.engine(pieceBytes: 4096)
        defer { engine.shutdown() }
        let ch = try engine.makeChannel()
        let big = HostBuffer((FixedBufferRegistry.capacity + 1) * 4096)
        let g = try engine.registerHostMemory(big.bytes)
        #expect(ch.fixedBuffers.installedPieces == 0)
        let small = HostBuffer(4096)
        _ = try engine.registerHostMemory(small.bytes)
        #expect(ch.fixedBuffers.installedPieces == 1, "the refused region took no slots")
        let pool = try engine.createVRAMPool(size: 1 << 20)
        fillPattern(big.bytes, seed: 2)
        try ch.enqueueCopy(from: DMAAddress(region: g, offset: 4096), to: pool.address(0), length: 1 << 20)
        try ch.submit().wait(timeout: .seconds(20))
        #expect(same(pool.mapping.baseAddress!, big.bytes.baseAddress! + 4096, 1 << 20))
    }

    /// Regions come and go (slots installed and cleared in the ring) while another thread
    /// copies through a registered one: no copy is disturbed (also run under TSan).
    @Test(.enabled(if: canPin, "needs CAP_IPC_LOCK or ulimit -l of a few MiB"))
    func regionsComeAndGoWhileAChannelCopies() throws {
        let engine = try Self.engine(pieceBytes: 8 * 4096)
        defer { engine.shutdown() }
        let size = 32 * 4096
        let ch = try engine.makeChannel()
        let src = HostBuffer(size), back = HostBuffer(size)
        let s = try engine.registerHostMemory(src.bytes), b = try engine.registerHostMemory(back.bytes)
        let pool = try engine.createVRAMPool(size: size)
        let churn = Thread {
            let spare = HostBuffer(16 * 4096)
            for _ in 0..<50 {
                guard let id = try? engine.registerHostMemory(spare.bytes) else { continue }
                try? engine.unregister(id)
            }
        }
        churn.start()
        var intact = 0
        for round in 0..<30 where try Self.roundTrip(engine, ch, from: src, s, to: back, b, pool: pool, seed: UInt64(round)) {
            intact += 1
        }
        #expect(intact == 30)
        while churn.isExecuting || !churn.isFinished { usleep(1000) }
        #expect(ch.fixedBuffers.installedPieces == 8, "only the two live regions' pieces remain")
    }

    @Test func offByDefaultNothingIsPinned() throws {
        let engine = try DMAEngine(configuration: .init(backend: .ioUring))
        defer { engine.shutdown() }
        #expect(!engine.configuration.fixedBuffers)
        let ch = try engine.makeChannel()
        let src = HostBuffer(4096)
        let s = try engine.registerHostMemory(src.bytes)
        let pool = try engine.createVRAMPool(size: 4096)
        try ch.enqueueCopy(from: DMAAddress(region: s, offset: 0), to: pool.address(0), length: 4096)
        try ch.submit().wait(timeout: .seconds(20))
        #expect(ch.fixedBuffers == FixedBufferStatus())
    }
}
