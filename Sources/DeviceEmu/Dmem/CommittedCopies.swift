#if canImport(Glibc)
import Glibc
#endif
import HostMM
import DMAEngine

/// Copies that failed after their page was already committed to its new mapping — a
/// hole's clear after `migrateVMAPages` inserted the device page, or any copy of the
/// 2017 API, whose `finalizeAndMap` may not change `src`/`dst` (to VRAM, and back to RAM
/// on a CPU fault: the device source is still locked and still holds the data, freed only
/// by finalize). The pages are still locked (no CPU or GPU access can reach them before
/// finalize), so the driver issues the copy again, `policy.committedCopyRetries` times,
/// and then copies with the CPU through the VRAM mapping as a last resort (on hardware:
/// another engine). Counted in `copyRetries` and `cpuCopyFallbacks`. Never fails: the page
/// ends up with its data.
extension Device {
    /// Redoes `items`: to VRAM (`toRAM` false), a `source` RAM page to copy, or nil to
    /// clear, into device `page`; back to RAM, device `source` into RAM `page`.
    func redoCommitted(_ items: [(source: PFN?, page: PFN)], _ policy: MigrationPolicy, toRAM: Bool = false) {
        var pending = items
        var attempt = 0
        while !pending.isEmpty && attempt < policy.committedCopyRetries {
            attempt += 1
            counters.add(.copyRetries, pending.count)
            guard let channel = try? channels.checkout() else { break }
            var enqueued: [(source: PFN?, page: PFN)] = []
            var failed: [(source: PFN?, page: PFN)] = []
            for item in pending {
                do {
                    if toRAM {
                        guard let source = item.source, let from = vram.dmaAddress(of: source) else { continue }
                        try channel.enqueueCopy(from: from, to: ramAddress(item.page), length: pageSize)
                    } else if let source = item.source {
                        guard let to = vram.dmaAddress(of: item.page) else { continue }
                        try channel.enqueueCopy(from: ramAddress(source), to: to, length: pageSize)
                    } else {
                        guard let to = vram.dmaAddress(of: item.page) else { continue }
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
            if toRAM {
                guard let source = item.source, let from = vram.bytes(of: source),
                      let to = memory.bytes(item.page) else { continue }
                memcpy(to, from, pageSize)
            } else {
                guard let to = vram.bytes(of: item.page) else { continue }
                if let source = item.source, let from = memory.bytes(source) {
                    memcpy(to, from, pageSize)
                } else {
                    memset(to, 0, pageSize)
                }
            }
            counters.add(.cpuCopyFallbacks)
        }
    }
}
