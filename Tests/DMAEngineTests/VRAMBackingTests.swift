import CUring
@testable import DMAEngine
import Foundation
import Glibc
import SystemPackage
import Testing

/// Where a pool's bytes live: memfds, or unnamed files in a directory (a tmpfs that may
/// be mounted huge=always); huge-page advice; the shmem THP setting it depends on.
@Suite struct VRAMBackingTests {
    static let unit = 64 << 10
    /// A tmpfs every Linux machine has; O_TMPFILE works on it.
    static let tmpfs = "/dev/shm"

    /// A striped pool in a directory: every direction round-trips through io_uring, its files are
    /// unnamed (no link in the directory: other processes' names there come and go, so the
    /// link count is asked, not the listing) and were populated at creation.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: tmpfs), "needs a tmpfs at /dev/shm"), arguments: [1, 3])
    func poolInADirectoryRoundTripsAndLeavesNoNames(_ files: Int) throws {
        let engine = try DMAEngine(configuration: .init(backend: .ioUring))
        defer { engine.shutdown() }
        let size = 12 * Self.unit
        let layout = VRAMPool.Layout(files: files, granule: Self.unit, directory: Self.tmpfs)
        let pool = try engine.createVRAMPool(size: size, layout: layout)
        let other = try engine.createVRAMPool(size: size, layout: layout)
        #expect(pool.files.count == files && pool.layout.directory == Self.tmpfs)
        for f in pool.files {
            var st = stat()
            #expect(fstat(f.rawValue, &st) == 0 && Int(st.st_blocks) * 512 >= Int(st.st_size), "populated at creation")
            #expect(st.st_nlink == 0, "O_TMPFILE files have no name")
        }
        let src = HostBuffer(size), back = HostBuffer(size)
        fillPattern(src.bytes, seed: 31)
        let s = try engine.registerHostMemory(src.bytes), b = try engine.registerHostMemory(back.bytes)
        let ch = try engine.makeChannel()
        try ch.enqueueCopy(from: DMAAddress(region: s, offset: 0), to: pool.address(0), length: size)
        try ch.enqueueCopy(from: pool.address(100), to: other.address(0), length: size - 100, flags: .fence)
        try ch.enqueueCopy(from: other.address(0), to: DMAAddress(region: b, offset: 100), length: size - 100, flags: .fence)
        try ch.submit().wait(timeout: .seconds(20))
        #expect(same(src.bytes.baseAddress!, pool.mapping.baseAddress!, size))
        #expect(same(src.bytes.baseAddress! + 100, back.bytes.baseAddress! + 100, size - 100))
        #expect(back.bytes[0] == 0)
    }

    @Test func badDirectoriesThrowTypedErrors() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        #expect(throws: DMAError.invalidArgument("VRAM layout directory \"\" is not a usable path")) {
            try engine.createVRAMPool(size: 1 << 20, layout: .init(directory: ""))
        }
        #expect(throws: DMAError.system(.noSuchFileOrDirectory, operation: "open(/nonexistent/dmem, O_TMPFILE) for a VRAM file")) {
            try engine.createVRAMPool(size: 1 << 20, layout: .init(directory: "/nonexistent/dmem"))
        }
        #expect(throws: DMAError.system(.notDirectory, operation: "open(/proc/self/status, O_TMPFILE) for a VRAM file")) {
            try engine.createVRAMPool(size: 1 << 20, layout: .init(directory: "/proc/self/status"))
        }
        // The engine is unharmed: a memfd pool still works.
        #expect(try engine.createVRAMPool(size: 1 << 20).files.count == 1)
    }

    /// Pools are mapped 2 MiB-aligned (so an advised mapping can hold huge pages), with or without advice.
    @Test(arguments: [true, false])
    func mappingIsHugePageAligned(_ hugePages: Bool) throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        for (size, files) in [(4 << 20, 1), (8 << 20, 4), ((6 << 20) + 4096, 2)] {
            let pool = try engine.createVRAMPool(size: size, layout: .init(files: files, hugePages: hugePages))
            #expect(Int(bitPattern: pool.mapping.baseAddress!) % VRAMPool.hugePageSize == 0, "\(size) bytes, \(files) files")
            let expected = HostBuffer(size)
            fillPattern(expected.bytes, seed: UInt64(size))
            fillPattern(pool.mapping, seed: UInt64(size))
            #expect(same(expected.bytes.baseAddress!, pool.mapping.baseAddress!, size), "the whole pool is mapped read-write")
        }
    }

    /// Sizes near Int.max fail with a typed error: no overflow trap while reserving the
    /// aligned address range.
    @Test func hugeSizesThrowInsteadOfTrapping() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        for size in [Int.max - 4095 - (1 << 20), Int.max - (8 << 20), 1 << 62] {
            #expect(throws: DMAError.self) { try engine.createVRAMPool(size: size, layout: .init(populate: false)) }
        }
        #expect(try engine.createVRAMPool(size: 4 << 20).size == 4 << 20, "the engine is unharmed")
    }

    /// A populated pool larger than the machine can give throws ENOMEM before a page is
    /// allocated (the OOM killer would otherwise pick a victim); a sparse one is not refused.
    @Test func populatedPoolsBeyondAvailableMemoryAreRefused() throws {
        let available = try #require(SystemMemory.available())
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        let size = (2 * available / (2 << 20) + 1) * (2 << 20)   // twice: nothing running beside can free that much
        #expect {
            try engine.createVRAMPool(size: size)
        } throws: { error in
            guard case .system(let e, let operation)? = error as? DMAError else { return false }
            return e == .noMemory && operation.contains("MemAvailable")
        }
        let sparse = try engine.createVRAMPool(size: size, layout: .init(populate: false))
        try engine.unregister(sparse.region)
        #expect(try engine.createVRAMPool(size: 4 << 20).size == 4 << 20, "the engine is unharmed")
    }

    @Test func memAvailableIsReadInBytes() {
        let text = "MemTotal:       24684084 kB\nMemFree:         1234 kB\nMemAvailable:   20000000 kB\nBuffers: 1 kB\n"
        #expect(SystemMemory.parseAvailable(text) == 20_000_000 * 1024)
        #expect(SystemMemory.parseAvailable("MemTotal: 5 kB\n") == nil)
        #expect(SystemMemory.parseAvailable("MemAvailable: lots kB\n") == nil)
        #expect(SystemMemory.parseAvailable("MemAvailable: 5 MB\n") == nil)
        #expect(SystemMemory.parseAvailable("MemAvailable: \(Int.max) kB\n") == Int.max)
        #expect(SystemMemory.usable(of: 1000) == 900)
    }

    @Test func shmemSettingIsTheBracketedWord() {
        #expect(ShmemHugePages.parse("always within_size advise [never] deny force\n") == .never)
        #expect(ShmemHugePages.parse("always within_size [advise] never deny force") == .advise)
        #expect(ShmemHugePages.parse("[always] within_size advise never deny force") == .always)
        #expect(ShmemHugePages.parse("always [within_size] advise never") == .withinSize)
        #expect(ShmemHugePages.parse("always within_size advise never") == .unknown)
        #expect(ShmemHugePages.parse("[sometimes]") == .unknown)
        #expect(ShmemHugePages.read(path: "/nonexistent") == .unknown)
        #expect(ShmemHugePages.advise.honoursAdvice && !ShmemHugePages.always.honoursAdvice)
        #expect(ShmemHugePages.withinSize.allowsHugePages && !ShmemHugePages.never.allowsHugePages && !ShmemHugePages.deny.allowsHugePages)
    }
}
