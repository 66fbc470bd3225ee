import Dispatch
import Synchronization
import SystemPackage

/// Wraps a backend and injects the faults of a `FaultPlan`: failed, short, delayed and
/// silently corrupted descriptors, the way a flaky copy engine or a slow or unprotected
/// link would.
///
/// Clean runs of descriptors go to the wrapped backend unchanged; a disturbed
/// descriptor is handled here with the CPU (memcpy through the regions'
/// mappings): a failure copies nothing, a short copy copies a prefix, a corruption
/// copies in full then flips one destination byte, a delay copies in full on a timer
/// thread after the delay, so later descriptors and
/// batches complete first — exactly what fence ordering must withstand. A
/// `.fence` descriptor still starts only after delayed ones (as after any earlier one),
/// and one disturbed here only after the wrapped backend finished what it was given.
///
/// Threads: see `CopyBackend`; delayed work runs on a serial queue of the backend's own.
/// Not on Dispatch's global queue: its threads are the ones Swift concurrency (and so a
/// test runner) blocks on, and on a 2-core machine a 50 ms delay then waited ~1 s for
/// one of them to come free. A serial queue gets a thread of its own (overcommit).
final class FaultInjectingBackend: CopyBackend, @unchecked Sendable {
    let plan: FaultPlan
    let inner: any CopyBackend
    private var generator: SplitMix64  // used under the channel's submit lock only
    /// The seed of this channel's corruption offsets (mixed with a descriptor's number).
    private let corruptionSeed: UInt64
    private var count = 0  // idem
    private let delayed = DispatchGroup()
    /// Runs the delayed copies, in deadline order.
    private let delivery = DispatchQueue(label: "dmem.fault-injector.delivery")
    /// Delayed descriptors not yet copied (lets a `.fence` descriptor skip the wait when there are none).
    private let delaysOutstanding = Synchronization.Atomic<Int>(0)

    var name: String { "faulty(\(inner.name))" }

    init(plan: FaultPlan, wrapping inner: any CopyBackend, channelID: Int) {
        self.plan = plan
        self.inner = inner
        self.generator = SplitMix64(seed: plan.seed ^ UInt64(channelID) &* 0x9E37_79B9)
        self.corruptionSeed = plan.seed ^ UInt64(channelID) &* 0x9E37_79B9 ^ 0xC0AA_0B7E_D000_0000
    }

    func execute(_ batch: CopyBatch) -> Int {
        var operations = 0
        var runStart = batch.indices.lowerBound
        for i in batch.indices {
            let action = decide()
            if batch[i].flags.contains(.fence), delaysOutstanding.load(ordering: .acquiring) > 0 {
                // `RTE_DMA_OP_FLAG_FENCE` across the wrapper: the inner backend orders it after
                // what it was given; the delayed descriptors are only known here.
                if runStart < i { operations += inner.execute(batch.slice(runStart..<i)) }
                runStart = i
                delayed.wait()
            }
            guard let action else { continue }
            if runStart < i { operations += inner.execute(batch.slice(runStart..<i)) }
            runStart = i + 1
            inject(action, batch, i, number: count - 1)
        }
        if runStart < batch.indices.upperBound {
            operations += inner.execute(batch.slice(runStart..<batch.indices.upperBound))
        }
        return operations
    }

    func installFixedBuffers(_ pieces: [FixedBufferPiece]) { inner.installFixedBuffers(pieces) }
    func removeFixedBuffers(slots: [Int]) { inner.removeFixedBuffers(slots: slots) }
    var fixedBufferStatus: FixedBufferStatus { inner.fixedBufferStatus }
    func assist(until done: () -> Bool) { inner.assist(until: done) }

    func waitUntilIdle() {
        inner.waitUntilIdle()
        delayed.wait()
    }

    func shutdown(cancelInFlight: Bool) {
        delayed.wait()
        inner.shutdown(cancelInFlight: cancelInFlight)
    }

    private func decide() -> FaultPlan.Action? {
        let n = count
        count += 1
        for rule in plan.rules {
            switch rule.trigger {
            case .nth(let k) where k == n: return rule.action
            case .every(let k) where k > 0 && (n + 1) % k == 0: return rule.action
            case .rate(let p) where Double(generator.next() >> 11) * 0x1p-53 < p: return rule.action
            default: continue
            }
        }
        return nil
    }

    /// Applies `action` to descriptor `i` of `batch`, the channel's descriptor `number`.
    private func inject(_ action: FaultPlan.Action, _ batch: CopyBatch, _ i: Int, number: Int) {
        switch action {
        case .fail(let errno):
            batch.fail(i, errno: errno, bytesCompleted: 0)
        case .shortCopy(let bytes):
            let d = batch[i]
            if d.flags.contains(.fence) { inner.waitUntilIdle() }   // it copies here, after what went inside
            let done = MemoryCopy.perform(d, limit: max(0, min(bytes, d.length - 1)))
            batch.fail(i, errno: .ioError, bytesCompleted: done)
        case .corrupt:
            let d = batch[i]
            if d.flags.contains(.fence) { inner.waitUntilIdle() }   // idem
            MemoryCopy.perform(d)
            if d.length > 0 {
                let at = Int(corruptionOffset(number) % UInt64(d.length))
                let byte = d.destination.pointer.load(fromByteOffset: at, as: UInt8.self)
                d.destination.pointer.storeBytes(of: byte ^ 0xFF, toByteOffset: at, as: UInt8.self)
            }
            batch.complete(i..<i + 1)
        case .delay(let delay):
            if batch[i].flags.contains(.fence) { inner.waitUntilIdle() }
            delayed.enter()
            delaysOutstanding.add(1, ordering: .relaxed)
            let nanos = delay.clampedNanoseconds
            delivery.asyncAfter(deadline: .now() + .nanoseconds(nanos)) { [self] in
                MemoryCopy.perform(batch[i])
                delaysOutstanding.subtract(1, ordering: .releasing)
                batch.complete(i..<i + 1)
                delayed.leave()
            }
        }
    }
}

extension FaultInjectingBackend {
    /// A seeded draw for the channel's descriptor `number` (not from `generator`: a
    /// corruption moves no later `.rate` decision).
    func corruptionOffset(_ number: Int) -> UInt64 {
        var g = SplitMix64(seed: corruptionSeed ^ UInt64(truncatingIfNeeded: number) &* 0xD1B5_4A32_D192_ED03)
        return g.next()
    }
}

extension Duration {
    /// Nanoseconds, clamped to 0…1 day (fault delays and link latencies beyond that are input errors, not traps).
    var clampedNanoseconds: Int {
        let (s, a) = components
        guard s >= 0 else { return 0 }
        guard s < 86_400 else { return 86_400 * 1_000_000_000 }
        return Int(s) * 1_000_000_000 + Int(max(a, 0) / 1_000_000_000)
    }
}
