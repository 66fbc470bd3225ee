import DeviceEmu
import Glibc
import HostMM
import NIOConcurrencyHelpers
import Testing

/// `suspend()` against work already in flight: it refuses new migrations and GPU accesses
/// but lets the admitted ones finish before it evicts, as nouveau flushes its GPU fault
/// work (`nouveau_svm_suspend`) before `nouveau_dmem_suspend` evicts VRAM.
/// (Found by `dmem-bench race`: gpu-fault @ gpuFault × suspend-resume.)
@Suite(.timeLimit(.minutes(1))) struct SuspendRaceTests {
    /// A GPU read admitted before the suspend faulted, and its fault's migration entered
    /// the device gate a second time: the suspend had closed it, so the migration was
    /// refused and the read failed with `.suspended`, although the suspend was waiting for
    /// that very access to finish. The fault now migrates inside the access's admission.
    @Test func aGPUFaultInFlightWhenTheDeviceSuspendsCompletes() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.gpuFault = .migrateToVRAM(pages: 16)
        let probe = StepProbe()
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: probe)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 16, seed: 5)
        let space = try gpu.bind(mm)
        let suspender = NIOLockedValueBox<TestThread?>(nil)
        let suspendResult = NIOLockedValueBox<String>("not run")
        try probe.arm(at: .init(.gpuFault), hold: .seconds(20)) {
            suspender.withLockedValue {
                $0 = TestThread {
                    do {
                        try gpu.suspend()
                        try gpu.resume()
                        suspendResult.withLockedValue { $0 = "ok" }
                    } catch { suspendResult.withLockedValue { $0 = "\(error)" } }
                }
            }
            // Hold the fault until the suspend has closed the gate: it then waits for this access.
            for _ in 0..<20_000 where !gpu.isSuspended { usleep(100) }
        }
        let read: Result<[UInt8], DeviceError>
        do { read = .success(try space.read(at: a + UInt64(pageSize), count: pageSize)) } catch { read = .failure(error) }
        #expect(probe.waitForAction(timeout: .seconds(20)))
        #expect(probe.outcome == .finishedWhileHeld, "the suspend had not closed the gate while the fault was held")
        let joined = suspender.withLockedValue { $0 }?.join(seconds: 20)
        #expect(joined == true)
        #expect(suspendResult.withLockedValue { $0 } == "ok")
        #expect(try read.get() == pattern.page(1))
        // The fault's migration completed, then the suspend evicted it: everything is back in RAM.
        #expect(gpu.counters[.pagesToDevice] == 16 && gpu.counters[.pagesEvicted] == 16)
        #expect(gpu.vram.inUsePageCount == 0)
        #expect(try pattern.cpuMismatches(mm, a, pages: 16).isEmpty)
        #expect(gpu.checkInvariants().isEmpty)
    }
}
