import DeviceEmu
import HostMM
import Testing

/// An atomic GPU fault on a system page takes it device-exclusive (`make_device_exclusive`)
/// and then maps it on the GPU. `MADV_DONTNEED` takes the mmap lock for read, as the fault
/// does, so it can zap the new device-exclusive entry between the two: its invalidation
/// finds no device entry yet, and the page it frees is the one the driver then mapped —
/// the atomic incremented a freed page while the CPU read zeros (checked mode:
/// `device-pte-maps-freed-page`). nouveau's `nouveau_atomic_range_fault` reads the
/// notifier sequence before `make_device_exclusive` and maps only if
/// `mmu_interval_read_retry` says nothing invalidated the range since, else tries again.
/// (Found by `dmem-bench race --flow gpu-atomic --gpu-fault map`.)
@Suite(.timeLimit(.minutes(1))) struct DeviceExclusiveRaceTests {
    @Test func dontNeedBetweenMakeDeviceExclusiveAndTheGPUMapIsSeen() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 14, checked: .on)
        var policy = MigrationPolicy()
        policy.batchPages = 16
        policy.gpuFault = .mapSystemMemory(pages: 16)
        let probe = StepProbe()
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: probe)
        let (mm, base, pattern) = try makeProcess(memory, pages: 32, seed: 23)
        let space = try gpu.bind(mm)
        let target = base + UInt64(pageSize)
        try probe.arm(at: .init(.deviceExclusive, direction: nil), hold: .seconds(20)) {
            try? mm.madvise(target, length: pageSize, advice: .dontNeed)
        }
        let old = try space.atomicAdd(at: target, 1)
        #expect(probe.waitForAction())
        #expect(probe.outcome == .finishedWhileHeld, "DONTNEED takes the mmap lock for read")
        // The zap came first: the atomic lands on the fresh zero page.
        #expect(old == 0)
        var want = [UInt8](repeating: 0, count: pageSize)
        want[0] = 1
        #expect(try space.read(at: target, count: pageSize) == want, "GPU")
        #expect(try mm.read(at: target, count: pageSize) == want, "CPU")
        for p in 0..<32 where p != 1 {
            #expect(try mm.read(at: base + UInt64(p * pageSize), count: pageSize) == pattern.page(p), "page \(p)")
        }
        #expect(gpu.checkInvariants().isEmpty)
        #expect(memory.checkInvariants(addressSpaces: [mm]).isEmpty)
        gpu.unbind(mm)
        try mm.munmap(base, length: 32 * pageSize)
        try gpu.shutdown()
        #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations.prefix(3) ?? [])")
    }
}

/// An mprotect(PROT_READ) after the atomic fault checked the VMA but before
/// `make_device_exclusive` makes the write GUP fail (`check_vma_flags`): the atomic must
/// report what it reports when the VMA was read-only from the start, `.permissionDenied`,
/// not `.fault` ("no readable mapping" of a readable page). (Found by `dmem-bench race
/// --flow gpu-atomic --gpu-fault thrashing --vram 16`, where the window is the mmap lock
/// released between the fault's migration and its exclusive-access path.)
@Suite(.timeLimit(.minutes(1))) struct DeviceExclusivePermissionTests {
    /// Maps system memory, but first makes the whole range read-only: it stands in for a
    /// thread whose mprotect lands between the fault's VMA check and the exclusive-access
    /// path (the decision is asked with no lock held).
    final class ProtectingPolicy: GPUFaultPolicy, @unchecked Sendable {
        let mm: AddressSpace
        let base: UInt64
        init(_ mm: AddressSpace, _ base: UInt64) { (self.mm, self.base) = (mm, base) }
        func resolve(_ fault: GPUFaultInfo) -> GPUFaultDecision {
            try? mm.mprotect(base, length: 16 * pageSize, protection: .read)
            return .mapSystemMemory(pages: 1)
        }
    }

    @Test func anAtomicAfterMprotectReadOnlyIsAPermissionFault() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20, maxDevicePages: 1 << 14, checked: .on)
        let (mm, base, pattern) = try makeProcess(memory, pages: 16, seed: 31)
        var policy = MigrationPolicy()
        policy.gpuFault = .custom(ProtectingPolicy(mm, base))
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy)
        let space = try gpu.bind(mm)
        let target = base + UInt64(pageSize)
        #expect(throws: DeviceError.permissionDenied(address: target)) { try space.atomicAdd(at: target, 1) }
        #expect(try mm.read(at: target, count: pageSize) == pattern.page(1))
        #expect(mm.pageTableEntry(target).kind == .present)
        gpu.unbind(mm)
        try mm.munmap(base, length: 16 * pageSize)
        try gpu.shutdown()
        #expect(memory.checker?.countsByRule == [:])
    }
}
