@testable import DMAEngine
import Dispatch
import Glibc
import Testing

/// Several threads submitting to several channels (and to one shared channel) at once.
@Suite struct ConcurrencyTests {
    @Test(arguments: [BackendUnderTest.iouring, .iouringNoCoalesce, .memcpy, .mapped])
    func threadsWithTheirOwnChannels(_ backend: BackendUnderTest) throws {
        let engine = try backend.engine(queueDepth: 8)
        defer { engine.shutdown() }
        let threads = 4, pages = 256, page = 4096
        let ram = HostBuffer(threads * pages * page), back = HostBuffer(threads * pages * page)
        let r = try engine.registerHostMemory(ram.bytes), b = try engine.registerHostMemory(back.bytes)
        let vram = try engine.createVRAMPool(size: threads * pages * page)
        fillPattern(ram.bytes, seed: 77)
        let channels = try (0..<threads).map { _ in try engine.makeChannel() }
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let ch = channels[t]
            let base = t * pages * page
            for round in 0..<6 {
                do {
                    for p in 0..<pages {
                        let hp = (p * 37 + round) % pages  // a different scatter each round
                        try ch.enqueueCopy(from: DMAAddress(region: r, offset: base + hp * page),
                                           to: vram.address(base + p * page), length: page)
                    }
                    let f = try ch.submit()
                    for p in 0..<pages {
                        let hp = (p * 37 + round) % pages
                        try ch.enqueueCopy(from: vram.address(base + p * page),
                                           to: DMAAddress(region: b, offset: base + hp * page), length: page,
                                           flags: p == 0 ? .fence : [])
                    }
                    try ch.submit().wait(timeout: .seconds(30))
                    #expect(f.isSignaled)
                    #expect(same(ram.bytes.baseAddress! + base, back.bytes.baseAddress! + base, pages * page))
                } catch {
                    Issue.record("thread \(t): \(error)")
                }
            }
        }
    }

    @Test func threadsSharingOneChannel() throws {
        let engine = try BackendUnderTest.iouring.engine(queueDepth: 4)
        defer { engine.shutdown() }
        let threads = 4, per = 500
        let vram = try engine.createVRAMPool(size: threads * per * 16)
        let ch = try engine.makeChannel()
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            do {
                for i in 0..<per {
                    try ch.enqueueFill(vram.address((t * per + i) * 16), length: 16, value: UInt8(t + 1))
                    if i % 50 == 49 { _ = try ch.submit() }
                }
                try ch.submit().wait(timeout: .seconds(30))
            } catch {
                Issue.record("thread \(t): \(error)")
            }
        }
        let m = vram.mapping
        for t in 0..<threads {
            #expect((t * per * 16..<(t + 1) * per * 16).allSatisfy { m[$0] == UInt8(t + 1) })
        }
        #expect(ch.statistics.descriptors == threads * per)
        #expect(ch.lastCompletedTicket == DMATicket(rawValue: UInt64(threads * per - 1)))
    }
}
