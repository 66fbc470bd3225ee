import CUring
@testable import DMAEngine
import Glibc
import SystemPackage
import Testing

/// VRAM pools striped over several memfds: layout, one contiguous mapping, population,
/// and descriptors that cross stripe units.
@Suite struct VRAMPoolTests {
    static let unit = 64 << 10
    static let small = VRAMPool.Layout(files: 3, granule: unit)

    @Test func effectiveLayoutFollowsThePoolSize() throws {
        let page = 4096
        #expect(try VRAMPool.Layout.default.effective(size: 1 << 20, pageSize: page).files == 1)
        #expect(try VRAMPool.Layout.default.effective(size: 8 << 20, pageSize: page) == .init(files: 4, granule: 2 << 20))
        #expect(try VRAMPool.Layout.default.effective(size: (8 << 20) + 1, pageSize: page).files == 5)
        #expect(try VRAMPool.Layout.default.effective(size: 256 << 20, pageSize: page).files == 16)
        // A pool of more than maxMappings units gets larger units instead of more mappings.
        let huge = try VRAMPool.Layout.default.effective(size: 16 << 30, pageSize: page)
        #expect(huge.granule == 4 << 20 && (16 << 30) / huge.granule <= VRAMPool.Layout.maxMappings)
        #expect(try VRAMPool.Layout(files: 1, granule: 1 << 12).effective(size: 1 << 30, pageSize: page).files == 1)
    }

    @Test func badLayoutsThrowTypedErrors() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        #expect(throws: DMAError.invalidArgument("VRAM layout files 0 outside 1…256")) {
            try engine.createVRAMPool(size: 1 << 20, layout: .init(files: 0))
        }
        #expect(throws: DMAError.invalidArgument("VRAM layout files 257 outside 1…256")) {
            try engine.createVRAMPool(size: 1 << 20, layout: .init(files: 257))
        }
        #expect(throws: DMAError.invalidArgument("VRAM layout granule 12288 is not a power of two of at least one page (4096)")) {
            try engine.createVRAMPool(size: 1 << 20, layout: .init(granule: 12288))
        }
        #expect(throws: DMAError.invalidArgument("VRAM layout granule 2048 is not a power of two of at least one page (4096)")) {
            try engine.createVRAMPool(size: 1 << 20, layout: .init(granule: 2048))
        }
        #expect(throws: DMAError.invalidArgument("VRAM pool size \(Int.max) is not a positive mappable size")) {
            try engine.createVRAMPool(size: .max)
        }
    }

    /// Unit u of the pool is file u % n at offset (u / n) × granule, and the mapping shows them in order.
    @Test func stripedPoolMapsUnitsRoundRobinIntoOneContiguousMapping() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        let size = 16 * Self.unit + 5000  // a partial last unit
        let pool = try engine.createVRAMPool(size: size, layout: Self.small)
        #expect(pool.layout == Self.small && pool.files.count == 3)
        fillPattern(pool.mapping, seed: 21)
        let buffer = HostBuffer(Self.unit)
        for u in 0...16 {
            let length = min(Self.unit, size - u * Self.unit)
            let n = pread(pool.files[u % 3].rawValue, buffer.bytes.baseAddress!, length, off_t((u / 3) * Self.unit))
            #expect(n == length && same(buffer.bytes.baseAddress!, pool.mapping.baseAddress! + u * Self.unit, length), "unit \(u)")
        }
    }

    @Test(arguments: [true, false])
    func populateAllocatesEveryPageAtCreation(_ populate: Bool) throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        let pool = try engine.createVRAMPool(size: 12 * Self.unit, layout: .init(files: 3, granule: Self.unit, populate: populate))
        for f in pool.files {
            var st = stat()
            #expect(fstat(f.rawValue, &st) == 0 && st.st_size == 4 * Self.unit)
            #expect(Int(st.st_blocks) * 512 == (populate ? 4 * Self.unit : 0))
        }
    }

    /// Descriptors crossing several units, at odd offsets, every direction, coalescing on and off.
    @Test(arguments: BackendUnderTest.allCases)
    func descriptorsCrossingStripeUnitsRoundTrip(_ backend: BackendUnderTest) throws {
        let engine = try backend.engine(queueDepth: 4)
        defer { engine.shutdown() }
        let size = 40 * Self.unit
        let src = HostBuffer(size), back = HostBuffer(size)
        let s = try engine.registerHostMemory(src.bytes), b = try engine.registerHostMemory(back.bytes)
        let vramA = try engine.createVRAMPool(size: size, layout: Self.small)
        let vramB = try engine.createVRAMPool(size: size, layout: .init(files: 5, granule: Self.unit))
        fillPattern(src.bytes, seed: 4)
        let ch = try engine.makeChannel()
        for (offset, length) in [(1, 7 * Self.unit + 3), (Self.unit - 1, 2), (3 * Self.unit, Self.unit), (12345, 20 * Self.unit)] {
            memset(back.bytes.baseAddress!, 0, size)
            try ch.enqueueCopy(from: DMAAddress(region: s, offset: offset), to: vramA.address(offset + 100), length: length)
            try ch.enqueueCopy(from: vramA.address(offset + 100), to: vramB.address(offset), length: length, flags: .fence)
            try ch.enqueueCopy(from: vramB.address(offset), to: DMAAddress(region: b, offset: offset), length: length, flags: .fence)
            try ch.enqueueFill(vramA.address(offset + 100), length: length, value: 0xE7, flags: .fence)
            try ch.submit().wait(timeout: .seconds(20))
            #expect(same(src.bytes.baseAddress! + offset, back.bytes.baseAddress! + offset, length), "\(offset)+\(length)")
            #expect(back.bytes[offset - 1] == 0 && back.bytes[offset + length] == 0)
            let a = vramA.mapping
            #expect((offset + 100..<offset + 100 + length).allSatisfy { a[$0] == 0xE7 })
        }
        if backend.kind.usesIOURing {
            #expect(ch.statistics.operations >= 100, "one ring operation per unit a descriptor crosses")
        }
    }

    /// A piece that comes up short (its memfd shrank) fails its descriptor with the prefix
    /// before it; pieces after it still ran, the next descriptor is unaffected.
    @Test func shortPieceReportsThePrefixBeforeTheEarliestFailure() throws {
        let engine = try DMAEngine(configuration: .init(backend: .ioUring))
        defer { engine.shutdown() }
        let pool = try engine.createVRAMPool(size: 12 * Self.unit, layout: .init(files: 4, granule: Self.unit))
        fillPattern(pool.mapping, seed: 8)
        let host = HostBuffer(12 * Self.unit)
        let h = try engine.registerHostMemory(host.bytes)
        // Unit 2 is file 2, offset 0: keep only its first 16 KiB.
        try #require(ftruncate(pool.files[2].rawValue, 16 << 10) == 0)
        let ch = try engine.makeChannel()
        let start = Self.unit / 2, length = 3 * Self.unit
        try ch.enqueueCopy(from: pool.address(start), to: DMAAddress(region: h, offset: start), length: length)
        try ch.enqueueCopy(from: pool.address(5 * Self.unit), to: DMAAddress(region: h, offset: 5 * Self.unit), length: 100)
        let f = try ch.submit()
        #expect(f.waitForSignal(timeout: .seconds(10)))
        let prefix = (2 * Self.unit - start) + (16 << 10)
        #expect(f.failures == [DescriptorFailure(ticket: DMATicket(rawValue: 0), index: 0, errno: .ioError, bytesCompleted: prefix)])
        let m = pool.mapping.baseAddress!, hb = host.bytes.baseAddress!
        #expect(same(m + start, hb + start, prefix))
        #expect(same(m + 3 * Self.unit, hb + 3 * Self.unit, start), "the piece after the short one ran")
        #expect(same(m + 5 * Self.unit, hb + 5 * Self.unit, 100))
    }
}
