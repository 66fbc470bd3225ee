import DMAEngine
import DeviceEmu
import Foundation
import HostMM
import NIOConcurrencyHelpers
import Synchronization
import Testing

/// Regressions the torture run (`dmem-bench torture`) found in DeviceEmu, each reduced to
/// a bounded race between the paths involved.
@Suite(.timeLimit(.minutes(1))) struct TortureRegressionTests {
    /// `GPUAddressSpace.detach` (unbind, teardown) removed the MMU notifier first and
    /// emptied the device page table after: an eviction in between raised its
    /// invalidation to nobody, moved the page, and left the dying table mapping the old
    /// one. Checked mode reported `device-pte-maps-migrated-page`. The table is now emptied
    /// (and closed to new entries) before the notifier goes. The window is a few hundred
    /// nanoseconds: this bounded race exercises it, the torture run is what hit it.
    @Test func unbindingWhileAnotherThreadEvictsLeavesNoEntryBehind() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 14, checked: .on)
        let gpu = try Device(memory: memory, configuration: .init(vramSize: 2 << 20, backend: .memcpy))
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 64 * pageSize)
        try mm.touch(a, length: 64 * pageSize, write: true)
        let stop = Atomic<Bool>(false)
        let evictor = Thread { while !stop.load(ordering: .relaxed) { gpu.evictAll() } }
        evictor.start()
        var rounds = 0
        // 2 s and at least 21 rounds, however slow the machine (Thread Sanitizer); at most 30 s.
        let start = ContinuousClock.now
        while (rounds <= 20 || ContinuousClock.now - start < .seconds(2)) && ContinuousClock.now - start < .seconds(30) {
            _ = try gpu.bind(mm)
            _ = try? gpu.migrateToDevice(mm, range: a ..< a + UInt64(64 * pageSize))
            gpu.unbind(mm)
            rounds += 1
        }
        stop.store(true, ordering: .relaxed)
        while !evictor.isFinished { usleep(1000) }
        #expect(rounds > 20)
        #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations.prefix(3) ?? [])")
        try gpu.shutdown()
    }
}
