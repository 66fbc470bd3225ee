import DMAEngine
import DeviceEmu
import HostMM
import Testing

/// A driver author's experiment: the guide's toy driver (section 11) with the pieces it
/// leaves out — `DeviceMemory` VRAM, engine copies, a fence before finalize, a checked-mode
/// oracle — then the classic nouveau mistake (finalize before the fence) to see whether
/// checked mode catches it.
@Suite(.timeLimit(.minutes(1))) struct FencedToyDriverTests {
    /// 48 written pages then 16 never-touched ones (holes), through the engine and back:
    /// every byte survives, holes come back zero, and checked mode has nothing to say.
    @Test func aRoundTripThroughTheEngineKeepsEveryByte() throws {
        let memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        let gpu = try FencedToyGPU(memory: memory, vramBytes: 2 << 20, backend: .ioUring)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 64 * pageSize)
        let pattern = PagePattern(seed: 42)
        try pattern.fill(mm, a, pages: 48)

        #expect(try gpu.migrateToDevice(mm, a, a + UInt64(64 * pageSize)) == 64)
        #expect(entryKinds(mm, a, pages: 64) == [.devicePrivate: 64])
        #expect(gpu.vram.inUsePageCount == 64)
        // The bytes landed in VRAM before finalize made them reachable.
        let vram5 = try #require(gpu.vram.bytes(of: mm.pageTableEntry(a + UInt64(5 * pageSize)).pfn))
        #expect(pattern.matches(5, vram5))

        // CPU faults bring two pages back through the engine.
        #expect(try mm.read(at: a + UInt64(5 * pageSize), count: pageSize) == pattern.page(5))
        #expect(try mm.read(at: a + UInt64(50 * pageSize), count: pageSize) == [UInt8](repeating: 0, count: pageSize))
        #expect(mm.faultCounters[.devicePrivate] == 2)
        #expect(gpu.vram.inUsePageCount == 62, "a fault's finalize frees the device page")

        try gpu.shutdown()                                     // evicts the other 62
        #expect(entryKinds(mm, a, pages: 64) == [.present: 64])
        #expect(try pattern.cpuMismatches(mm, a, pages: 48).isEmpty)
        #expect(try mm.read(at: a + UInt64(63 * pageSize), count: 8) == [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(memory.checker?.violations == [])
    }

    /// A 50 ms link keeps each fence unsignalled long enough to be sure: finalizing under
    /// the copies is reported for each page's source and destination, with the driver's call site; the same driver
    /// waiting first is not reported — and on this slow link still moves every byte.
    @Test(arguments: [false, true])
    func finalizeBeforeTheFenceIsCaughtByCheckedMode(buggy: Bool) throws {
        let memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        let slow = LinkModel(gigabytesPerSecond: 26, latency: .milliseconds(50))
        let gpu = try FencedToyGPU(memory: memory, vramBytes: 2 << 20,
                                   backend: .linkModel(slow, wrapping: .memcpy), finalizeBeforeFence: buggy)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 8 * pageSize)
        let pattern = PagePattern(seed: 7)
        try pattern.fill(mm, a, pages: 8)

        #expect(try gpu.migrateToDevice(mm, a, a + UInt64(8 * pageSize)) == 8)
        let checker = try #require(memory.checker)
        let reported = checker.violations.filter { $0.rule == .finalizeWithCopyInFlight }
        // One report per page and direction: the VRAM page the copy writes, the RAM page it reads.
        let pfns = reported.compactMap(\.pfn)
        #expect(pfns.count == reported.count)
        #expect(pfns.filter { gpu.vram.contains($0) }.count == (buggy ? 8 : 0))
        #expect(pfns.filter { !gpu.vram.contains($0) }.count == (buggy ? 8 : 0))
        #expect(Set(reported.compactMap(\.address)) == (buggy ? Set((0..<8).map { a + UInt64($0 * pageSize) }) : []))
        #expect(reported.allSatisfy { $0.site.contains("FencedToyGPU.swift") })
        #expect(checker.violations.count == reported.count, "\(checker.countsByRule)")
        if !buggy {
            #expect(try pattern.cpuMismatches(mm, a, pages: 8).isEmpty)
        }
        try gpu.shutdown()
    }
}

/// The kernel's own paths meeting the toy's device pages: zaps free them through
/// `page_free`, fork shares them, and a fault in the child moves the page for both.
@Suite(.timeLimit(.minutes(1))) struct FencedToyDriverMMTests {
    @Test func dontneedAndMunmapHandDevicePagesBack() throws {
        let memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        let gpu = try FencedToyGPU(memory: memory, vramBytes: 2 << 20, backend: .memcpy)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * pageSize)
        try PagePattern(seed: 3).fill(mm, a, pages: 16)
        #expect(try gpu.migrateToDevice(mm, a, a + UInt64(16 * pageSize)) == 16)

        try mm.madvise(a, length: 4 * pageSize, advice: .dontNeed)
        #expect(gpu.vram.inUsePageCount == 12)
        #expect(entryKinds(mm, a, pages: 4) == [.none: 4])
        #expect(try mm.read(at: a + UInt64(pageSize), count: 16) == [UInt8](repeating: 0, count: 16))
        #expect(mm.faultCounters[.devicePrivate] == 0, "a zapped page faults in as a fresh zero page")

        try mm.munmap(a + UInt64(8 * pageSize), length: 8 * pageSize)
        #expect(gpu.vram.inUsePageCount == 4)
        try gpu.shutdown()
        #expect(memory.checker?.violations == [])
    }

    @Test func aChildsFaultMovesTheSharedPageForBothProcesses() throws {
        let memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        let gpu = try FencedToyGPU(memory: memory, vramBytes: 2 << 20, backend: .memcpy)
        let parent = AddressSpace(memory: memory)
        let a = try parent.mmap(length: 4 * pageSize)
        let pattern = PagePattern(seed: 9)
        try pattern.fill(parent, a, pages: 4)
        #expect(try gpu.migrateToDevice(parent, a, a + UInt64(4 * pageSize)) == 4)

        let child = try parent.fork()
        #expect(entryKinds(child, a, pages: 4) == [.devicePrivate: 4])
        #expect(child.pageTableEntry(a).pfn == parent.pageTableEntry(a).pfn)
        #expect(!parent.pageTableEntry(a).isWritable && !child.pageTableEntry(a).isWritable,
                "a private device page shared by fork is write-protected in both (COW)")

        #expect(try child.read(at: a, count: pageSize) == pattern.page(0))
        #expect(child.pageTableEntry(a).kind == .present)
        #expect(parent.pageTableEntry(a).kind == .present, "rmap moved the parent's mapping too")
        #expect(parent.pageTableEntry(a).pfn == child.pageTableEntry(a).pfn)

        try child.write(at: a, bytes: [0xEE])                  // COW: the parent keeps its bytes
        #expect(try parent.read(at: a, count: pageSize) == pattern.page(0))
        #expect(try child.read(at: a, count: 1) == [0xEE])
        child.exit()
        try gpu.shutdown()
        #expect(try pattern.cpuMismatches(parent, a, pages: 4).isEmpty)
        #expect(memory.checker?.violations == [])
    }

    @Test func mremapCarriesDevicePagesAndTheFaultFindsThemAtTheNewAddress() throws {
        let memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        let gpu = try FencedToyGPU(memory: memory, vramBytes: 2 << 20, backend: .memcpy)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 8 * pageSize)
        let pattern = PagePattern(seed: 5)
        try pattern.fill(mm, a, pages: 8)
        #expect(try gpu.migrateToDevice(mm, a, a + UInt64(8 * pageSize)) == 8)
        let neighbour = try mm.mmap(length: pageSize)         // so the range cannot grow in place
        #expect(neighbour == a + UInt64(8 * pageSize))

        let b = try mm.mremap(a, oldLength: 8 * pageSize, newLength: 64 * pageSize, flags: .mayMove)
        #expect(b != a)
        #expect(entryKinds(mm, b, pages: 8) == [.devicePrivate: 8])
        #expect(gpu.vram.inUsePageCount == 8, "moved, not copied or faulted")
        #expect(try mm.read(at: b + UInt64(6 * pageSize), count: pageSize) == pattern.page(6))
        #expect(mm.faultCounters[.devicePrivate] == 1)
        #expect(throws: HostMMError.segmentationFault(address: a, reason: .notMapped)) { try mm.read(at: a, count: 1) }
        try gpu.shutdown()
        #expect(try pattern.cpuMismatches(mm, b, pages: 8).isEmpty)
        #expect(memory.checker?.violations == [])
    }

    /// mprotect write-protects device-private entries (`change_pte_range`): a write is
    /// refused while the VMA is read-only, and after `PROT_WRITE` comes back it faults the
    /// page home, then takes the write-protect fault and writes.
    @Test func mprotectWriteProtectsDevicePrivateEntries() throws {
        let memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        let gpu = try FencedToyGPU(memory: memory, vramBytes: 2 << 20, backend: .memcpy)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let pattern = PagePattern(seed: 6)
        try pattern.fill(mm, a, pages: 4)
        #expect(try gpu.migrateToDevice(mm, a, a + UInt64(4 * pageSize)) == 4)
        #expect(mm.pageTableEntry(a).isWritable)

        try mm.mprotect(a, length: 4 * pageSize, protection: .read)
        #expect(entryKinds(mm, a, pages: 4) == [.devicePrivate: 4])
        #expect(!mm.pageTableEntry(a).isWritable)
        #expect(throws: HostMMError.segmentationFault(address: a, reason: .accessDenied)) {
            try mm.write(at: a, bytes: [1])
        }
        #expect(try mm.read(at: a + UInt64(pageSize), count: pageSize) == pattern.page(1))
        #expect(mm.pageTableEntry(a + UInt64(pageSize)).kind == .present)
        #expect(!mm.pageTableEntry(a + UInt64(pageSize)).isWritable)

        try mm.mprotect(a, length: 4 * pageSize, protection: .readWrite)
        try mm.write(at: a + UInt64(2 * pageSize), bytes: [0x5A])
        #expect(mm.pageTableEntry(a + UInt64(2 * pageSize)).kind == .present)
        #expect(mm.pageTableEntry(a + UInt64(2 * pageSize)).isWritable)
        var expected = pattern.page(2)
        expected[0] = 0x5A
        #expect(try mm.read(at: a + UInt64(2 * pageSize), count: pageSize) == expected)
        try gpu.shutdown()
        #expect(memory.checker?.violations == [])
    }

    /// GUP on a device-private page brings it home through the toy's `migrateToRAM`; a
    /// pinned page then stays out of every migration until it is unpinned.
    @Test func aPinnedPageComesHomeAndStaysThereUntilUnpinned() throws {
        let memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        let gpu = try FencedToyGPU(memory: memory, vramBytes: 2 << 20, backend: .memcpy)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 8 * pageSize)
        let pattern = PagePattern(seed: 8)
        try pattern.fill(mm, a, pages: 8)
        let end = a + UInt64(8 * pageSize), page3 = a + UInt64(3 * pageSize)
        #expect(try gpu.migrateToDevice(mm, a, end) == 8)

        let pinned = try mm.pinUserPages(page3, count: 1, write: true)
        #expect(mm.faultCounters[.devicePrivate] == 1)
        #expect(mm.pageTableEntry(page3).kind == .present && mm.pageTableEntry(page3).pfn == pinned[0])
        #expect(pattern.matches(3, try #require(memory.bytes(pinned[0]))))
        #expect(gpu.vram.inUsePageCount == 7)

        #expect(try gpu.migrateToDevice(mm, a, end) == 0, "the only system page left is pinned")
        #expect(mm.pageTableEntry(page3).pfn == pinned[0])
        memory.unpinUserPages(pinned)
        #expect(try gpu.migrateToDevice(mm, a, end) == 1)
        #expect(entryKinds(mm, a, pages: 8) == [.devicePrivate: 8])
        try gpu.shutdown()
        #expect(try pattern.cpuMismatches(mm, a, pages: 8).isEmpty)
        #expect(memory.checker?.violations == [])
    }

    /// Eviction by PFN (`migrate_device_range`) reaches a page that fork shared through
    /// rmap: both processes end up on the same RAM page, still copy-on-write.
    @Test func evictionMovesAForkSharedPageForBothProcesses() throws {
        let memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        let gpu = try FencedToyGPU(memory: memory, vramBytes: 2 << 20, backend: .memcpy)
        let parent = AddressSpace(memory: memory)
        let a = try parent.mmap(length: 4 * pageSize)
        let pattern = PagePattern(seed: 10)
        try pattern.fill(parent, a, pages: 4)
        #expect(try gpu.migrateToDevice(parent, a, a + UInt64(4 * pageSize)) == 4)
        let child = try parent.fork()

        try gpu.shutdown()
        #expect(entryKinds(parent, a, pages: 4) == [.present: 4])
        #expect(entryKinds(child, a, pages: 4) == [.present: 4])
        for k in 0..<4 {
            let va = a + UInt64(k * pageSize)
            #expect(parent.pageTableEntry(va).pfn == child.pageTableEntry(va).pfn)
            #expect(!parent.pageTableEntry(va).isWritable && !child.pageTableEntry(va).isWritable)
        }
        #expect(parent.faultCounters[.devicePrivate] == 0 && child.faultCounters[.devicePrivate] == 0)
        try parent.write(at: a, bytes: [0x11])
        #expect(try child.read(at: a, count: pageSize) == pattern.page(0))
        #expect(try pattern.cpuMismatches(child, a, pages: 4).isEmpty)
        #expect(try parent.read(at: a, count: 1) == [0x11])
        child.exit()
        #expect(memory.checker?.violations == [])
    }

    /// A device page the driver allocated and lost: eviction cannot take it (it is still
    /// locked), `retire` refuses with `.busy` and checked mode names it; handed back with
    /// unlock + put (`page_free` → `freePage`), teardown completes.
    @Test func aLostDevicePageIsReportedAtTeardown() throws {
        let memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        let gpu = try FencedToyGPU(memory: memory, vramBytes: 2 << 20, backend: .memcpy)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        #expect(try gpu.migrateToDevice(mm, a, a + UInt64(4 * pageSize)) == 4)
        let lost = try #require(gpu.vram.allocPage())

        #expect(throws: DeviceError.busy) { try gpu.shutdown() }
        let leaks = memory.checker?.violations.filter { $0.rule == .devicePageLeaked } ?? []
        #expect(leaks.map(\.pfn) == [lost])
        #expect(entryKinds(mm, a, pages: 4) == [.present: 4], "the other pages were evicted")

        memory.unlockPage(lost)
        memory.putPage(lost)
        #expect(gpu.vram.inUsePageCount == 0)
        try gpu.shutdown()
        #expect(gpu.vram.chunks.isEmpty)
    }

    /// Guide section 13: a driver of its own reports `MigrationEvent`s and a `StepProbe`
    /// holds it. A CPU write while the toy waits for its fence sleeps on the page lock until
    /// finalize, then faults the page home and lands; the same write before setup lands
    /// first and migrates with the page.
    @Test(arguments: [MigrationEvent.Kind.fenceWaitBegin, .setupBegin])
    func aCPUWriteHeldAgainstTheToysSteps(step: MigrationEvent.Kind) throws {
        let memory = try PhysicalMemory(ramBytes: 32 << 20, maxDevicePages: 1 << 14, checked: .on)
        let probe = StepProbe()
        let slow = LinkModel(gigabytesPerSecond: 26, latency: .milliseconds(20))
        let gpu = try FencedToyGPU(memory: memory, vramBytes: 2 << 20, backend: .linkModel(slow, wrapping: .memcpy),
                                   observer: probe)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 8 * pageSize)
        let pattern = PagePattern(seed: 12)
        try pattern.fill(mm, a, pages: 8)
        let target = a + UInt64(2 * pageSize)
        // Blocked: 50 ms is enough to see it blocked. Not blocked: a long hold, so that a
        // loaded machine cannot turn "finished while held" into "after".
        let hold: Duration = step == .fenceWaitBegin ? .milliseconds(50) : .seconds(20)
        try probe.arm(at: .init(step, direction: .toDevice), hold: hold) {
            try? mm.write(at: target, bytes: [0xC3, 0x3C])
        }
        #expect(try gpu.migrateToDevice(mm, a, a + UInt64(8 * pageSize)) == 8)
        #expect(probe.waitForAction())
        var expected = pattern.page(2)
        expected.replaceSubrange(0..<2, with: [0xC3, 0x3C])
        if step == .fenceWaitBegin {
            #expect(probe.outcome == .finishedAfterHold, "the page is locked behind its migration entry")
            // Then the write faulted it home: at least once, since a fault that meets the
            // page still locked by finalize finds nothing to collect and is retried (guide §5).
            #expect(mm.faultCounters[.devicePrivate] >= 1)
            #expect(mm.pageTableEntry(target).kind == .present)
        } else {
            #expect(probe.outcome == .finishedWhileHeld, "nothing is locked before setup")
            #expect(mm.faultCounters[.devicePrivate] == 0)
            #expect(mm.pageTableEntry(target).kind == .devicePrivate)
            #expect(try #require(gpu.vram.bytes(of: mm.pageTableEntry(target).pfn)).load(as: UInt16.self) == 0x3CC3)
        }
        #expect(try mm.read(at: target, count: pageSize) == expected)
        try gpu.shutdown()
        #expect(memory.checker?.violations == [])
    }
}
