import DMAEngine
import HostMM
import Synchronization

/// PFN → chunk translation for `DeviceMemory`, without locks on the lookup path.
///
/// HostMM places every pgmap on a 2 MiB (512-page) boundary, so `pfn >> 9` (a "section")
/// names at most one chunk: a table of one atomic word per section of the device PFN
/// space holds `chunk index + 1`. Chunk records are written before their sections are
/// published (release) and read after (acquire).
///
/// Threads: `publish`/`clear` under the owner's lock; lookups from any thread.
final class ChunkTable: @unchecked Sendable {
    /// What a lookup needs about one chunk: plain values, no references.
    struct Slot {
        var firstPFN: PFN
        var region: RegionID
        var poolOffset: Int
        var base: UnsafeMutableRawPointer
    }

    let chunkPages: Int
    private let slots: UnsafeMutablePointer<Slot>
    private let sections: UnsafeMutablePointer<Synchronization.Atomic<UInt32>>
    private let sectionCount: Int
    private let publishedCount = Synchronization.Atomic<Int>(0)

    init(memory: PhysicalMemory, capacity: Int, chunkPages: Int) {
        self.chunkPages = chunkPages
        slots = .allocate(capacity: max(capacity, 1))
        sectionCount = (memory.maxPFN >> 9) + 1
        sections = UnsafeMutableRawPointer.allocate(byteCount: sectionCount * 4, alignment: 8)
            .initializeMemory(as: UInt32.self, repeating: 0, count: sectionCount)
            .withMemoryRebound(to: Synchronization.Atomic<UInt32>.self, capacity: sectionCount) { $0 }
    }

    deinit {
        slots.deallocate()
        UnsafeMutableRawPointer(sections).deallocate()
    }

    /// Chunks published so far.
    var published: Int { publishedCount.load(ordering: .acquiring) }

    func slot(_ index: Int) -> Slot { slots[index] }

    func publish(_ index: Int, firstPFN: PFN, region: RegionID, poolOffset: Int, base: UnsafeMutableRawPointer) {
        (slots + index).initialize(to: Slot(firstPFN: firstPFN, region: region, poolOffset: poolOffset, base: base))
        let first = Int(firstPFN.rawValue >> 9)
        let last = Int((firstPFN.rawValue + UInt64(chunkPages) - 1) >> 9)
        for s in first...last where s < sectionCount {
            sections[s].store(UInt32(index + 1), ordering: .releasing)
        }
        publishedCount.store(index + 1, ordering: .releasing)
    }

    func clear() {
        for s in 0..<sectionCount { sections[s].store(0, ordering: .releasing) }
        publishedCount.store(0, ordering: .releasing)
    }

    @inline(__always)
    func chunkIndex(of pfn: PFN) -> Int? {
        let s = Int(truncatingIfNeeded: pfn.rawValue >> 9)
        guard s >= 0, s < sectionCount else { return nil }
        let v = sections[s].load(ordering: .acquiring)
        guard v != 0 else { return nil }
        let index = Int(v) - 1
        let offset = pfn - slots[index].firstPFN
        return offset >= 0 && offset < chunkPages ? index : nil
    }

    /// The chunk slot and the page's offset in it.
    @inline(__always)
    func locate(_ pfn: PFN) -> (Slot, Int)? {
        guard let index = chunkIndex(of: pfn) else { return nil }
        let slot = slots[index]
        return (slot, pfn - slot.firstPFN)
    }
}
