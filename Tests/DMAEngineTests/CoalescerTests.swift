import CUring
@testable import DMAEngine
import Glibc
import Testing

/// How descriptors become ring operations, and that scattered batches survive it.
@Suite struct CoalescerTests {
    /// Plans every operation of `descriptors` and returns (descriptor count, iovec count) per op.
    func plan(_ descriptors: [CopyDescriptor], enabled: Bool = true) -> [(Int, Int)] {
        let buffer = UnsafeMutableBufferPointer<CopyDescriptor>.allocate(capacity: max(descriptors.count, 1))
        _ = buffer.initialize(fromContentsOf: descriptors)
        let pool = DescriptorPool(capacity: 1)
        let fence = Fence(seqno: 1, channelID: 0, tickets: 0..<UInt64(descriptors.count), descriptors: buffer,
                          timeline: ChannelTimeline(pool: pool))
        let batch = CopyBatch(fence: fence, base: UnsafePointer(buffer.baseAddress!), indices: 0..<descriptors.count)
        let c = Coalescer(enabled: enabled)
        let iov = UnsafeMutablePointer<iovec>.allocate(capacity: c.maxIovecs)
        defer { iov.deallocate(); buffer.deallocate() }
        var out: [(Int, Int)] = []
        var i = 0
        while i < descriptors.count {
            let op = c.plan(batch, from: i, into: iov)
            #expect(op.bytes == descriptors[op.descriptors].reduce(0) { $0 + $1.length })
            out.append((op.descriptors.count, op.iovecCount))
            i = op.descriptors.upperBound
        }
        return out
    }

    nonisolated(unsafe) static let host = UnsafeMutableRawPointer(bitPattern: 0x1000_0000)!
    nonisolated(unsafe) static let vram = UnsafeMutableRawPointer(bitPattern: 0x8000_0000)!

    func h2d(hostPage: Int, vramOffset: Int, length: Int = 4096, fd: Int32 = 9, flags: DescriptorFlags = []) -> CopyDescriptor {
        CopyDescriptor(operation: .copy, flags: flags, fillValue: 0, length: length,
                       source: CopyEndpoint(pointer: Self.host + hostPage * 4096, fd: -1, fileOffset: hostPage * 4096, region: RegionID(rawValue: 0)),
                       destination: CopyEndpoint(pointer: Self.vram + vramOffset, fd: fd, fileOffset: vramOffset, region: RegionID(rawValue: 1)),
                       ticket: DMATicket(rawValue: 0))
    }

    func d2h(hostPage: Int, vramOffset: Int) -> CopyDescriptor {
        var d = h2d(hostPage: hostPage, vramOffset: vramOffset)
        swap(&d.source, &d.destination)
        return d
    }

    @Test func scatteredHostPagesToContiguousVRAMBecomeOneVectoredOp() {
        let pages = (0..<512).map { ($0 * 7919) % 4096 * 2 }  // never adjacent
        let ops = plan(pages.enumerated().map { h2d(hostPage: $1, vramOffset: $0 * 4096) })
        #expect(ops.count == 1 && ops[0] == (512, 512))
        let back = plan(pages.enumerated().map { d2h(hostPage: $1, vramOffset: $0 * 4096) })
        #expect(back.count == 1 && back[0] == (512, 512))
    }

    /// Two descriptors contiguous in one VRAM file but not adjacent in host memory: one
    /// operation at the first file offset, two iovecs with each descriptor's own base and
    /// length (merging them would copy the bytes between the two host pieces).
    @Test func hostPiecesThatAreNotAdjacentKeepTheirOwnIovecs() {
        let ds = [h2d(hostPage: 5, vramOffset: 8192, length: 4096), h2d(hostPage: 7, vramOffset: 8192 + 4096, length: 2048)]
        let buffer = UnsafeMutableBufferPointer<CopyDescriptor>.allocate(capacity: 2)
        _ = buffer.initialize(fromContentsOf: ds)
        let fence = Fence(seqno: 1, channelID: 0, tickets: 0..<2, descriptors: buffer,
                          timeline: ChannelTimeline(pool: DescriptorPool(capacity: 1)))
        let batch = CopyBatch(fence: fence, base: UnsafePointer(buffer.baseAddress!), indices: 0..<2)
        let c = Coalescer(enabled: true)
        let iov = UnsafeMutablePointer<iovec>.allocate(capacity: c.maxIovecs)
        defer { iov.deallocate(); buffer.deallocate() }
        let op = c.plan(batch, from: 0, into: iov)
        #expect(op.descriptors == 0..<2 && op.bytes == 6144 && op.access == .write(fd: 9, offset: 8192))
        #expect(op.iovecCount == 2)
        #expect(iov[0].iov_base == Self.host + 5 * 4096 && iov[0].iov_len == 4096)
        #expect(iov[1].iov_base == Self.host + 7 * 4096 && iov[1].iov_len == 2048)
    }

    @Test func contiguousOnBothSidesIsOneIovec() {
        let ops = plan((0..<300).map { h2d(hostPage: $0, vramOffset: $0 * 4096) })
        #expect(ops.count == 1 && ops[0] == (300, 1))
    }

    @Test func splitsAtIOVMax() {
        let n = Int(cu_iov_max()) + 500
        let ops = plan((0..<n).map { h2d(hostPage: $0 * 2, vramOffset: $0 * 4096) })
        #expect(ops.map(\.0) == [Int(cu_iov_max()), 500])
    }

    @Test func breaksOnVRAMGapFileDirectionAndFenceFlag() {
        let ds = [h2d(hostPage: 0, vramOffset: 0), h2d(hostPage: 2, vramOffset: 4096),
                  h2d(hostPage: 4, vramOffset: 3 * 4096),                       // gap on the VRAM side
                  h2d(hostPage: 6, vramOffset: 4 * 4096, fd: 10),               // another pool
                  d2h(hostPage: 8, vramOffset: 5 * 4096),                       // other direction
                  h2d(hostPage: 10, vramOffset: 6 * 4096), h2d(hostPage: 12, vramOffset: 7 * 4096, flags: .fence)]
        #expect(plan(ds).map(\.0) == [2, 1, 1, 1, 1, 1])
        #expect(plan(ds, enabled: false).map(\.0) == [1, 1, 1, 1, 1, 1, 1])
    }

    /// D2D: both sides are files; the run follows whichever side is contiguous.
    @Test func deviceToDeviceFollowsTheContiguousSide() {
        func d2d(src: Int, dst: Int) -> CopyDescriptor {
            var d = h2d(hostPage: 0, vramOffset: dst * 4096)
            d.source = CopyEndpoint(pointer: Self.host + src * 4096, fd: 8, fileOffset: src * 4096, region: RegionID(rawValue: 2))
            return d
        }
        let scatteredSource = (0..<64).map { d2d(src: ($0 * 37) % 64 * 2, dst: $0) }
        #expect(plan(scatteredSource).map(\.0) == [64])
        let scatteredDestination = (0..<64).map { d2d(src: $0, dst: ($0 * 37) % 64 * 2) }
        #expect(plan(scatteredDestination).map(\.0) == [64])
        #expect(FileAccess(scatteredSource[0]) == .read(fd: 8, offset: scatteredSource[0].source.fileOffset))
    }

    @Test func fillsJoinARunAsPatternIovecs() {
        var fill = h2d(hostPage: 0, vramOffset: 4096, length: (2 << 20) + 1)
        fill.operation = .fill
        fill.fillValue = 3
        let ops = plan([h2d(hostPage: 0, vramOffset: 0), fill])
        #expect(ops.count == 1 && ops[0] == (2, 1 + 3))
    }

    /// Random scatter lists, both directions, coalescing on and off: byte-for-byte.
    @Test(arguments: [true, false])
    func randomScatterRoundTrips(_ coalescing: Bool) throws {
        let engine = try DMAEngine(configuration: .init(backend: .ioUring, queueDepth: 8, coalescing: coalescing))
        defer { engine.shutdown() }
        let frames = 2048, page = 4096
        let ram = HostBuffer(frames * page), back = HostBuffer(frames * page)
        let r = try engine.registerHostMemory(ram.bytes), b = try engine.registerHostMemory(back.bytes)
        let vram = try engine.createVRAMPool(size: 1024 * page)
        fillPattern(ram.bytes, seed: coalescing ? 1 : 2)
        var rng = SplitMix64(seed: 99)
        let ch = try engine.makeChannel()
        for round in 0..<4 {
            let chosen = Array((0..<frames).shuffled(using: &rng).prefix(1024))
            let runs = [1, 7, 300, 716]  // batch sizes that sum to 1024
            var start = 0
            for n in runs {
                for k in start..<start + n {
                    try ch.enqueueCopy(from: DMAAddress(region: r, offset: chosen[k] * page), to: vram.address(k * page), length: page)
                }
                _ = try ch.submit()
                start += n
            }
            try ch.submit().wait(timeout: .seconds(20))
            memset(back.bytes.baseAddress!, 0, frames * page)
            for (k, frame) in chosen.enumerated() {
                try ch.enqueueCopy(from: vram.address(k * page), to: DMAAddress(region: b, offset: frame * page), length: page)
            }
            try ch.submit().wait(timeout: .seconds(20))
            let bad = chosen.filter { !same(ram.bytes.baseAddress! + $0 * page, back.bytes.baseAddress! + $0 * page, page) }
            #expect(bad.isEmpty, "round \(round): \(bad.count) pages differ")
        }
        let stats = ch.statistics
        #expect(coalescing ? stats.operations < stats.descriptors / 50 : stats.operations == stats.descriptors)
    }
}
