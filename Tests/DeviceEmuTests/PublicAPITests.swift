import DMAEngine
import DeviceEmu
import HostMM
import NIOConcurrencyHelpers
import Testing

// A driver author's first hour, written against the public API only (no @testable):
// the flow of the driver guide, policies of one's own, a pinned race, and the copy
// engine on its own. Each test checks bytes and counts that follow from the rules.

private let page = 4096

// MARK: - Policies of one's own

/// Maps system memory on the first GPU fault of a window and migrates it on the second:
/// a window must prove the GPU comes back before its pages move.
final class SecondFaultMigrates: GPUFaultPolicy, @unchecked Sendable {
    struct Key: Hashable { var space: ObjectIdentifier; var window: UInt64 }
    let windowPages: Int
    private let lock = NIOLock()
    private var faults: [Key: Int] = [:]          // guarded by lock
    private var resolved: (migrated: Int, mapped: Int) = (0, 0)   // guarded by lock

    init(windowPages: Int) { self.windowPages = windowPages }

    func resolve(_ fault: GPUFaultInfo) -> GPUFaultDecision {
        let key = Key(space: fault.addressSpace, window: fault.address / UInt64(windowPages * page))
        let n: Int = lock.withLock {
            faults[key, default: 0] += 1
            return faults[key]!
        }
        return n >= 2 ? .migrateToVRAM(pages: windowPages) : .mapSystemMemory(pages: windowPages)
    }

    func gpuFaultResolved(_ fault: GPUFaultInfo, decision: GPUFaultDecision, migrated: Int, mapped: Int) {
        lock.withLock {
            resolved.migrated += migrated
            resolved.mapped += mapped
        }
    }

    var totals: (migrated: Int, mapped: Int) { lock.withLock { resolved } }

    func addressSpaceUnbound(_ addressSpace: ObjectIdentifier) {
        lock.withLock { faults = faults.filter { $0.key.space != addressSpace } }
    }
}

/// Evicts in the order pages became resident; GPU accesses do not matter.
final class FIFOEviction: EvictionPolicy, @unchecked Sendable {
    private let lock = NIOLock()
    private var queue: [Int] = []                 // guarded by lock: resident pages, oldest first
    private var resident: Set<Int> = []           // guarded by lock
    private(set) var victimsAsked = 0             // guarded by lock
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func pageBecameResident(_ page: Int) {
        lock.withLock {
            if resident.insert(page).inserted { queue.append(page) }
        }
    }

    func pageAccessed(_ page: Int) {}

    func pageFreed(_ page: Int) {
        lock.withLock {
            if resident.remove(page) != nil { queue.removeAll { $0 == page } }
        }
    }

    func selectVictims(into out: UnsafeMutableBufferPointer<Int>) -> Int {
        lock.withLock {
            victimsAsked += 1
            let n = min(out.count, queue.count)
            for i in 0..<n { out[i] = queue[i] }
            return n
        }
    }

    var asked: Int { lock.withLock { victimsAsked } }
}

/// Names the top 8 indices, then indices past `capacity`: a policy that ignores
/// residency, as a first "random" policy might.
final class NamesFreePages: EvictionPolicy, @unchecked Sendable {
    let capacity: Int
    init(capacity: Int) { self.capacity = capacity }
    func pageBecameResident(_ page: Int) {}
    func pageAccessed(_ page: Int) {}
    func pageFreed(_ page: Int) {}
    func selectVictims(into out: UnsafeMutableBufferPointer<Int>) -> Int {
        for i in 0..<out.count { out[i] = i < 8 ? capacity - 1 - i : capacity + i }
        return out.count
    }
}

@Suite(.timeLimit(.minutes(1))) struct PublicAPITests {
    // MARK: 1. The flow of the guide

    @Test func migrateReadBackOnGPUAndCPUAndCountFaults() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20)
        var config = Device.Configuration(vramSize: 8 << 20)
        config.policy.batchPages = 64
        config.backend = .memcpy
        let gpu = try Device(memory: memory, configuration: config)
        let mm = AddressSpace(memory: memory)
        let n = 256
        let a = try mm.mmap(length: n * page)
        var pattern = [UInt8](repeating: 0, count: n * page)
        for p in 0..<n { for i in stride(from: 0, to: page, by: 512) { pattern[p * page + i] = UInt8(truncatingIfNeeded: p &* 7 &+ i) } }
        try mm.write(at: a, bytes: pattern)
        let view = try gpu.bind(mm)

        let r = try gpu.migrateToDevice(mm, range: a ..< a + UInt64(n * page))
        #expect(r.migrated == n)
        #expect(r.batches == 4)
        #expect(view.mappedPageCount == n)
        #expect(gpu.counters[.pagesToDevice] == n)
        #expect(mm.pageTableEntry(a).kind == .devicePrivate)

        // GPU reads hit VRAM: no GPU fault.
        #expect(try view.read(at: a + UInt64(5 * page), count: page) == Array(pattern[5 * page ..< 6 * page]))
        #expect(gpu.counters[.gpuFaults] == 0)

        // CPU reads fault one page each (nouveau's granularity).
        let back = try mm.read(at: a + UInt64(10 * page), count: 2 * page)
        #expect(back == Array(pattern[10 * page ..< 12 * page]))
        #expect(gpu.counters[.cpuFaults] == 2)
        #expect(gpu.counters[.pagesToRAM] == 2)
        #expect(mm.faultCounters[.devicePrivate] == 2)
        #expect(view.mappedPageCount == n - 2)

        try gpu.shutdown()
        #expect(try mm.read(at: a, count: n * page) == pattern)
        #expect(gpu.counters[.pagesEvicted] == n - 2)
    }

    // MARK: 2. A GPU-fault policy and an eviction policy of one's own

    @Test func customGPUFaultPolicyMapsFirstAndMigratesOnSecondFault() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20)
        let policy = SecondFaultMigrates(windowPages: 4)
        var config = Device.Configuration(vramSize: 8 << 20)
        config.backend = .memcpy
        config.policy.gpuFault = .custom(policy)
        let gpu = try Device(memory: memory, configuration: config)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * page)
        try mm.write(at: a, bytes: [UInt8](repeating: 3, count: 16 * page))
        let view = try gpu.bind(mm)

        // First fault on window 0: mapped, stays in RAM.
        #expect(try view.read(at: a, count: 4) == [3, 3, 3, 3])
        #expect(gpu.counters[.gpuFaults] == 1)
        #expect(gpu.counters[.pagesToDevice] == 0)
        #expect(mm.pageTableEntry(a).kind == .present)
        #expect(policy.totals.mapped == 4)

        // A CPU write replaces nothing (the page is writable), but munmap-free invalidation:
        // MADV_DONTNEED zaps the GPU entries, so the next GPU access faults again.
        try mm.madvise(a, length: 4 * page, advice: .dontNeed)
        try mm.write(at: a, bytes: [9])
        #expect(try view.read(at: a, count: 1) == [9])
        #expect(gpu.counters[.gpuFaults] == 2)
        #expect(gpu.counters[.pagesToDevice] == 4)
        #expect(policy.totals.migrated == 4)
        #expect(mm.pageTableEntry(a).kind == .devicePrivate)
        try gpu.shutdown()
    }

    @Test func customEvictionPolicyIsAskedUnderPressure() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20)
        var config = Device.Configuration(vramSize: 2 << 20)     // one chunk: 512 pages
        config.backend = .memcpy
        config.policy.batchPages = 128
        config.eviction = .custom { capacity in FIFOEviction(capacity: capacity) }
        let gpu = try Device(memory: memory, configuration: config)
        let fifo = try #require(gpu.eviction as? FIFOEviction)
        #expect(fifo.capacity == 512)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 512 * page)
        let b = try mm.mmap(length: 128 * page)
        try mm.write(at: a, bytes: [UInt8](repeating: 1, count: 512 * page))
        try mm.write(at: b, bytes: [UInt8](repeating: 2, count: 128 * page))
        _ = try gpu.bind(mm)
        #expect(try gpu.migrateToDevice(mm, range: a ..< a + UInt64(512 * page)).migrated == 512)
        #expect(try gpu.migrateToDevice(mm, range: b ..< b + UInt64(128 * page)).migrated == 128)
        #expect(fifo.asked >= 1)
        #expect(gpu.counters[.pressureEvictions] >= 1)
        #expect(gpu.counters[.pagesEvicted] == 128)
        // FIFO: the first 128 pages of a left VRAM, the rest stayed.
        #expect(mm.pageTableEntry(a).kind == .present)
        #expect(mm.pageTableEntry(a + UInt64(127 * page)).kind == .present)
        #expect(mm.pageTableEntry(a + UInt64(128 * page)).kind == .devicePrivate)
        #expect(try mm.read(at: a, count: 512 * page).allSatisfy { $0 == 1 })
        try gpu.shutdown()
    }

    /// A first try at a random policy that names pages it was never told are resident
    /// (free ones, and indices past `capacity`): the device evicts what it can and the
    /// migration is short. `withoutVRAM` and `pagesWithoutVRAM` say why the rest stayed.
    @Test func victimsThatFreeNothingLeavePagesWithoutVRAM() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20)
        var config = Device.Configuration(vramSize: 2 << 20)     // 512 pages
        config.backend = .memcpy
        config.policy.batchPages = 128
        config.eviction = .custom { capacity in NamesFreePages(capacity: capacity) }
        let gpu = try Device(memory: memory, configuration: config)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 512 * page)
        try mm.write(at: a, bytes: [UInt8](repeating: 1, count: 512 * page))
        #expect(try gpu.migrateToDevice(mm, range: a ..< a + UInt64(384 * page)).migrated == 384)
        let r = try gpu.migrateToDevice(mm, range: a + UInt64(384 * page) ..< a + UInt64(512 * page))
        #expect(r.collected == 128)
        #expect(r.migrated == 128)          // 128 free pages: no eviction needed
        #expect(r.withoutVRAM == 0)

        let b = try mm.mmap(length: 64 * page)
        try mm.write(at: b, bytes: [UInt8](repeating: 2, count: 64 * page))
        let rb = try gpu.migrateToDevice(mm, range: b ..< b + UInt64(64 * page))
        // The policy named only the 8 highest indices (all resident) and then free or bogus ones.
        #expect(rb.collected == 64)
        #expect(rb.migrated == 8)
        #expect(rb.withoutVRAM == 56)
        #expect(gpu.counters[.pagesWithoutVRAM] == 56)
        #expect(gpu.counters[.pagesEvicted] == 8)
        #expect(mm.pageTableEntry(b + UInt64(63 * page)).kind == .present)
        #expect(try mm.read(at: b, count: 64 * page).allSatisfy { $0 == 2 })
        try gpu.shutdown()
    }

    // MARK: 3. Pinning a race

    @Test func munmapWhileMigrationWaitsForItsFence() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20)
        let probe = StepProbe()
        var config = Device.Configuration(vramSize: 8 << 20)
        config.backend = .memcpy
        config.observer = probe
        let gpu = try Device(memory: memory, configuration: config)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * page)
        try mm.write(at: a, bytes: [UInt8](repeating: 7, count: 16 * page))
        _ = try gpu.bind(mm)
        try probe.arm(at: .init(.fenceWaitBegin, direction: .toDevice), hold: .milliseconds(50)) {
            try mm.munmap(a, length: 16 * page)
        }
        let r = try gpu.migrateToDevice(mm, range: a ..< a + UInt64(16 * page))
        #expect(probe.waitForAction())
        // munmap needs the mmap lock for write; the migration holds it for read until it ends.
        #expect(probe.outcome == .finishedAfterHold)
        #expect(probe.actionError == nil)
        #expect(r.migrated == 16)
        #expect(mm.findVMA(a) == nil)
        #expect(gpu.counters[.pagesFreed] == 16)

        // A racing operation that fails says so: its error is kept, not lost on its thread.
        let b = try mm.mmap(length: 4 * page)
        try mm.write(at: b, bytes: [1])
        try probe.arm(at: .init(.setupEnd, direction: .toDevice)) {
            try mm.munmap(b + 1, length: page)             // unaligned: EINVAL
        }
        try gpu.migrateToDevice(mm, range: b ..< b + UInt64(4 * page))
        #expect(probe.waitForAction())
        let error = try #require(probe.actionError as? HostMMError)
        guard case .invalidArgument = error else { Issue.record("\(error)"); return }
        #expect(mm.findVMA(b) != nil)
        try gpu.shutdown()
    }
    /// `firedAt` names the batch the driver is held in, by address, at every step of it:
    /// arming the second batch's fence wait holds the range after the first batch.
    @Test func firedAtNamesTheHeldBatchsAddress() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20)
        let probe = StepProbe()
        var config = Device.Configuration(vramSize: 8 << 20)
        config.backend = .memcpy
        config.policy.batchPages = 8
        config.observer = probe
        let gpu = try Device(memory: memory, configuration: config)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * page)
        try mm.write(at: a, bytes: [UInt8](repeating: 7, count: 16 * page))
        for kind in [MigrationEvent.Kind.setupEnd, .fenceWaitBegin, .fenceSignaled, .fenceWaitEnd, .finalizeBegin] {
            try probe.arm(at: .init(kind, direction: .toDevice, occurrence: 2), hold: .zero) {}
            try gpu.migrateToDevice(mm, range: a ..< a + UInt64(16 * page))
            #expect(probe.waitForAction())
            #expect(probe.firedAt?.batch != nil)
            #expect(probe.firedAt?.address == a + UInt64(8 * page), "\(kind)")
            try gpu.migrateRangeToRAM(mm, range: a ..< a + UInt64(16 * page))
        }
        // The CPU fault's batch too.
        try gpu.migrateToDevice(mm, range: a ..< a + UInt64(16 * page))
        try probe.arm(at: .init(.fenceWaitBegin, direction: .toRAM), hold: .zero) {}
        #expect(try mm.read(at: a + UInt64(5 * page), count: 1) == [7])
        #expect(probe.waitForAction())
        #expect(probe.firedAt?.address == a + UInt64(5 * page))
        let held = try #require(probe.firedAt)
        #expect("\(held)" == "fenceWaitBegin toRAM batch \(held.batch) seqno \(held.seqno) channel \(held.channel) "
                + "address 0x\(String(a + UInt64(5 * page), radix: 16))")
        try gpu.shutdown()
    }

    /// MADV_DONTNEED takes the mmap lock for read, as the migration does: it runs while the
    /// batch waits for its fence, zaps the migration entries, and finalize then frees the
    /// new VRAM pages instead of mapping them (and the GPU must not map them either).
    @Test func dontNeedWhileMigrationWaitsForItsFence() throws {
        let memory = try PhysicalMemory(ramBytes: 64 << 20, checked: .on)
        let probe = StepProbe()
        var config = Device.Configuration(vramSize: 8 << 20)
        config.backend = .memcpy
        config.observer = probe
        let gpu = try Device(memory: memory, configuration: config)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * page)
        try mm.write(at: a, bytes: [UInt8](repeating: 7, count: 16 * page))
        let view = try gpu.bind(mm)
        try probe.arm(at: .init(.fenceWaitBegin, direction: .toDevice), hold: .seconds(5)) {
            try mm.madvise(a, length: 4 * page, advice: .dontNeed)
        }
        let r = try gpu.migrateToDevice(mm, range: a ..< a + UInt64(16 * page))
        #expect(probe.waitForAction())
        #expect(probe.outcome == .finishedWhileHeld)
        #expect(probe.actionError == nil)
        // The driver learns nothing of the zap: 16 pages "migrated"; 4 were freed at finalize.
        #expect(r.migrated == 16)
        #expect(view.mappedPageCount == 12)
        #expect("\(gpu.counters)" == "pagesToDevice 16, batchesToDevice 1, deviceMappings 12, "
                + "invalidations 1, ownInvalidationsSkipped 1, pagesFreed 4")
        #expect(mm.pageTableEntry(a).kind == .none)
        #expect(mm.pageTableEntry(a + UInt64(4 * page)).kind == .devicePrivate)
        #expect(try view.read(at: a, count: 4) == [0, 0, 0, 0])          // a fresh hole now
        #expect(try mm.read(at: a + UInt64(4 * page), count: 12 * page).allSatisfy { $0 == 7 })
        #expect(gpu.checkInvariants() == [])
        #expect(memory.checker?.violations == [])
        try gpu.shutdown()
    }
}

// MARK: - 4. The copy engine on its own

// DMAEngineTests.DocSnippetTests runs copy-engine.md's snippets (a failed descriptor);
// this one checks the rest of a failure path: a short copy's prefix, the tickets, and a
// channel that goes on after a failed batch.
@Suite(.timeLimit(.minutes(1))) struct PublicCopyEngineTests {
    @Test func shortCopyLeavesItsPrefixAndTheChannelGoesOn() throws {
        let host = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 * page, alignment: page)
        defer { host.deallocate() }
        for i in 0..<(8 * page) { host[i] = UInt8(truncatingIfNeeded: i / page &+ 1) }

        let plan = FaultPlan(rules: [.init(.nth(1), .shortCopy(bytes: 100))])
        let engine = try DMAEngine(configuration: .init(backend: .faultInjecting(plan, wrapping: .memcpy)))
        defer { engine.shutdown() }
        let ram = try engine.registerHostMemory(host, name: "ram")
        let vram = try engine.createVRAMPool(size: 8 * page)
        let channel = try engine.makeChannel(name: "ce0")

        var tickets: [DMATicket] = []
        for v in 0..<3 {
            tickets.append(try channel.enqueueCopy(from: DMAAddress(region: ram, offset: v * page),
                                                   to: vram.address(v * page), length: page))
        }
        let fence = try channel.submit()
        #expect(fence.tickets.lowerBound == tickets[0])
        #expect(tickets.allSatisfy { fence.tickets.contains($0) })
        #expect(throws: DMAError.self) { try fence.wait(timeout: .seconds(10)) }
        #expect(fence.failures == [DescriptorFailure(ticket: tickets[1], index: 1, errno: .ioError, bytesCompleted: 100)])
        #expect(try channel.status(of: fence.tickets) == [.succeeded, .failed(.ioError, bytesCompleted: 100), .succeeded])
        #expect(channel.lastCompletedTicket == tickets[2])
        #expect((0..<100).allSatisfy { vram.mapping[page + $0] == 2 })
        #expect((100..<page).allSatisfy { vram.mapping[page + $0] == 0 })
        #expect(vram.mapping[0] == 1 && vram.mapping[3 * page - 1] == 3)

        // The next batch on the channel (descriptors 3 and 4) meets no rule and lands.
        let redo = try channel.enqueueCopy(from: DMAAddress(region: ram, offset: page), to: vram.address(page), length: page)
        try channel.enqueueFill(vram.address(4 * page), length: page, value: 0x5A)
        let second = try channel.submit()
        try second.wait(timeout: .seconds(10))
        #expect(second.seqno == fence.seqno + 1)
        #expect(try channel.status(of: redo) == .succeeded)
        #expect((0..<page).allSatisfy { vram.mapping[page + $0] == 2 && vram.mapping[4 * page + $0] == 0x5A })
    }

    /// A wait that expires says the copies go on and what to do, not just "timed out".
    @Test func aTimedOutWaitSaysTheCopiesGoOn() throws {
        let plan = FaultPlan(rules: [.init(.nth(0), .delay(.milliseconds(300)))])
        let engine = try DMAEngine(configuration: .init(backend: .faultInjecting(plan, wrapping: .memcpy)))
        defer { engine.shutdown() }
        let vram = try engine.createVRAMPool(size: page)
        let channel = try engine.makeChannel(name: "ce0")
        try channel.enqueueFill(vram.address(0), length: page, value: 9)
        let fence = try channel.submit()
        var message = ""
        do { try fence.wait(timeout: .milliseconds(1)) } catch { message = "\(error)"; #expect(error == .timedOut) }
        #expect(message.contains("still in flight") && message.contains("cancelInFlight"))
        try fence.wait(timeout: .seconds(10))               // the copy went on
        #expect(vram.mapping[0] == 9)
    }
}
