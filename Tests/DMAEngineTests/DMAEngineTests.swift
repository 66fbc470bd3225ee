import CUring
@testable import DMAEngine
import Glibc
import SystemPackage
import Testing

/// Regions (host RAM, VRAM pools), unregistration safety, shutdown, setup errors.
@Suite struct DMAEngineTests {
    @Test func vramPoolMappingIsCoherentWithCopies() throws {
        let engine = try BackendUnderTest.iouring.engine()
        defer { engine.shutdown() }
        let host = HostBuffer(1 << 20)
        let h = try engine.registerHostMemory(host.bytes, name: "ram")
        let vram = try engine.createVRAMPool(size: 1 << 20, name: "pool0")
        #expect(engine.region(vram.region) == RegionInfo(id: vram.region, kind: .vram, name: "pool0", length: 1 << 20))
        #expect(engine.region(h)?.kind == .host)
        fillPattern(vram.mapping, seed: 3)  // the CPU writes device-coherent memory…
        let ch = try engine.makeChannel()
        try ch.enqueueCopy(from: vram.address(0), to: DMAAddress(region: h, offset: 0), length: 1 << 20)
        try ch.submit().wait(timeout: .seconds(10))  // …and the engine reads it through the memfd.
        #expect(same(host.bytes.baseAddress!, vram.mapping.baseAddress!, 1 << 20))
    }

    @Test func registersAGivenMemfdAndKeepsItsOwnDescriptor() throws {
        let engine = try BackendUnderTest.iouring.engine()
        defer { engine.shutdown() }
        let raw = cu_memfd_create("given", cu_mfd_cloexec())
        try #require(raw >= 0)
        defer { close(raw) }
        #expect(throws: DMAError.invalidArgument("file of 0 bytes is smaller than the pool size 4096")) {
            try engine.registerVRAMPool(fd: FileDescriptor(rawValue: raw), size: 4096)
        }
        #expect(ftruncate(raw, 1 << 16) == 0)
        let pool = try engine.registerVRAMPool(fd: FileDescriptor(rawValue: raw), size: 1 << 16, name: "given")
        #expect(pool.files.count == 1 && pool.files[0].rawValue != raw && pool.layout == VRAMPool.Layout(files: 1, populate: false))
        let ch = try engine.makeChannel()
        try ch.enqueueFill(pool.address(10), length: 20, value: 0x5A)
        try ch.submit().wait(timeout: .seconds(10))
        var byte: UInt8 = 0
        #expect(pread(raw, &byte, 1, 15) == 1 && byte == 0x5A)
    }

    /// One file adopted twice is one memory under two regions: the overlap check compares CPU
    /// addresses, and the two mappings differ, so a copy between them that overlaps in the
    /// file got through. The second registration is refused (EBUSY, as a conflicting
    /// `request_mem_region`), whichever way the file comes back: the caller's fd again, the
    /// pool's own descriptor, or a file of a created pool. Once unregistered it may be adopted again.
    @Test func aFileAdoptedTwiceIsRefused() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        let raw = cu_memfd_create("given", cu_mfd_cloexec())
        try #require(raw >= 0)
        defer { close(raw) }
        #expect(ftruncate(raw, 1 << 16) == 0)
        var st = stat()
        try #require(fstat(raw, &st) == 0)
        let pool = try engine.registerVRAMPool(fd: FileDescriptor(rawValue: raw), size: 1 << 16, name: "given")
        func aliased(_ inode: ino_t, _ owner: VRAMPool) -> DMAError {
            .busy("the file with inode \(inode) already backs \(owner.region) (\(owner.name)): "
                  + "a second registration would alias its bytes under two regions")
        }
        #expect(throws: aliased(st.st_ino, pool)) { try engine.registerVRAMPool(fd: FileDescriptor(rawValue: raw), size: 1 << 12) }
        #expect(throws: aliased(st.st_ino, pool)) { try engine.registerVRAMPool(fd: pool.files[0], size: 1 << 16) }
        let made = try engine.createVRAMPool(size: 1 << 22, name: "made", layout: VRAMPool.Layout(files: 2, populate: false))
        try #require(made.files.count == 2)
        var second = stat()
        try #require(fstat(made.files[1].rawValue, &second) == 0)
        #expect(throws: aliased(second.st_ino, made)) { try engine.registerVRAMPool(fd: made.files[1], size: 1 << 12) }
        #expect(engine.region(RegionID(rawValue: made.region.rawValue + 1)) == nil)   // nothing half-registered
        try engine.unregister(pool.region)
        let again = try engine.registerVRAMPool(fd: FileDescriptor(rawValue: raw), size: 1 << 16, name: "again")
        #expect(engine.region(again.region)?.name == "again")
    }

    @Test func registrationRejectsEmptyMemory() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        #expect(throws: DMAError.invalidArgument("host memory region is empty")) {
            try engine.registerHostMemory(UnsafeMutableRawBufferPointer(start: nil, count: 0))
        }
        #expect(throws: DMAError.invalidArgument("VRAM pool size must be positive")) { try engine.createVRAMPool(size: 0) }
        #expect(throws: DMAError.invalidArgument("queueDepth 0 outside 1…4096")) {
            try DMAEngine(configuration: .init(queueDepth: 0))
        }
    }

    @Test func unregisterRefusesPendingWaitsForInFlightAndForgetsTheRegion() throws {
        let plan = FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(500)))])
        let engine = try DMAEngine(configuration: .init(backend: .faultInjecting(plan, wrapping: .ioUring)))
        defer { engine.shutdown() }
        let host = HostBuffer(1 << 16)
        let h = try engine.registerHostMemory(host.bytes)
        let vram = try engine.createVRAMPool(size: 1 << 16)
        fillPattern(host.bytes, seed: 1)
        let ch = try engine.makeChannel()
        try ch.enqueueCopy(from: DMAAddress(region: h, offset: 0), to: vram.address(0), length: 1 << 16)
        #expect(throws: DMAError.busy("channel 0 has pending descriptors naming \(h); submit or discard them first")) {
            try engine.unregister(h)
        }
        let fence = try ch.submit()  // delayed 500 ms by the injector
        #expect(throws: DMAError.timedOut) { try engine.unregister(h, timeout: .milliseconds(1)) }
        #expect(engine.region(h) != nil)
        try engine.unregister(h)  // waits for the delayed copy
        #expect(fence.isSignaled)
        #expect(same(host.bytes.baseAddress!, vram.mapping.baseAddress!, 1 << 16))
        #expect(engine.region(h) == nil)
        #expect(throws: DMAError.unknownRegion(h)) { try engine.unregister(h) }
        #expect(throws: DMAError.unknownRegion(h)) {
            try ch.enqueueCopy(from: DMAAddress(region: h, offset: 0), to: vram.address(0), length: 1)
        }
        let again = try engine.registerHostMemory(host.bytes)
        #expect(again != h, "ids are not reused")
    }

    /// `unregister`'s timeout bounds the whole wait, not each channel's: copies delayed
    /// 600 ms on one channel and 1200 ms on another outlast a 900 ms timeout (waiting up to
    /// 900 ms per channel, one after the other, returned at 1200 ms instead).
    @Test func unregisterTimeoutBoundsTheWaitOverAllChannels() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        defer { engine.shutdown() }
        let host = HostBuffer(1 << 16)
        let h = try engine.registerHostMemory(host.bytes)
        let vram = try engine.createVRAMPool(size: 1 << 16)
        for (i, delay) in [600, 1200].enumerated() {
            let plan = FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(delay)))])
            let ch = try engine.makeChannel(backend: .faultInjecting(plan, wrapping: .memcpy))
            try ch.enqueueCopy(from: DMAAddress(region: h, offset: i * 4096), to: vram.address(i * 4096), length: 4096)
            _ = try ch.submit()
        }
        #expect(throws: DMAError.timedOut) { try engine.unregister(h, timeout: .milliseconds(900)) }
        #expect(engine.region(h) != nil, "a timed-out unregister leaves the region registered")
        try engine.unregister(h)
        #expect(engine.region(h) == nil)
    }

    @Test func unregisteredPoolStaysReadableThroughItsHandle() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy))
        let pool = try engine.createVRAMPool(size: 4096)
        pool.mapping[7] = 42
        try engine.unregister(pool.region)
        engine.shutdown()
        #expect(pool.mapping[7] == 42)
    }

    @Test(arguments: [false, true])
    func shutdownDrainsOrCancelsThenRefusesWork(_ cancel: Bool) throws {
        let plan = FaultPlan(rules: [.init(.every(2), .delay(.milliseconds(30)))])
        let engine = try DMAEngine(configuration: .init(backend: .faultInjecting(plan, wrapping: .ioUring)))
        let host = HostBuffer(1 << 20)
        let h = try engine.registerHostMemory(host.bytes)
        let vram = try engine.createVRAMPool(size: 1 << 20)
        let ch = try engine.makeChannel()
        var fences: [Fence] = []
        for i in 0..<8 {
            try ch.enqueueCopy(from: DMAAddress(region: h, offset: i << 16), to: vram.address(i << 16), length: 1 << 16)
            fences.append(try ch.submit())
        }
        try ch.enqueueFill(vram.address(0), length: 1)  // pending: dropped by shutdown
        engine.shutdown(cancelInFlight: cancel)
        #expect(fences.allSatisfy { $0.isSignaled }, "shutdown returns only after every completion")
        #expect(throws: DMAError.shutDown) { try ch.submit() }
        #expect(throws: DMAError.shutDown) { try ch.enqueueFill(vram.address(0), length: 1) }
        #expect(throws: DMAError.shutDown) { try engine.makeChannel() }
        #expect(throws: DMAError.shutDown) { try engine.createVRAMPool(size: 4096) }
        #expect(ch.capacity == 0)
    }

    @Test func ringSetupFailureExplainsAndNamesTheFallback() {
        #expect(throws: DMAError.self) { try IOURing(entries: 0) }
        do {
            _ = try IOURing(entries: 0)
        } catch {
            guard case .ringSetupFailed(let e, let reason) = error else { Issue.record("wrong error \(error)"); return }
            #expect(e == .invalidArgument)
            #expect(reason.contains("--backend memcpy"))
        }
        for e in [Errno.notPermitted, .noFunction, .noMemory] {
            let text = IOURing.setupError(e, entries: 64).description
            #expect(text.contains("--backend memcpy") && text.contains("io_uring"), "\(text)")
        }
    }
}
