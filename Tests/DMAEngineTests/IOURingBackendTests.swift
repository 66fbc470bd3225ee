@testable import DMAEngine
import Foundation
import Glibc
import NIOConcurrencyHelpers
import SystemPackage
import Testing

/// The io_uring backend when the ring itself fails: typed errors on the fences and
/// the channel, no trap, no hang.
@Suite struct IOURingBackendTests {
    static func rig() throws -> EngineRig {
        try EngineRig(.init(backend: .ioUring, queueDepth: 8), patternSeed: 17)
    }

    @Test func transientSubmitFailureIsRetried() throws {
        let rig = try Self.rig()
        defer { rig.engine.shutdown() }
        rig.ring.injectedSubmitFailure.store(EAGAIN, ordering: .relaxed)
        try rig.submitPages(0).wait(timeout: .seconds(10))
        #expect(rig.ch.health.failure == nil)
        #expect(same(rig.host.bytes.baseAddress! + 3 * 8192, rig.vram.mapping.baseAddress! + 3 * 4096, 4096))
    }

    @Test func fatalSubmitFailureFailsTheBatchAndTheChannel() throws {
        let rig = try Self.rig()
        let done = try rig.submitPages(0)
        try done.wait(timeout: .seconds(10))
        rig.ring.injectedSubmitFailure.store(EBADF, ordering: .relaxed)
        let lost = try rig.submitPages(4)
        #expect(lost.waitForSignal(timeout: .seconds(10)), "descriptors the kernel never took still reach their fence")
        #expect(lost.failures.sorted { $0.index < $1.index }
                == (0..<4).map { DescriptorFailure(ticket: DMATicket(rawValue: UInt64(4 + $0)), index: $0, errno: .badFileDescriptor, bytesCompleted: 0) })
        #expect(rig.ch.health.failure == .badFileDescriptor)
        let failed = DMAError.channelFailed(channel: rig.ch.id, .badFileDescriptor)
        #expect(throws: failed) { try rig.ch.submit() }
        #expect(throws: failed) { try rig.ch.enqueueFill(rig.vram.address(0), length: 1) }
        #expect(rig.ch.capacity == 0)
        #expect(failed.errno == .badFileDescriptor)
        // Other channels of the engine are unaffected.
        let other = try rig.engine.makeChannel()
        try other.enqueueFill(rig.vram.address(0), length: 16, value: 3)
        try other.submit().wait(timeout: .seconds(10))
        #expect(rig.vram.mapping[15] == 3)
        rig.engine.shutdown()  // returns although the failed ring cannot take the stop NOP
    }

    /// A completion that failed with EINTR or EAGAIN (transient, nothing done), or EFAULT
    /// (what older kernels answer for a request of a thread that exited), is retried, not
    /// reported as a copy failure; any other errno fails every descriptor of the operation.
    @Test(arguments: [(EINTR, Errno?.none), (EAGAIN, nil), (EFAULT, nil), (EIO, .ioError), (ENOSPC, .noSpace)])
    func transientCompletionErrorsAreRetried(_ injected: Int32, _ expected: Errno?) throws {
        let rig = try Self.rig()
        defer { rig.engine.shutdown() }
        rig.ring.injectedCompletionResult.store(-injected, ordering: .relaxed)
        let f = try rig.submitPages(0)  // one coalesced write of 4 pages
        #expect(f.waitForSignal(timeout: .seconds(10)))
        #expect(rig.ch.statistics.operations == 1)
        #expect(f.failures.sorted { $0.index < $1.index }
                == (expected.map { e in (0..<4).map { DescriptorFailure(ticket: DMATicket(rawValue: UInt64($0)), index: $0, errno: e, bytesCompleted: 0) } } ?? []))
        for i in 0..<4 where expected == nil {
            #expect(same(rig.host.bytes.baseAddress! + i * 8192, rig.vram.mapping.baseAddress! + i * 4096, 4096))
        }
        #expect(rig.ch.health.failure == nil)
    }

    /// The EFAULT retry does not hide a genuinely bad address: a source page the kernel
    /// cannot read fails its descriptor with EFAULT and the bytes copied before it, the
    /// descriptors before it copy, and the rest of its run fails. Page 0 makes the kernel
    /// answer EFAULT (the retry faults again); page 5 makes it complete short.
    @Test(arguments: [0, 5])
    func badSourceAddressStillFailsAfterTheRetry(badPage: Int) throws {
        let rig = try Self.rig()
        defer { rig.engine.shutdown() }
        let base = rig.host.bytes.baseAddress!
        #expect(mprotect(base + badPage * 4096, 4096, PROT_NONE) == 0)
        defer { mprotect(base + badPage * 4096, 4096, PROT_READ | PROT_WRITE) }
        // Four 8 KiB descriptors, contiguous on both sides: one operation.
        for i in 0..<4 {
            try rig.ch.enqueueCopy(from: rig.host(i * 2), to: rig.vram.address(i * 8192), length: 8192)
        }
        let f = try rig.ch.submit()
        #expect(f.waitForSignal(timeout: .seconds(10)))
        #expect(rig.ch.statistics.operations == 1)
        let failing = badPage / 2
        #expect(f.failures.sorted { $0.index < $1.index }
                == (failing..<4).map { DescriptorFailure(ticket: DMATicket(rawValue: UInt64($0)), index: $0, errno: .badAddress,
                                                          bytesCompleted: $0 == failing ? badPage % 2 * 4096 : 0) })
        #expect(same(base, rig.vram.mapping.baseAddress!, badPage * 4096))
        #expect(rig.ch.health.failure == nil)
    }

    /// A `.fence` descriptor after an operation that completed short: the reaper writes
    /// the rest after the CQE (which is all `IOSQE_IO_DRAIN` waits for), so the fenced
    /// read must also wait for that, or it reads the page before it was written.
    @Test(arguments: [false, true])
    func fenceWaitsForTheRestOfAShortOperation(sameBatch: Bool) throws {
        let rig = try Self.rig()
        defer { rig.engine.shutdown() }
        rig.ring.injectedShortOperation.store(true, ordering: .relaxed)
        rig.ring.injectedShortFinishDelay.store(300_000_000, ordering: .relaxed)
        // One writev of two scattered host pages into VRAM pages 0 and 1; the kernel gets only the first.
        try rig.ch.enqueueCopy(from: rig.host(0), to: rig.vram.address(0), length: 4096)
        try rig.ch.enqueueCopy(from: rig.host(2), to: rig.vram.address(4096), length: 4096)
        let first = sameBatch ? nil : try rig.ch.submit()
        try rig.ch.enqueueCopy(from: rig.vram.address(4096), to: rig.host(10), length: 4096, flags: .fence)
        let fenced = try rig.ch.submit()
        #expect(fenced.waitForSignal(timeout: .seconds(10)))
        #expect(first?.isSignaled ?? true)
        #expect(fenced.failures.isEmpty && (first?.failures.isEmpty ?? true))
        #expect(rig.ch.statistics.operations == 2)
        #expect(same(rig.host.bytes.baseAddress! + 2 * 4096, rig.vram.mapping.baseAddress! + 4096, 4096))
        #expect(same(rig.host.bytes.baseAddress! + 2 * 4096, rig.host.bytes.baseAddress! + 10 * 4096, 4096),
                "the fenced read saw VRAM page 1 before the short write's remainder landed")
    }

    /// A fence callback may ask its channel about its descriptors (`status(of:)`) while
    /// another thread submits a `.fence` descriptor, which waits under the submit lock for
    /// the ring to drain: the reaper running the callback must not need that lock, or the
    /// operation behind the callback's is never reaped and that submit never returns.
    @Test func aFenceCallbackQueriesItsChannelWhileAFencedSubmitWaits() throws {
        let rig = try Self.rig()
        rig.ring.injectedShortOperation.store(true, ordering: .relaxed)
        rig.ring.injectedShortFinishDelay.store(300_000_000, ordering: .relaxed)
        // One writev of two pages that completes short: the reaper finishes it 300 ms late.
        try rig.ch.enqueueCopy(from: rig.host(0), to: rig.vram.address(0), length: 4096)
        try rig.ch.enqueueCopy(from: rig.host(2), to: rig.vram.address(4096), length: 4096)
        let first = try rig.ch.submit()
        let seen = NIOLockedValueBox<[DescriptorStatus]?>(nil)
        first.onSignal { f in
            seen.withLockedValue { $0 = try? rig.ch.status(of: f.tickets) }
        }
        // An operation behind it, whose completion the busy reaper has not reaped yet.
        try rig.ch.enqueueCopy(from: rig.host(4), to: rig.vram.address(8192), length: 4096)
        let second = try rig.ch.submit()
        let submitted = DispatchSemaphore(value: 0)
        let third = NIOLockedValueBox<Fence?>(nil)
        Thread {
            _ = try? rig.ch.enqueueCopy(from: rig.vram.address(4096), to: rig.host(10), length: 4096, flags: .fence)
            let fence = try? rig.ch.submit()
            third.withLockedValue { $0 = fence }
            submitted.signal()
            _ = fence?.waitForSignal(timeout: .seconds(20))   // a task's exit cancels its io_uring requests
        }.start()
        // Bounded: on failure the reaper and the submitter stay blocked (the engine is left as is).
        try #require(submitted.wait(timeout: .now() + .seconds(20)) == .success, "the fenced submit never returned")
        let fenced = try #require(third.withLockedValue { $0 })
        defer { rig.engine.shutdown() }
        #expect(fenced.waitForSignal(timeout: .seconds(10)))
        #expect(first.isSignaled && second.isSignaled && fenced.failures.isEmpty)
        #expect(seen.withLockedValue { $0 } == [.succeeded, .succeeded])
        #expect(same(rig.host.bytes.baseAddress! + 2 * 4096, rig.host.bytes.baseAddress! + 10 * 4096, 4096))
    }

    /// A thread may submit and exit before its copies complete (another thread waits on
    /// the fence): the kernel cancels the requests a task still owns when it exits
    /// (ECANCELED; here the `.fence` read, queued as task work), which is not a failure of
    /// the copy: the reaper redoes them itself, as after EAGAIN.
    @Test func copiesOfAThreadThatExitedStillComplete() throws {
        let rig = try Self.rig()
        defer { rig.engine.shutdown() }
        var fences: [Fence] = []
        for round in 0..<8 {
            let box = NIOLockedValueBox<Fence?>(nil)
            Thread {
                _ = try? rig.ch.enqueueCopy(from: rig.host(round), to: rig.vram.address(round * 4096), length: 4096)
                _ = try? rig.ch.enqueueCopy(from: rig.vram.address(round * 4096), to: rig.host(16 + round), length: 4096,
                                            flags: .fence)
                box.withLockedValue { $0 = try? rig.ch.submit() }
            }.start()   // it ends right after its submit
            for _ in 0..<200_000 where box.withLockedValue({ $0 }) == nil { usleep(100) }   // ≥ 20 s: a hang guard
            fences.append(try #require(box.withLockedValue { $0 }))
        }
        for fence in fences {
            #expect(fence.waitForSignal(timeout: .seconds(10)))
            #expect(fence.failures.isEmpty, "\(fence.failures)")
        }
        for round in 0..<8 {
            #expect(same(rig.host.bytes.baseAddress! + round * 4096, rig.host.bytes.baseAddress! + (16 + round) * 4096, 4096))
        }
    }

    /// Channels made by threads that are gone, whose fences the program keeps: shutdown
    /// releases their rings (file descriptor, mapped SQ/CQ, io-wq), not the last
    /// reference to a channel or fence, which may live as long as the program.
    @Test func shutdownClosesTheRingsOfChannelsStillReferenced() throws {
        let rig = try Self.rig()
        let fences = NIOLockedValueBox<[Fence]>([])
        for round in 0..<4 {
            let t = Thread {
                guard let ch = try? rig.engine.makeChannel(),
                      (try? ch.enqueueCopy(from: rig.host(round), to: rig.vram.address(round * 4096), length: 4096)) != nil,
                      let f = try? ch.submit() else { return }
                fences.withLockedValue { $0.append(f) }
            }
            t.start()
        }
        for _ in 0..<200_000 where fences.withLockedValue({ $0.count }) < 4 { usleep(100) }   // ≥ 20 s: a hang guard
        let kept = fences.withLockedValue { $0 }
        try #require(kept.count == 4)
        let rings = kept.map { ($0.timeline.backend as! IOURingBackend).ring } + [rig.ring]
        let open = rings.map { r -> (fd: Int32, inode: UInt) in
            var st = stat()
            _ = fstat(r.ring.pointee.ring_fd, &st)
            return (r.ring.pointee.ring_fd, st.st_ino)
        }
        #expect(Set(open.map(\.inode)).count == rings.count, "each ring has its own inode")
        rig.engine.shutdown()
        for f in kept { #expect(f.isSignaled && f.failures.isEmpty) }
        for (fd, inode) in open {
            var st = stat()
            #expect(fstat(fd, &st) != 0 || st.st_ino != inode, "ring fd \(fd) still open after shutdown")
        }
        withExtendedLifetime((kept, rig)) {}
    }

    /// A fault injected on a `.fence` descriptor is copied by the wrapper with the CPU: it
    /// too must start after what the wrapped io_uring backend still runs (here the rest of
    /// a short write, finished 300 ms late by the reaper).
    @Test(arguments: [FaultPlan.Action.shortCopy(bytes: 4000), .delay(.milliseconds(1)), .corrupt])
    func faultOnAFenceDescriptorWaitsForTheWrappedBackend(_ action: FaultPlan.Action) throws {
        let plan = FaultPlan(rules: [.init(.nth(2), action)])
        let rig = try EngineRig(.init(backend: .faultInjecting(plan, wrapping: .ioUring), queueDepth: 8), patternSeed: 19)
        defer { rig.engine.shutdown() }
        let ring = ((rig.ch.backend as! FaultInjectingBackend).inner as! IOURingBackend).ring
        ring.injectedShortOperation.store(true, ordering: .relaxed)
        ring.injectedShortFinishDelay.store(300_000_000, ordering: .relaxed)
        try rig.ch.enqueueCopy(from: rig.host(0), to: rig.vram.address(0), length: 4096)
        try rig.ch.enqueueCopy(from: rig.host(2), to: rig.vram.address(4096), length: 4096)
        let first = try rig.ch.submit()
        try rig.ch.enqueueCopy(from: rig.vram.address(4096), to: rig.host(10), length: 4096, flags: .fence)
        let fenced = try rig.ch.submit()
        #expect(fenced.waitForSignal(timeout: .seconds(10)))
        #expect(first.isSignaled && first.failures.isEmpty)
        let copied: Int
        if case .shortCopy(let bytes) = action {
            #expect(fenced.failures == [DescriptorFailure(ticket: DMATicket(rawValue: 2), index: 0, errno: .ioError, bytesCompleted: bytes)])
            copied = bytes
        } else if action == .corrupt {
            // Copied in full after the short write landed, then one byte flipped.
            #expect(fenced.failures.isEmpty)
            let source = rig.host.bytes.baseAddress! + 2 * 4096, copy = rig.host.bytes.baseAddress! + 10 * 4096
            let wrong = (0..<4096).filter { source.load(fromByteOffset: $0, as: UInt8.self) != copy.load(fromByteOffset: $0, as: UInt8.self) }
            #expect(wrong.count == 1, "the injected copy read VRAM page 1 before the short write's remainder landed: \(wrong.count) bytes differ")
            return
        } else {
            #expect(fenced.failures.isEmpty)
            copied = 4096
        }
        #expect(same(rig.host.bytes.baseAddress! + 2 * 4096, rig.host.bytes.baseAddress! + 10 * 4096, copied),
                "the injected copy read VRAM page 1 before the short write's remainder landed")
    }

    @Test func waitFailureKeepsReapingThenRefusesWork() throws {
        let rig = try Self.rig()
        rig.ring.injectedWaitFailure.store(EFAULT, ordering: .relaxed)
        // The reaper notices at its next wait; whatever is in flight by then still completes.
        let f = try rig.submitPages(0)
        try f.wait(timeout: .seconds(10))
        for _ in 0..<4000 where rig.ch.health.failure == nil { usleep(5000) }   // ≥ 20 s: a hang guard
        #expect(rig.ch.health.failure == .badAddress)
        #expect(throws: DMAError.channelFailed(channel: rig.ch.id, .badAddress)) { try rig.submitPages(4) }
        rig.engine.shutdown()
    }
}

private extension EngineRig {
    var ring: IOURing { (ch.backend as! IOURingBackend).ring }

    /// Four scattered pages, coalesced into one operation per batch.
    func submitPages(_ first: Int) throws -> Fence {
        for i in first..<first + 4 {
            try ch.enqueueCopy(from: host(i * 2), to: vram.address(i * 4096), length: 4096)
        }
        return try ch.submit()
    }
}
