@testable import DMAEngine
import DeviceEmu
@testable import HostMM
import NIOConcurrencyHelpers
import Testing

/// What a CPU fault on device memory returns when part of it fails (`Device.migrateToRAM`,
/// nouveau's `nouveau_dmem_migrate_to_ram`): SIGBUS when setup fails or the faulting
/// page's copy fails however it fails, the model's OOM only when no RAM page is left for
/// the faulting page, and a retry (0) when only neighbours failed. The whole table is in
/// docs/kernel-map.md ("CPU and GPU fault results").
@Suite(.timeLimit(.minutes(1))) struct FaultResultTests {
    /// Memcpy channels whose queues the test can kill (`ChannelHealth.markFailed`, as an
    /// io_uring backend does when `io_uring_enter` fails for good): enqueue and submit then
    /// throw `.channelFailed`.
    final class KillableChannels: Sendable {
        private let healths = NIOLockedValueBox<[ChannelHealth]>([])
        var kind: CopyBackendKind {
            .custom(name: "killable(memcpy)") { [healths] settings throws(DMAError) in
                healths.withLockedValue { $0.append(settings.health) }
                return try CopyBackendKind.memcpy.make(settings)
            }
        }
        func killAll() {
            for health in healths.withLockedValue({ $0 }) { health.markFailed(.ioError) }
        }
    }

    /// The engine no longer knows System RAM (its region unregistered): every D2H copy is
    /// refused at enqueue (`.unknownRegion`) while `submit()` still works. RAM pages were
    /// there, so the fault is nouveau's copy failure (SIGBUS), not the model's OOM: the
    /// reviewer's "faultPageWithoutRAM" report (it returned `.oom`, `HostMMError.outOfMemory`).
    @Test(arguments: [MigrationPolicy.CPUFaultGranularity.page, .faultAround(pages: 4)])
    func aFaultingPageWhoseCopyIsRefusedAtEnqueueRaisesSigbus(granularity: MigrationPolicy.CPUFaultGranularity) throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.cpuFaultGranularity = granularity
        let gpu = try makeDevice(memory, vramMiB: 8, backend: .memcpy, policy: policy)
        defer { try? gpu.shutdown() }
        let (mm, a, _) = try makeProcess(memory, pages: 4, seed: 0xFA17)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 4)).migrated == 4)
        let free = memory.freeRAMPageCount
        try gpu.engine.unregister(gpu.hostRegion)
        let target = a + UInt64(pageSize)
        #expect(throws: HostMMError.busError(address: target)) { try mm.read(at: target, count: 1) }
        #expect((0..<4).allSatisfy { mm.pageTableEntry(a + UInt64($0 * pageSize)).kind == .devicePrivate })
        #expect(gpu.vram.inUsePageCount == 4)
        #expect(memory.freeRAMPageCount == free, "the RAM pages of refused copies are given back")
        #expect(gpu.checkInvariants().isEmpty)
        try mm.munmap(a, length: 4 * pageSize)
    }

    /// The channel died (enqueue and submit refused): SIGBUS too.
    @Test func aFaultOnADeadChannelRaisesSigbus() throws {
        let memory = try makeMemory(mib: 64)
        let channels = KillableChannels()
        let gpu = try makeDevice(memory, vramMiB: 8, backend: channels.kind)
        defer { try? gpu.shutdown() }
        let (mm, a, _) = try makeProcess(memory, pages: 1, seed: 0xDEAD)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 1)).migrated == 1)
        let free = memory.freeRAMPageCount
        channels.killAll()
        #expect(throws: HostMMError.busError(address: a)) { try mm.read(at: a, count: 1) }
        #expect(mm.pageTableEntry(a).kind == .devicePrivate && gpu.vram.inUsePageCount == 1)
        #expect(memory.freeRAMPageCount == free)
        try mm.munmap(a, length: pageSize)
    }

    /// A fault-around window of 4 pages, faulting on page 1, with one D2H copy failing on
    /// the fence (descriptors 0-3 are the migration's H2D copies, 4-7 the window's D2H
    /// copies in address order): the faulting page's failure is SIGBUS; a neighbour's
    /// leaves that neighbour in VRAM and the access succeeds.
    @Test(arguments: [(failing: 4, faultingFails: false), (failing: 5, faultingFails: true)])
    func aCopyFailureOnTheFenceIsSigbusOnlyForTheFaultingPage(failing: Int, faultingFails: Bool) throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.cpuFaultGranularity = .faultAround(pages: 4)
        let plan = FaultPlan(rules: [.init(.nth(failing), .fail(.ioError))])
        let gpu = try makeDevice(memory, vramMiB: 8, backend: .faultInjecting(plan, wrapping: .memcpy), policy: policy)
        defer { try? gpu.shutdown() }
        let (mm, a, pattern) = try makeProcess(memory, pages: 4, seed: 0xFE4C)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 4)).migrated == 4)
        let target = a + UInt64(pageSize)
        let failed = a + UInt64((failing - 4) * pageSize)
        if faultingFails {
            #expect(throws: HostMMError.busError(address: target)) { try mm.read(at: target, count: 1) }
        } else {
            #expect(try mm.read(at: target, count: pageSize) == pattern.page(1))
        }
        #expect(mm.pageTableEntry(failed).kind == .devicePrivate)
        #expect(gpu.vram.inUsePageCount == 1)
        #expect(gpu.checkInvariants().isEmpty)
        #expect(try pattern.cpuMismatches(mm, a, pages: 4).isEmpty)   // the failed page's data stayed in VRAM
    }

    /// A fault-around batch fails as a whole (dead channel: submit refused) while the
    /// faulting page itself was not collected, because another migration holds its lock:
    /// only neighbours were restored, so the fault returns 0 and the access is retried
    /// (nouveau: `if (!args.cpages) return 0`), instead of a SIGBUS for a page it never
    /// tried to move.
    @Test func aFailedBatchOfNeighboursOnlyRetriesTheAccess() throws {
        let memory = try makeMemory(mib: 64)
        var policy = MigrationPolicy()
        policy.cpuFaultGranularity = .faultAround(pages: 4)
        let channels = KillableChannels()
        let gpu = try makeDevice(memory, vramMiB: 8, backend: channels.kind, policy: policy)
        defer { try? gpu.shutdown() }
        let (mm, a, _) = try makeProcess(memory, pages: 4, seed: 0x0B5)
        #expect(try gpu.migrateToDevice(mm, range: range(a, pages: 4)).migrated == 4)
        channels.killAll()
        let address = a + UInt64(2 * pageSize)
        let page = mm.pageTableEntry(address).pfn
        let vma = try #require(mm.findVMA(address))
        memory.lockPage(page)   // another migration's collect holds it
        memory.getPage(page)    // the fault's reference (`do_swap_page`)
        let result = mm.mmapLock.withReadLock {
            gpu.migrateToRAM(VMFault(mm: mm, vma: vma, address: address, page: page, isWrite: false))
        }
        memory.putPage(page)
        memory.unlockPage(page)
        #expect(result == .done)
        #expect((0..<4).allSatisfy { mm.pageTableEntry(a + UInt64($0 * pageSize)).kind == .devicePrivate })
        #expect(gpu.vram.inUsePageCount == 4)
        #expect(gpu.checkInvariants().isEmpty)
        try mm.munmap(a, length: 4 * pageSize)
    }
}
