@testable import DMAEngine
import DeviceEmu
import HostMM
import NIOConcurrencyHelpers
import Testing

/// The 2017 callback API (`migrateVMA(ops:)`) on device-coherent VRAM. `migrateVMAPages`
/// maps a hole's new device page with a present CPU entry at once when the page is
/// CPU-reachable (`migrate_vma_insert_page`), before `finalizeAndMap` runs: the driver's
/// clear must have landed by then, as the three-step flow waits for its fence before
/// `migrateVMAPages` on coherent VRAM. (Found by `dmem-bench race --api 2017 --memory
/// coherent --hole`: checked mode's `hole-mapped-with-copy-in-flight` in most cells.)
@Suite(.timeLimit(.minutes(1))) struct CoherentLegacyRaceTests {
    /// The mapped backend with no worker started: a copy runs only when someone waits on
    /// its fence, so "not landed yet" is deterministic.
    static let waitersOnly = CopyBackendKind.custom(name: "mapped(waiters only)") { settings in
        MappedWorkersBackend(threads: 1, queueDepth: settings.queueDepth, startWorkers: false)
    }

    /// A hole migrated to coherent VRAM through the 2017 API, read by the CPU while the
    /// driver is held after `migrateVMAPages`: it read the stale contents of a recycled
    /// VRAM page, because `allocAndCopy` returned with the clear still queued and only
    /// `finalizeAndMap` waited for it. `allocAndCopy` now waits on coherent VRAM.
    @Test func aHoleInCoherentVRAMReadsZerosAsSoonAsItIsMapped() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.apiGeneration = .callbacks2017
        policy.batchPages = 16
        let probe = StepProbe()
        // One 16-page chunk of VRAM: the second migration gets the pages the first one used.
        var c = Device.Configuration(name: "coherent", vramSize: 16 * pageSize, memoryType: .deviceCoherent,
                                     backend: Self.waitersOnly, policy: policy)
        c.chunkSize = 16 * pageSize
        c.observer = probe
        let gpu = try Device(memory: memory, configuration: c)
        defer { try? gpu.shutdown() }
        // Fill every VRAM page with a pattern, then free them all.
        let (mm, a, _) = try makeProcess(memory, pages: 16, seed: 7)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 16)).migrated == 16)
        #expect(gpu.vram.inUsePageCount == 16)
        try mm.munmap(a, length: 16 * pageSize)
        #expect(gpu.vram.inUsePageCount == 0)
        // A range never touched: 16 holes, populated with cleared device pages.
        let holes = try mm.mmap(length: 16 * pageSize)
        let seen = NIOLockedValueBox<[UInt8]>([])
        try probe.arm(at: .init(.migratePagesEnd, direction: .toDevice), hold: .seconds(5)) {
            let bytes = (try? mm.read(at: holes + UInt64(3 * pageSize), count: pageSize)) ?? [1]
            seen.withLockedValue { $0 = bytes }
        }
        let moved = try gpu.migrateToDevice(mm, range: range(holes, pages: 16))
        #expect(probe.waitForAction(timeout: .seconds(20)))
        #expect(probe.outcome == .finishedWhileHeld)
        #expect(moved.migrated == 16 && moved.holes == 16)
        let zeros = [UInt8](repeating: 0, count: pageSize)
        let read = seen.withLockedValue { $0 }
        #expect(read == zeros, "the CPU read a coherent hole before its clear landed: \(read.filter { $0 != 0 }.count) nonzero bytes")
        let wrong = try (0..<16).filter { try mm.read(at: holes + UInt64($0 * pageSize), count: pageSize) != zeros }
        #expect(wrong.isEmpty, "pages not zero: \(wrong)")
        #expect(gpu.checkInvariants().isEmpty)
    }
}
