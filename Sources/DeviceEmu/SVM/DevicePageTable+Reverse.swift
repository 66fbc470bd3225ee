import HostMM
import NIOConcurrencyHelpers

/// Checked mode's reverse map of a device's page tables: for each PFN, how many entries
/// (in any of the device's tables) map it and one address that does — what HostMM's
/// checked mode asks before it frees or moves a page (`DeviceMappingOracle`). Kept only
/// in checked mode; the tables' hot paths test one optional.
///
/// Shared by every table of one device, so a query never touches an address space or a
/// mirror (nor keeps one alive).
///
/// Threads: any. Tables update it with their owner's lock held; its own lock is the
/// innermost of all and nothing is called with it held.
final class ReverseMappings: @unchecked Sendable {
    private let lock = NIOLock()
    private var entries: [UInt64: (count: Int32, address: UInt64)] = [:]  // guarded by `lock`

    /// Entries per PFN, as recorded (invariant checks compare it with the tables).
    var counts: [UInt64: Int32] { lock.withLock { entries.mapValues(\.count) } }

    /// An address whose entry maps `pfn`, or nil.
    func address(of pfn: PFN) -> UInt64? { lock.withLock { entries[pfn.rawValue]?.address } }

    /// The entry at `address` changes from `old` to `new`.
    func replace(_ old: DevicePageTableEntry, with new: DevicePageTableEntry, at address: UInt64) {
        guard old.isValid || new.isValid else { return }
        lock.withLock {
            if old.isValid { drop(old.pfn.rawValue) }
            if new.isValid {
                let key = new.pfn.rawValue
                entries[key] = ((entries[key]?.count ?? 0) + 1, address)
            }
        }
    }

    /// The valid entries of `leaf` (table key `key`) inside `[start, end)` are about to be cleared.
    func forget(_ leaf: UnsafeMutablePointer<UInt64>, _ key: UInt64, _ start: UInt64 = 0, _ end: UInt64 = .max) {
        let base = key << 21
        let from = start > base ? Int((start - base) >> 12) : 0
        let to = end < base + (1 << 21) ? Int((end - base + 4095) >> 12) : 512
        lock.withLock {
            for i in from..<to where leaf[i] & 1 != 0 {
                drop(DevicePageTableEntry(rawValue: leaf[i]).pfn.rawValue)
            }
        }
    }

    private func drop(_ key: UInt64) {
        guard let e = entries[key] else { return }
        entries[key] = e.count <= 1 ? nil : (e.count - 1, e.address)
    }
}
