@testable import DMAEngine
import Glibc
import SystemPackage
import Testing

/// Round trips in every direction, sizes from 1 byte to many MiB, unaligned offsets.
@Suite struct DMAChannelTests {
    static let sizes = [1, 3, 4095, 4096, 4097, 65_543, 1 << 20, (9 << 20) + 13]

    @Test(arguments: BackendUnderTest.allCases)
    func roundTripEveryDirectionAndSize(_ backend: BackendUnderTest) throws {
        let engine = try backend.engine()
        defer { engine.shutdown() }
        let cap = 12 << 20
        let src = HostBuffer(cap), back = HostBuffer(cap), other = HostBuffer(cap)
        let srcID = try engine.registerHostMemory(src.bytes)
        let backID = try engine.registerHostMemory(back.bytes)
        let otherID = try engine.registerHostMemory(other.bytes)
        let vramA = try engine.createVRAMPool(size: cap, name: "a")
        let vramB = try engine.createVRAMPool(size: cap, name: "b")
        let ch = try engine.makeChannel()
        fillPattern(src.bytes, seed: 7)
        for (n, size) in Self.sizes.enumerated() {
            let (hs, va, vb, hd) = (n * 17 % 4096, n * 513 % 4096 + 1, n * 31 % 4096, n * 7 % 4096 + 3)
            memset(back.bytes.baseAddress!, 0, cap)
            try ch.enqueueCopy(from: DMAAddress(region: srcID, offset: hs), to: vramA.address(va), length: size)
            try ch.enqueueCopy(from: vramA.address(va), to: vramB.address(vb), length: size, flags: .fence)
            try ch.enqueueCopy(from: vramB.address(vb), to: DMAAddress(region: backID, offset: hd), length: size, flags: .fence)
            try ch.enqueueCopy(from: DMAAddress(region: backID, offset: hd), to: DMAAddress(region: otherID, offset: 0),
                               length: size, flags: .fence)
            try ch.submit().wait(timeout: .seconds(20))
            let s = src.bytes.baseAddress! + hs
            #expect(same(s, vramA.mapping.baseAddress! + va, size), "h2d size \(size)")
            #expect(same(s, vramB.mapping.baseAddress! + vb, size), "d2d size \(size)")
            #expect(same(s, back.bytes.baseAddress! + hd, size), "d2h size \(size)")
            #expect(same(s, other.bytes.baseAddress!, size), "h2h size \(size)")
            #expect(back.bytes[hd + size] == 0 && (hd == 0 || back.bytes[hd - 1] == 0), "no bytes outside the range")
        }
    }

    @Test(arguments: BackendUnderTest.allCases)
    func fillAndClearOfVRAMRanges(_ backend: BackendUnderTest) throws {
        let engine = try backend.engine()
        defer { engine.shutdown() }
        let vram = try engine.createVRAMPool(size: 8 << 20)
        memset(vram.mapping.baseAddress!, 0x11, 8 << 20)
        let ch = try engine.makeChannel()
        try ch.enqueueFill(vram.address(5), length: (3 << 20) + 1, value: 0xAB)
        try ch.enqueueFill(vram.address((3 << 20) + 6), length: 4096, value: 0xCD)
        try ch.enqueueFill(vram.address(6 << 20), length: 1 << 20)  // clear
        try ch.submit().wait(timeout: .seconds(20))
        let m = vram.mapping
        #expect(m[4] == 0x11 && m[5] == 0xAB && m[(3 << 20) + 5] == 0xAB && m[(3 << 20) + 6] == 0xCD)
        #expect(m[(3 << 20) + 6 + 4095] == 0xCD && m[(3 << 20) + 6 + 4096] == 0x11)
        #expect(m[(6 << 20) - 1] == 0x11 && m[6 << 20] == 0 && m[(7 << 20) - 1] == 0 && m[7 << 20] == 0x11)
        #expect((5..<(3 << 20) + 6).allSatisfy { m[$0] == 0xAB })
    }

    @Test func ticketsIncreaseAndCompletedTicketFollowsFences() throws {
        let engine = try BackendUnderTest.iouring.engine()
        defer { engine.shutdown() }
        let host = HostBuffer(1 << 20)
        let h = try engine.registerHostMemory(host.bytes)
        let vram = try engine.createVRAMPool(size: 1 << 20)
        let ch = try engine.makeChannel()
        #expect(ch.lastCompletedTicket == nil)
        let t0 = try ch.enqueueCopy(from: DMAAddress(region: h, offset: 0), to: vram.address(0), length: 10)
        let t1 = try ch.enqueueFill(vram.address(100), length: 10)
        #expect(t0.rawValue == 0 && t1.rawValue == 1)
        let f1 = try ch.submit()
        #expect(f1.seqno == 1 && f1.tickets == DMATicket(rawValue: 0)..<DMATicket(rawValue: 2))
        try f1.wait(timeout: .seconds(10))
        #expect(ch.lastCompletedTicket == t1)
        let empty = try ch.submit()
        #expect(empty.seqno == 2 && empty.tickets.isEmpty)
        try empty.wait(timeout: .seconds(10))
        #expect(ch.statistics.descriptors == 2 && ch.statistics.batches == 1)
    }

    // MARK: Bad input: typed errors, nothing enqueued

    @Test func badInputThrowsTypedErrors() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy, maxBatch: 4))
        defer { engine.shutdown() }
        let host = HostBuffer(1 << 16)
        let h = try engine.registerHostMemory(host.bytes)
        let vram = try engine.createVRAMPool(size: 1 << 16)
        let ch = try engine.makeChannel()
        let ghost = RegionID(rawValue: 999)
        let a = DMAAddress(region: h, offset: 0)

        #expect(throws: DMAError.zeroLength) { try ch.enqueueCopy(from: a, to: vram.address(0), length: 0) }
        #expect(throws: DMAError.invalidArgument("negative length -1")) { try ch.enqueueCopy(from: a, to: vram.address(0), length: -1) }
        #expect(throws: DMAError.unknownRegion(ghost)) {
            try ch.enqueueCopy(from: DMAAddress(region: ghost, offset: 0), to: vram.address(0), length: 1)
        }
        #expect(throws: DMAError.outOfRange(vram.address(65_535), length: 2, regionLength: 65_536)) {
            try ch.enqueueCopy(from: a, to: vram.address(65_535), length: 2)
        }
        #expect(throws: DMAError.outOfRange(vram.address(-1), length: 1, regionLength: 65_536)) {
            try ch.enqueueFill(vram.address(-1), length: 1)
        }
        #expect(throws: DMAError.outOfRange(vram.address(Int.max), length: 2, regionLength: 65_536)) {
            try ch.enqueueCopy(from: a, to: vram.address(Int.max), length: 2)
        }
        #expect(throws: DMAError.overlappingRange(source: vram.address(0), destination: vram.address(100), length: 101)) {
            try ch.enqueueCopy(from: vram.address(0), to: vram.address(100), length: 101)
        }
        #expect(throws: DMAError.self) { try ch.enqueueCopy(from: a, to: vram.address(0), length: DMAChannel.maxDescriptorLength + 1) }
        #expect(ch.capacity == 4)
        // Adjacent (touching, not overlapping) ranges in one region are fine.
        try ch.enqueueCopy(from: vram.address(0), to: vram.address(100), length: 100)
        for _ in 0..<3 { try ch.enqueueFill(vram.address(0), length: 1) }
        #expect(ch.capacity == 0)
        #expect(throws: DMAError.batchFull(capacity: 4)) { try ch.enqueueFill(vram.address(0), length: 1) }
        try ch.submit().wait(timeout: .seconds(5))
        #expect(ch.capacity == 4)
        #expect(DMAError.batchFull(capacity: 4).errno == .noSpace)
        #expect(DMAError.zeroLength.errno == .invalidArgument)
        #expect(DMAError.unknownRegion(ghost).errno == .noSuchFileOrDirectory)
    }

    /// The same bytes under two region ids (host memory registered twice, a VRAM pool's
    /// mapping registered as host memory) still overlap: refused, not an overlapping memcpy.
    @Test func overlapIsCheckedOnTheBytesNotTheRegion() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        let host = HostBuffer(1 << 16)
        let a = try engine.registerHostMemory(host.bytes)
        let b = try engine.registerHostMemory(UnsafeMutableRawBufferPointer(rebasing: host.bytes[4096...]))
        let vram = try engine.createVRAMPool(size: 1 << 16)
        let view = try engine.registerHostMemory(UnsafeMutableRawBufferPointer(start: vram.mapping.baseAddress, count: 1 << 16))
        let ch = try engine.makeChannel()
        // b's offset 0 is a's offset 4096.
        #expect(throws: DMAError.overlappingRange(source: DMAAddress(region: a, offset: 2048),
                                                  destination: DMAAddress(region: b, offset: 0), length: 4096)) {
            try ch.enqueueCopy(from: DMAAddress(region: a, offset: 2048), to: DMAAddress(region: b, offset: 0), length: 4096)
        }
        #expect(throws: DMAError.overlappingRange(source: vram.address(8192), destination: DMAAddress(region: view, offset: 12287),
                                                  length: 4096)) {
            try ch.enqueueCopy(from: vram.address(8192), to: DMAAddress(region: view, offset: 12287), length: 4096)
        }
        #expect(ch.capacity == ch.maxBatch)
        // Touching is not overlapping, whatever the regions.
        fillPattern(host.bytes, seed: 31)
        try ch.enqueueCopy(from: DMAAddress(region: a, offset: 0), to: DMAAddress(region: b, offset: 0), length: 4096)
        try ch.enqueueCopy(from: vram.address(0), to: DMAAddress(region: view, offset: 4096), length: 4096)
        try ch.submit().wait(timeout: .seconds(5))
        #expect(same(host.bytes.baseAddress!, host.bytes.baseAddress! + 4096, 4096))
    }

    @Test func discardPendingDropsUnsubmittedWork() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        let vram = try engine.createVRAMPool(size: 4096)
        let ch = try engine.makeChannel()
        try ch.enqueueFill(vram.address(0), length: 4096, value: 9)
        #expect(ch.discardPending() == 1)
        let f = try ch.submit()
        try f.wait(timeout: .seconds(5))
        #expect(f.tickets.isEmpty && vram.mapping[0] == 0)
    }
}
