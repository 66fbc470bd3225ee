import CUring
@testable import DMAEngine
import Foundation
import Glibc
import NIOConcurrencyHelpers
import SystemPackage
import Testing

/// Fence timeline ordering under out-of-order completion, waits, callbacks, error status.
@Suite struct FenceTests {
    /// Channel with host and VRAM regions, with `plan` injected over `inner`.
    static func rig(_ plan: FaultPlan, inner: CopyBackendKind = .ioUring) throws -> EngineRig {
        try EngineRig(.init(backend: .faultInjecting(plan, wrapping: inner)), patternSeed: 11)
    }

    @Test(arguments: [CopyBackendKind.ioUring, .memcpy, .mappedWorkers(threads: 2)])
    func laterFencesWaitForADelayedEarlierOne(_ inner: CopyBackendKind) throws {
        let rig = try Self.rig(FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(400)))]), inner: inner)
        defer { rig.engine.shutdown() }
        let order = NIOLockedValueBox<[UInt64]>([])
        var fences: [Fence] = []
        for i in 0..<6 {
            try rig.copyPage(i)
            let f = try rig.ch.submit()
            f.onSignal { f in order.withLockedValue { $0.append(f.seqno) } }
            fences.append(f)
        }
        // Fences 2…6 finished their own work long before fence 1, yet none may signal first.
        #expect(!fences[5].isSignaled || fences[0].isSignaled)
        try fences[5].wait(timeout: .seconds(10))
        #expect(fences.allSatisfy { $0.isSignaled })
        // Callbacks run just after signalling, on the signalling thread: give them a bounded moment.
        for _ in 0..<20_000 where order.withLockedValue({ $0.count }) < 6 { usleep(1000) }
        #expect(order.withLockedValue { $0 } == [1, 2, 3, 4, 5, 6])
        #expect(same(rig.host.bytes.baseAddress!, rig.vram.mapping.baseAddress!, 6 * 4096))
        #expect(rig.ch.lastCompletedTicket == DMATicket(rawValue: 5))
    }

    /// `timestamp` (`dma_fence.timestamp`) is nil until the fence signals, then the signal
    /// time: after the delayed copy it waited for, in seqno order, never after its waiter woke.
    @Test func timestampIsTheSignalTimeInTimelineOrder() throws {
        let delay: UInt64 = 500_000_000   // outlasts the two submits before `timestamp == nil` is asked
        let rig = try Self.rig(FaultPlan(rules: [.init(.nth(0), .delay(.nanoseconds(Int64(delay))))]))
        defer { rig.engine.shutdown() }
        let submitted = MonotonicTime.now()
        var fences: [Fence] = []
        for i in 0..<3 {
            try rig.copyPage(i)
            fences.append(try rig.ch.submit())
        }
        #expect(fences.allSatisfy { $0.timestamp == nil })
        try fences[2].wait(timeout: .seconds(10))
        let woke = MonotonicTime.now()
        let stamps = fences.compactMap(\.timestamp)
        #expect(stamps.count == 3 && stamps == stamps.sorted())
        #expect(stamps[0] >= submitted + delay)
        #expect(stamps[2] <= woke)
    }

    /// The waiters of one channel's fences sleep on one condition (the timeline's, as all
    /// fences of a channel share `dma_fence.lock`): an earlier fence signalling wakes them,
    /// and each must sleep on until its own fence signals or its timeout ends. The mapped
    /// backend without workers copies only in untimed waiters, so the order is set here.
    @Test func waitersOfOneChannelWakeOnlyForTheirOwnFence() throws {
        let rig = try MappedAssistTests.rig()
        defer { rig.engine.shutdown() }
        let fences = try (0..<3).map { i in try MappedAssistTests.submit(rig, i..<i + 1) }
        let (first, second, third) = (fences[0], fences[1], fences[2])
        let sawThird = NIOLockedValueBox<(Bool, Bool)?>(nil)
        let thirdWoke = DispatchSemaphore(value: 0)
        Thread {  // timed waits only sleep: this one copies nothing
            let signalled = third.waitForSignal(timeout: .seconds(20))
            sawThird.withLockedValue { $0 = (signalled, second.isSignaled) }
            thirdWoke.signal()
        }.start()
        let firstDone = DispatchSemaphore(value: 0)
        Thread {  // 100 ms in, copies the first batch and signals its fence: everyone wakes
            usleep(100_000)
            _ = first.waitForSignal()
            firstDone.signal()
        }.start()
        let start = MonotonicTime.now()
        #expect(!second.waitForSignal(timeout: .milliseconds(400)))
        #expect(MonotonicTime.now() - start >= 400_000_000)
        #expect(firstDone.wait(timeout: .now() + 20) == .success)
        #expect(first.isSignaled && !second.isSignaled && !third.isSignaled)
        #expect(sawThird.withLockedValue { $0 } == nil, "the waiter of the third fence woke before it signalled")
        #expect(third.waitForSignal())  // copies the second and third batches
        #expect(thirdWoke.wait(timeout: .now() + 20) == .success)
        #expect(sawThird.withLockedValue { $0 }.map { $0.0 && $0.1 } == true)
        #expect(fences.allSatisfy { $0.timestamp != nil } && MappedAssistTests.copied(rig, 0..<3))
    }

    @Test func outOfOrderInsideOneBatchStillSignalsOnceAllDone() throws {
        let rig = try Self.rig(FaultPlan(rules: [.init(.nth(3), .delay(.milliseconds(500)))]))  // outlasts any stall before the wait
        defer { rig.engine.shutdown() }
        for i in 0..<8 { try rig.copyPage(i) }
        let f = try rig.ch.submit()
        #expect(throws: DMAError.timedOut) { try f.wait(timeout: .milliseconds(1)) }
        try f.wait(timeout: .seconds(10))
        #expect(same(rig.host.bytes.baseAddress!, rig.vram.mapping.baseAddress!, 8 * 4096))
    }

    /// `dma_fence_wait_timeout` refuses a negative timeout with `EINVAL`, signalled or not;
    /// zero polls. (A negative one read as a poll: `.timedOut`, or success once signalled.)
    @Test func aNegativeWaitTimeoutIsInvalid() throws {
        let rig = try Self.rig(FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(200)))]))
        defer { rig.engine.shutdown() }
        try rig.copyPage(0)
        let f = try rig.ch.submit()
        #expect(throws: DMAError.invalidArgument("fence wait timeout -0.001 seconds is negative")) {
            try f.wait(timeout: .milliseconds(-1))
        }
        #expect(throws: DMAError.timedOut) { try f.wait(timeout: .zero) }
        try f.wait(timeout: .seconds(10))
        #expect(throws: DMAError.invalidArgument("fence wait timeout -1.0 seconds is negative")) {
            try f.wait(timeout: .seconds(-1))
        }
        try f.wait(timeout: .zero)
    }

    /// A negative offset (which `enqueue…` refuses) prints with its sign, not as `0x-…`.
    @Test func aNegativeOffsetPrintsWithItsSign() {
        let a = DMAAddress(region: RegionID(rawValue: 3), offset: 0x2000)
        #expect(a.description == "region#3+0x2000")
        #expect(a.advanced(by: -0x3000).description == "region#3-0x1000")
    }

    @Test func asyncWaitAndLateCallback() async throws {
        let rig = try Self.rig(FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(20)))]))
        defer { rig.engine.shutdown() }
        try rig.copyPage(0)
        let f = try rig.ch.submit()
        try await f.wait()
        #expect(f.isSignaled)
        let ran = NIOLockedValueBox(false)
        f.onSignal { _ in ran.withLockedValue { $0 = true } }
        #expect(ran.withLockedValue { $0 }, "a callback added after signalling runs at once")
    }

    @Test func injectedFailureAndShortCopyPropagateIntoTheirFenceOnly() throws {
        let rig = try Self.rig(FaultPlan(rules: [.init(.nth(1), .fail(.badAddress)), .init(.nth(2), .shortCopy(bytes: 100))]))
        defer { rig.engine.shutdown() }
        memset(rig.vram.mapping.baseAddress!, 0, 1 << 20)
        for i in 0..<4 { try rig.copyPage(i) }
        let bad = try rig.ch.submit()
        try rig.copyPage(4)
        let good = try rig.ch.submit()
        let expected = [DescriptorFailure(ticket: DMATicket(rawValue: 1), index: 1, errno: .badAddress, bytesCompleted: 0),
                        DescriptorFailure(ticket: DMATicket(rawValue: 2), index: 2, errno: .ioError, bytesCompleted: 100)]
        #expect(throws: DMAError.copyFailed(expected)) { try bad.wait(timeout: .seconds(10)) }
        try good.wait(timeout: .seconds(10))
        #expect(good.failures.isEmpty && good.error == nil)
        let v = rig.vram.mapping.baseAddress!, s = rig.host.bytes.baseAddress!
        #expect(same(s, v, 4096) && same(s + 3 * 4096, v + 3 * 4096, 2 * 4096))
        #expect(rig.vram.mapping[4096] == 0, "a failed descriptor copies nothing")
        #expect(same(s + 2 * 4096, v + 2 * 4096, 100) && rig.vram.mapping[2 * 4096 + 100] == 0)
    }

    /// A real kernel error (EPERM from a sealed memfd) fails every descriptor of the vectored op.
    @Test(arguments: [true, false])
    func kernelErrorFailsEveryDescriptorOfTheOperation(_ coalescing: Bool) throws {
        let engine = try DMAEngine(configuration: .init(backend: .ioUring, coalescing: coalescing))
        defer { engine.shutdown() }
        let raw = cu_memfd_create("sealed", 2 /* MFD_ALLOW_SEALING */ | cu_mfd_cloexec())
        try #require(raw >= 0)
        defer { close(raw) }
        try #require(ftruncate(raw, 1 << 16) == 0)
        let pool = try engine.registerVRAMPool(fd: FileDescriptor(rawValue: raw), size: 1 << 16)
        try #require(fcntl(raw, 1033 /* F_ADD_SEALS */, 0x10 /* F_SEAL_FUTURE_WRITE */) == 0)
        let host = HostBuffer(1 << 16)
        let h = try engine.registerHostMemory(host.bytes)
        let ch = try engine.makeChannel()
        for i in 0..<3 {
            try ch.enqueueCopy(from: DMAAddress(region: h, offset: i * 8192), to: pool.address(i * 4096), length: 4096)
        }
        let f = try ch.submit()
        #expect(f.waitForSignal(timeout: .seconds(10)))
        #expect(f.failures.sorted { $0.index < $1.index }
                == (0..<3).map { DescriptorFailure(ticket: DMATicket(rawValue: UInt64($0)), index: $0, errno: .notPermitted, bytesCompleted: 0) })
        #expect(ch.statistics.operations == (coalescing ? 1 : 3))
    }

    /// A short kernel completion (EOF inside the run) is finished, then attributed per descriptor.
    @Test(arguments: [true, false])
    func shortReadAttributesBytesToDescriptors(_ coalescing: Bool) throws {
        let engine = try DMAEngine(configuration: .init(backend: .ioUring, coalescing: coalescing))
        defer { engine.shutdown() }
        let raw = cu_memfd_create("shrinking", cu_mfd_cloexec())
        try #require(raw >= 0)
        defer { close(raw) }
        try #require(ftruncate(raw, 1 << 16) == 0)
        let pool = try engine.registerVRAMPool(fd: FileDescriptor(rawValue: raw), size: 1 << 16)
        fillPattern(UnsafeMutableRawBufferPointer(rebasing: pool.mapping[0..<12288]), seed: 5)
        try #require(ftruncate(raw, 6000) == 0)  // the "device" loses memory under the copy
        let host = HostBuffer(1 << 16)
        let h = try engine.registerHostMemory(host.bytes)
        let ch = try engine.makeChannel()
        for i in 0..<3 {
            try ch.enqueueCopy(from: pool.address(i * 4096), to: DMAAddress(region: h, offset: i * 4096), length: 4096)
        }
        let f = try ch.submit()
        #expect(f.waitForSignal(timeout: .seconds(10)))
        #expect(f.failures.sorted { $0.index < $1.index } == [
            DescriptorFailure(ticket: DMATicket(rawValue: 1), index: 1, errno: .ioError, bytesCompleted: 6000 - 4096),
            DescriptorFailure(ticket: DMATicket(rawValue: 2), index: 2, errno: .ioError, bytesCompleted: 0),
        ])
        #expect(same(host.bytes.baseAddress!, pool.mapping.baseAddress!, 6000))
    }
}

private extension EngineRig {
    func copyPage(_ i: Int) throws {
        try ch.enqueueCopy(from: host(i), to: vram.address(i * 4096), length: 4096)
    }
}
