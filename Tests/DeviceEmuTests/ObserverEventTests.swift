import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// The observer's event stream is what traces and checkers are drawn from: every batch
/// that collected pages reports a finalize span, that span begins after the batch's fence
/// signalled, and each step's span lies inside its batch (`setupBegin` … `finalizeEnd`).
@Suite struct ObserverEventTests {
    /// Checks every batch in `log`; returns the number of batches that reached finalize.
    @discardableResult
    func checkBatches(_ log: EventLog, _ direction: MigrationEvent.Direction) -> Int {
        let events = log.all.filter { $0.direction == direction && $0.batch != 0 }
        var finalized = 0
        for batch in Set(events.map(\.batch)) {
            let e = events.filter { $0.batch == batch }
            guard let begin = e.first(where: { $0.kind == .setupBegin }),
                  let setup = e.first(where: { $0.kind == .setupEnd }) else {
                Issue.record("batch \(batch): no setup events")
                continue
            }
            #expect(setup.beginTime >= begin.time, "setup starts before its batch")
            let finalize = e.first { $0.kind == .finalizeEnd }
            if setup.pages == 0 {
                #expect(finalize == nil, "batch \(batch) collected nothing but finalized")
                continue
            }
            guard let finalize else {
                Issue.record("batch \(batch) collected \(setup.pages) pages and reported no finalize")
                continue
            }
            finalized += 1
            #expect(finalize.beginTime != 0, "finalize of batch \(batch) has no start")
            #expect(finalize.beginTime >= setup.time && finalize.time >= finalize.beginTime)
            for step in e where step.kind != .setupBegin && step.kind != .fenceSignaled {
                #expect(step.time >= begin.time && step.time <= finalize.time, "\(step.kind) outside batch \(batch)")
                if step.beginTime != 0 { #expect(step.beginTime >= begin.time, "\(step.kind) starts before batch \(batch)") }
            }
            if let signal = e.first(where: { $0.kind == .fenceSignaled }) {
                #expect(finalize.beginTime >= signal.time, "finalize of batch \(batch) starts before its fence signalled")
            }
        }
        return finalized
    }

    func run(_ policy: MigrationPolicy, backend: CopyBackendKind = .memcpy) throws -> (EventLog, MigrationResult) {
        let memory = try makeMemory(mib: 64)
        let log = EventLog()
        let gpu = try makeDevice(memory, vramMiB: 16, backend: backend, policy: policy, observer: log)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let pages = 256
        let a = try mm.mmap(length: pages * pageSize)
        try PagePattern(seed: 3).fill(mm, a, pages: pages - 16)   // the last 16 pages stay holes
        let result = try gpu.migrateToDevice(mm, range: range(a, pages: pages))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        try mm.read(at: a, into: buffer)   // one CPU fault
        return (log, result)
    }

    @Test(arguments: [MigrationPolicy.APIGeneration.threeStep, .callbacks2017])
    func everyBatchFinalizesAfterItsFenceInsideItsSpan(api: MigrationPolicy.APIGeneration) throws {
        var p = MigrationPolicy()
        p.batchPages = 32
        p.apiGeneration = api
        p.pipelineDepth = api == .threeStep ? 2 : 1
        let (log, result) = try run(p, backend: .ioUring)
        #expect(result.migrated == 256)
        #expect(checkBatches(log, .toDevice) == 8)
        #expect(checkBatches(log, .toRAM) == 1)
        #expect(log.count(.fenceSignaled, .toDevice) == 8)
    }

    /// All-or-nothing batches refused at setup still report their (restoring) finalize.
    @Test(arguments: [MigrationPolicy.APIGeneration.threeStep, .callbacks2017])
    func refusedBatchesReportTheirFinalize(api: MigrationPolicy.APIGeneration) throws {
        let memory = try makeMemory(mib: 64)
        let log = EventLog()
        var p = MigrationPolicy()
        p.batchPages = 16
        p.apiGeneration = api
        p.rangeMigration = .allOrNothing
        let gpu = try makeDevice(memory, vramMiB: 16, policy: p, observer: log)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 64 * pageSize)
        try PagePattern(seed: 4).fill(mm, a, pages: 64)
        let pinned = try mm.pinUserPages(a + UInt64(20 * pageSize), count: 1, write: false)   // batch 1 cannot move whole
        defer { memory.unpinUserPages(pinned) }
        let result = try gpu.migrateToDevice(mm, range: range(a, pages: 64))
        #expect(result.refusedBatches == 1 && result.migrated == 48)
        #expect(checkBatches(log, .toDevice) == 4)
    }
}
