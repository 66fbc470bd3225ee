#if canImport(Glibc)
import Glibc
#endif
import HostMM
import DMAEngine

/// Copies that failed after their page was already committed to its new mapping — a
/// hole's clear after `migrateVMAPages` inserted the device page, or any copy of the
/// 2017 API, whose `finalizeAndMap` may not change `src`/`dst`. The page is still locked
/// (no CPU or GPU access can reach it before finalize), so the driver issues the copy
/// again, `policy.committedCopyRetries` times, and then copies with the CPU through the
/// VRAM mapping as a last resort (on hardware: another engine). Counted in
/// `copyRetries` and `cpuCopyFallbacks`. Never fails: the page ends up with its data.
extension Device {
    /// Redoes `items` (a `source` RAM page to copy, or nil to clear, into device `page`).
    func redoCommitted(_ items: [(source: PFN?, page: PFN)], _ policy: MigrationPolicy) {
        var pending = items
        var attempt = 0
        while !pending.isEmpty && attempt < policy.committedCopyRetries {
            attempt += 1
            counters.add(.copyRetries, pending.count)
            guard let channel = try? channels.checkout() else { break }
            var enqueued: [(source: PFN?, page: PFN)] = []
            var failed: [(source: PFN?, page: PFN)] = []
            for item in pending {
                guard let to = vram.dmaAddress(of: item.page) else { continue }
                do {
                    if let source = item.source {
                        try channel.enqueueCopy(from: ramAddress(source), to: to, length: pageSize)
                    } else {
                        try channel.enqueueFill(to, length: pageSize, value: 0)
                    }
                    enqueued.append(item)
                } catch {
                    failed.append(item)
                }
            }
            let fence: Fence
            do { fence = try channel.submit() } catch {
                channels.checkin(channel)
                failed += enqueued
                pending = failed
                break
            }
            channels.checkin(channel)
            do { try fence.wait() } catch .copyFailed(let list) {
                counters.add(.copyFailures, list.count)
                for f in list where f.index < enqueued.count { failed.append(enqueued[f.index]) }
            } catch {}
            pending = failed
        }
        for item in pending {
            guard let to = vram.bytes(of: item.page) else { continue }
            if let source = item.source, let from = memory.bytes(source) {
                memcpy(to, from, pageSize)
            } else {
                memset(to, 0, pageSize)
            }
            counters.add(.cpuCopyFallbacks)
        }
    }
}
