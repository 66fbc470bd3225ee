public import SystemPackage

/// The outcome of one descriptor, by ticket: the per-operation status of DPDK's
/// `rte_dma_completed_status()`, as `DMAChannel.status(of:)` reports it.
///
/// Completion is in order, as for `lastCompletedTicket`: a descriptor whose own
/// copy finished but whose fence waits behind an earlier fence is still `.pending`.
public enum DescriptorStatus: Sendable, Equatable, CustomStringConvertible {
    /// Enqueued, but its fence has not signalled yet (or it is not submitted yet).
    case pending
    /// Copied in full; its fence has signalled.
    case succeeded
    /// Failed with `errno` after `bytesCompleted` bytes; its fence has signalled. A descriptor
    /// dropped before it was submitted (`DMAChannel.discardPending()`, or shutdown) failed
    /// with ECANCELED and 0 bytes, at once: it never runs.
    case failed(Errno, bytesCompleted: Int)
    /// Completed longer ago than the channel keeps status for (`DMAEngine.Configuration.statusHistory` tickets).
    case expired

    public var description: String {
        switch self {
        case .pending: return "pending"
        case .succeeded: return "succeeded"
        case .failed(let e, let n): return "failed (\(e), \(n) bytes done)"
        case .expired: return "expired"
        }
    }
}

/// Failures of the most recently completed tickets, so per-ticket status can be asked
/// after the fence is gone: appended in ticket order as fences signal, pruned to a window.
///
/// Successes are not stored: a completed ticket inside the window without a failure succeeded.
/// Threads: owned by a `ChannelTimeline`, used under its lock.
struct FailureHistory {
    /// How many of the latest completed tickets keep their status.
    let window: UInt64
    private var failures: [DescriptorFailure] = []
    private var head = 0
    /// Tickets dropped before submit (never run), in ticket order; pruned with the window.
    private var discarded: [Range<UInt64>] = []
    private var discardedHead = 0

    init(window: Int) { self.window = UInt64(max(window, 1)) }

    /// Records tickets dropped before submit (they follow every ticket recorded before).
    mutating func discard(_ tickets: Range<UInt64>) {
        guard !tickets.isEmpty else { return }
        discarded.append(tickets)
    }

    /// Records the failures of a fence that just signalled (its tickets follow every earlier one).
    mutating func append(_ fenceFailures: [DescriptorFailure], completedThrough last: UInt64) {
        failures += fenceFailures.sorted { $0.ticket < $1.ticket }
        let oldest = last >= window ? last - window + 1 : 0
        while head < failures.count, failures[head].ticket.rawValue < oldest { head += 1 }
        if head > 64, head * 2 > failures.count {
            failures.removeFirst(head)
            head = 0
        }
        while discardedHead < discarded.count, discarded[discardedHead].upperBound <= oldest { discardedHead += 1 }
        if discardedHead > 64, discardedHead * 2 > discarded.count {
            discarded.removeFirst(discardedHead)
            discardedHead = 0
        }
    }

    /// The status of `ticket` given that every ticket ≤ `completed` has completed.
    func status(_ ticket: UInt64, completed: UInt64?) -> DescriptorStatus {
        if wasDiscarded(ticket) {
            if let completed, ticket <= completed, completed - ticket >= window { return .expired }
            return .failed(.canceled, bytesCompleted: 0)
        }
        guard let completed, ticket <= completed else { return .pending }
        if completed - ticket >= window { return .expired }
        var lo = head, hi = failures.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if failures[mid].ticket.rawValue < ticket { lo = mid + 1 } else { hi = mid }
        }
        guard lo < failures.count, failures[lo].ticket.rawValue == ticket else { return .succeeded }
        return .failed(failures[lo].errno, bytesCompleted: failures[lo].bytesCompleted)
    }

    /// Whether `ticket` was dropped before submit (and is still inside the window).
    private func wasDiscarded(_ ticket: UInt64) -> Bool {
        var lo = discardedHead, hi = discarded.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if discarded[mid].upperBound <= ticket { lo = mid + 1 } else { hi = mid }
        }
        return lo < discarded.count && discarded[lo].contains(ticket)
    }
}
