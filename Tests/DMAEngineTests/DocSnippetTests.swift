import DMAEngine
import Glibc
import Testing

// The code of docs/copy-engine.md as printed there, with each `print` turned into an
// expectation of what the document says it prints. No @testable: public API only.

@Suite struct DocSnippetTests {
    @Test func batchedCopyBenchmark() throws {
        let page = 4096, hostPages = 4096, vramPages = 1024, batch = 256
        let host = UnsafeMutableRawBufferPointer.allocate(byteCount: hostPages * page, alignment: page)
        defer { host.deallocate() }
        for p in 0..<hostPages { memset(host.baseAddress! + p * page, Int32(p & 0xff), page) }

        let engine = try DMAEngine(configuration: .init(backend: .ioUring, queueDepth: 64))
        defer { engine.shutdown() }
        let ram = try engine.registerHostMemory(host, name: "ram")
        let vram = try engine.createVRAMPool(size: vramPages * page)
        let channels = try (0..<2).map { try engine.makeChannel(name: "ce\($0)") }

        let clock = ContinuousClock()
        let start = clock.now
        var fences: [Fence] = []
        for first in stride(from: 0, to: vramPages, by: batch) {
            let channel = channels[(first / batch) % channels.count]
            precondition(channel.capacity >= batch)
            for v in first ..< first + batch {
                try channel.enqueueCopy(from: DMAAddress(region: ram, offset: 4 * v * page),
                                        to: vram.address(v * page), length: page)
            }
            fences.append(try channel.submit())
        }
        for fence in fences { try fence.wait(timeout: .seconds(10)) }
        let elapsed = clock.now - start

        var wrong = 0
        for v in 0..<vramPages where vram.mapping[v * page] != UInt8((4 * v) & 0xff) { wrong += 1 }
        let s = channels[0].statistics
        #expect(fences.count == 4 && wrong == 0 && s.descriptors == 512 && s.operations < s.descriptors)
        #expect("\(Double(vramPages * page) / 1e9 / (elapsed / .seconds(1))) GB/s".hasSuffix(" GB/s"))

        do {
            try channels[0].enqueueCopy(from: DMAAddress(region: ram, offset: 0), to: vram.address(vramPages * page), length: page)
            Issue.record("an address past the pool was accepted")
        } catch {
            #expect("\(error)" == "address region#1+0x400000 + 4096 bytes is outside its region of 4194304 bytes")
            #expect(error.errno == .badAddress)
        }
    }

    /// A VRAM pool over a file of the caller's, as the document says: the descriptor is
    /// built with `.init(rawValue:)`, no SystemPackage import needed.
    @Test func registerAPoolOfYourOwn() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        let path = "/dev/shm/dmem-doc-snippet-\(getpid())"
        let fd = open(path, O_CREAT | O_RDWR, 0o600)
        try #require(fd >= 0)
        unlink(path)
        defer { close(fd) }
        #expect(ftruncate(fd, 1 << 20) == 0)
        let pool = try engine.registerVRAMPool(fd: .init(rawValue: fd), size: 1 << 20, name: "mine")
        #expect(pool.size == 1 << 20 && engine.region(pool.region) != nil)
    }

    /// The failure-path snippet of docs/copy-engine.md (after the benchmark's `host` and
    /// `page`): a fault plan fails descriptor #2, the fence reports it, and the
    /// per-descriptor status of the fence's tickets names it.
    @Test func injectAFailure() throws {
        let page = 4096
        let host = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 * page, alignment: page)
        defer { host.deallocate() }
        memset(host.baseAddress!, 0xAB, 4 * page)

        let plan = FaultPlan(rules: [.init(.nth(2), .fail(.ioError))])   // descriptor #2 of each channel
        let faulty = try DMAEngine(configuration: .init(backend: .faultInjecting(plan, wrapping: .memcpy)))
        defer { faulty.shutdown() }
        let fram = try faulty.registerHostMemory(host, name: "ram")
        let fvram = try faulty.createVRAMPool(size: 4 * page)
        let ce = try faulty.makeChannel(name: "ce0")
        for v in 0..<4 {
            try ce.enqueueCopy(from: DMAAddress(region: fram, offset: v * page), to: fvram.address(v * page), length: page)
        }
        let fence = try ce.submit()
        var thrown = ""
        do { try fence.wait(timeout: .seconds(10)) } catch { thrown = "\(error)" }
        #expect(thrown == "1 descriptor(s) failed, first: descriptor #2 (ticket 2): Input/output error, 0 bytes done")
        #expect("\(try ce.status(of: fence.tickets))"
                == "[succeeded, succeeded, failed (Input/output error, 0 bytes done), succeeded]")
        #expect(fence.failures.map(\.index) == [2])
        #expect(fvram.mapping[0] == 0xAB && fvram.mapping[2 * page] == 0)   // "copied nothing"
    }
}
