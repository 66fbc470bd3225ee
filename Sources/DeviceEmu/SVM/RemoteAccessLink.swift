#if canImport(Glibc)
import Glibc
#endif
import DMAEngine
import Synchronization

/// The host↔device link that GPU loads, stores and atomics cross when they reach system
/// memory through a mapped entry (`Device.Configuration.remoteAccessLink`): without it a
/// remote access costs what a VRAM access costs, and mapping system memory looks cheaper
/// than it is on a real bus.
///
/// Each access occupies its direction of the link (reads: host to device; writes and
/// atomics: device to host) for `latency` + bytes / bandwidth, one after the other in the
/// order they claim it, across all threads. A thread whose claim ends more than `slack`
/// ahead of the clock sleeps until it does: sustained traffic runs at the link's rate,
/// while a short burst may run up to `slack` ahead (no spinning, on 2 cores).
///
/// Threads: any; two atomic words.
final class RemoteAccessLink: Sendable {
    let model: LinkModel
    private let latency: UInt64
    private let toDevice = Atomic<UInt64>(0)
    private let toHost = Atomic<UInt64>(0)
    /// How far a thread may run ahead of the link before it sleeps.
    static let slack: UInt64 = 200_000

    /// - Throws: `.invalidArgument` for a bandwidth that is not a positive finite number,
    ///   or a negative latency.
    init(_ model: LinkModel) throws(DeviceError) {
        guard model.bytesPerSecond.isFinite, model.bytesPerSecond > 0 else {
            throw .invalidArgument(reason: "remote access link: bytesPerSecond \(model.bytesPerSecond) is not a positive finite number")
        }
        guard model.latency >= .zero else { throw .invalidArgument(reason: "remote access link: latency \(model.latency) is negative") }
        self.model = model
        latency = MonotonicTime.nanoseconds(model.latency)
    }

    /// Claims the link for an access of `bytes`; returns the nanoseconds the caller slept.
    func charge(bytes: Int, toHost write: Bool) -> UInt64 {
        let cost = latency &+ UInt64(min(Double(bytes) / model.bytesPerSecond * 1e9, 8.64e13))
        let now = MonotonicTime.now()
        let end = write ? Self.claim(toHost, now, cost) : Self.claim(toDevice, now, cost)
        guard end > now &+ Self.slack else { return 0 }
        let wait = end - now
        var request = timespec(tv_sec: Int(wait / 1_000_000_000), tv_nsec: Int(wait % 1_000_000_000))
        var left = timespec()
        while nanosleep(&request, &left) != 0 && errno == EINTR { request = left }
        return wait
    }

    /// Moves a direction's clock past `now` by `cost`; returns when the claim ends.
    private static func claim(_ clock: borrowing Atomic<UInt64>, _ now: UInt64, _ cost: UInt64) -> UInt64 {
        var old = clock.load(ordering: .relaxed)
        while true {
            let end = max(old, now) &+ cost
            let (done, seen) = clock.compareExchange(expected: old, desired: end, ordering: .relaxed)
            if done { return end }
            old = seen
        }
    }
}
