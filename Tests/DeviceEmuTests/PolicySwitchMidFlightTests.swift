import DeviceEmu
import HostMM
import Testing

/// A driver author's experiment: `setPolicy` from another thread while an operation is
/// held at a step by a `StepProbe`. The guide (section 9) says the policy is read once at
/// the start of each operation: the held operation must finish under the old policy, the
/// next one start under the new, and `setPolicy` must not wait for the operation.
@Suite(.timeLimit(.minutes(1))) struct PolicySwitchMidFlightTests {
    struct World {
        let probe = StepProbe()
        let gpu: Device
        let mm: AddressSpace
        let base: UInt64
        let pattern: PagePattern
        var all: Range<UInt64> { range(base, pages: 32) }

        init(_ policy: MigrationPolicy) throws {
            let memory = try makeMemory(mib: 32)
            gpu = try makeDevice(memory, vramMiB: 4, policy: policy, observer: probe)
            (mm, base, pattern) = try makeProcess(memory, pages: 32, seed: 21)
        }
    }

    @Test func aMigrationHeldAtItsFenceKeepsItsBatchSize() throws {
        var policy = MigrationPolicy()
        policy.batchPages = 16
        let w = try World(policy)
        defer { try? w.gpu.shutdown() }
        let gpu = w.gpu
        try w.probe.arm(at: .init(.fenceWaitBegin, direction: .toDevice), hold: .seconds(20)) {
            var p = gpu.policy
            p.batchPages = 4
            try? gpu.setPolicy(p)
        }
        let r = try w.gpu.migrateToDevice(w.mm, range: w.all)
        #expect(w.probe.waitForAction())
        #expect(w.probe.outcome == .finishedWhileHeld, "setPolicy does not wait for a migration")
        #expect(r.migrated == 32 && r.batches == 2, "the held migration kept 16-page batches")
        #expect(w.gpu.policy.batchPages == 4)

        let back = try w.gpu.migrateRangeToRAM(w.mm, range: w.all)
        #expect(back.migrated == 32 && back.batches == 8, "the next operation reads the new policy")
        #expect(try w.pattern.cpuMismatches(w.mm, w.base, pages: 32).isEmpty)
    }

    @Test func aCPUFaultHeldAtItsSetupKeepsItsWindow() throws {
        var policy = MigrationPolicy()
        policy.cpuFaultGranularity = .faultAround(pages: 16)
        let w = try World(policy)
        defer { try? w.gpu.shutdown() }
        #expect(try w.gpu.migrateToDevice(w.mm, range: w.all).migrated == 32)
        let gpu = w.gpu
        try w.probe.arm(at: .init(.setupBegin, direction: .toRAM), hold: .seconds(20)) {
            var p = gpu.policy
            p.cpuFaultGranularity = .page
            try? gpu.setPolicy(p)
        }
        #expect(try w.mm.read(at: w.base + UInt64(3 * pageSize), count: pageSize) == w.pattern.page(3))
        #expect(w.probe.waitForAction())
        #expect(w.probe.outcome == .finishedWhileHeld)
        #expect(w.gpu.counters[.cpuFaults] == 1)
        #expect(w.gpu.counters[.pagesToRAM] == 16, "the held fault brought its 16-page window")

        #expect(try w.mm.read(at: w.base + UInt64(20 * pageSize), count: pageSize) == w.pattern.page(20))
        #expect(w.gpu.counters[.cpuFaults] == 2)
        #expect(w.gpu.counters[.pagesToRAM] == 17, "the next fault moved one page")
        #expect(w.gpu.residentPages(w.mm, w.base, pages: 32) == 15)
    }

    /// The batch ceiling `setPolicy` checks is the engine's `maxBatch`, fixed when the
    /// device made its engine (4096, or the creation policy's larger batch): ask
    /// `problem(maxBatch:)` with it, not the default.
    @Test func theBatchCeilingIsTheEnginesFromCreation() throws {
        let memory = try makeMemory(mib: 32)
        let small = try makeDevice(memory, vramMiB: 4, name: "small")
        defer { try? small.shutdown() }
        var p = small.policy
        p.batchPages = 8192
        #expect(throws: DeviceError.invalidArgument) { try small.setPolicy(p) }
        #expect(small.policy.batchPages == 512)

        var big = MigrationPolicy()
        big.batchPages = 8192
        let large = try makeDevice(memory, vramMiB: 4, policy: big, name: "large")
        defer { try? large.shutdown() }
        #expect(large.engine.configuration.maxBatch == 8192)
        p.batchPages = 6000
        #expect(p.problem() != nil, "the default ceiling is 4096")
        #expect(p.problem(maxBatch: large.engine.configuration.maxBatch) == nil)
        try large.setPolicy(p)
        #expect(large.policy.batchPages == 6000)
    }
}
