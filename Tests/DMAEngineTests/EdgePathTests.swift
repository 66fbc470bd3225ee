@testable import DMAEngine
import Dispatch
import Glibc
import SystemPackage
import Testing

/// Error and edge paths a driver relying on fences meets: discarded tickets, a delayed
/// descriptor before a `.fence` one, transient completion errors, channel ids.
@Suite(.timeLimit(.minutes(1))) struct EdgePathTests {
    /// Channels made concurrently get distinct ids (they name the channel in errors and seed its faults).
    @Test func concurrentlyMadeChannelsHaveDistinctIDs() throws {
        let engine = try BackendUnderTest.iouring.engine(queueDepth: 4)
        defer { engine.shutdown() }
        let ids = IDSlots(8)
        DispatchQueue.concurrentPerform(iterations: 8) { k in
            ids.set(k, (try? engine.makeChannel())?.id ?? -1)
        }
        #expect(ids.values.sorted() == Array(0..<8))
    }
}

/// One slot per concurrent iteration (each writes only its own; read after they joined).
final class IDSlots: @unchecked Sendable {
    private let slots: UnsafeMutableBufferPointer<Int>
    init(_ n: Int) { slots = .allocate(capacity: n); slots.initialize(repeating: -1) }
    deinit { slots.deallocate() }
    func set(_ k: Int, _ id: Int) { slots[k] = id }
    var values: [Int] { Array(slots) }
}
