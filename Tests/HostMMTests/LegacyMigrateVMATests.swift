import Foundation
import Testing
@testable import HostMM

/// The 2017 callback driver: allocAndCopy does what TestDevice.copyToDevice does.
final class LegacyOps: MigrateVMAOps {
    let device: TestDevice
    var finalizeSawMigrated = 0
    var calls: [String] = []
    init(_ device: TestDevice) { self.device = device }

    func allocAndCopy(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeMutableBufferPointer<MigratePFN>,
                      start: UInt64, end: UInt64) {
        calls.append("allocAndCopy")
        device.copyToDevice(UnsafeMutableBufferPointer(mutating: src), dst, src.count)
        for i in 0..<dst.count where dst[i].contains(.valid) { dst[i].insert(.locked) }
    }

    func finalizeAndMap(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeBufferPointer<MigratePFN>,
                        start: UInt64, end: UInt64) {
        calls.append("finalizeAndMap")
        finalizeSawMigrated = src.filter { $0.contains(.migrate) }.count
    }
}

@Suite struct LegacyMigrateVMATests {
    /// Builds the same mixed range (written pages, zero pages, holes, one pinned page).
    func makeRange(_ memory: PhysicalMemory) throws -> (AddressSpace, UInt64, [PFN]) {
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 16 * pageSize)
        try mm.write(at: a, bytes: pattern(21, count: 8 * pageSize))
        _ = try mm.read(at: a + UInt64(8 * pageSize), count: 4 * pageSize)
        let pins = try mm.pinUserPages(a + UInt64(3 * pageSize), count: 1, write: true)
        return (mm, a, pins)
    }

    @Test func callbackAPIGivesTheSameResultAsTheThreeStepAPI() throws {
        let memory = try makeMemory()
        let legacyDevice = try TestDevice(memory: memory, pageCount: 32)
        let modernDevice = try TestDevice(memory: memory, pageCount: 32)
        let (mmL, aL, pinsL) = try makeRange(memory)
        let (mmM, aM, pinsM) = try makeRange(memory)
        let ops = LegacyOps(legacyDevice)
        let legacySrc: [MigratePFN] = try mmL.mmapLock.withReadLock {
            try withBuffers(16) { src, dst in
                try migrateVMA(ops: ops, vma: mmL.findVMA(aL), start: aL, end: aL + UInt64(16 * pageSize), src: src, dst: dst)
                return Array(src)
            }
        }
        #expect(ops.calls == ["allocAndCopy", "finalizeAndMap"])
        let modernSrc: [MigratePFN] = try mmM.mmapLock.withReadLock {
            try withBuffers(16) { src, dst in
                var args = MigrateVMA(vma: mmM.findVMA(aM), start: aM, end: aM + UInt64(16 * pageSize),
                                      src: src, dst: dst, flags: .selectSystem)
                try migrateVMASetup(&args)
                modernDevice.copyToDevice(src, dst, 16)
                try migrateVMAPages(&args)
                migrateVMAFinalize(&args)
                return Array(src)
            }
        }
        #expect(legacySrc.map { $0.subtracting(MigratePFN(rawValue: ~0 << MigratePFN.shift)) }
                == modernSrc.map { $0.subtracting(MigratePFN(rawValue: ~0 << MigratePFN.shift)) })
        #expect(ops.finalizeSawMigrated == 15)
        for i in 0..<16 {
            #expect(mmL.pageTableEntry(aL + UInt64(i * pageSize)).kind == mmM.pageTableEntry(aM + UInt64(i * pageSize)).kind)
        }
        #expect(try mmL.read(at: aL, count: 16 * pageSize) == mmM.read(at: aM, count: 16 * pageSize))
        memory.unpinUserPages(pinsL)
        memory.unpinUserPages(pinsM)
    }

    @Test func callbackAPIRejectsMissingOpsAndBadRanges() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 4)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize)
        let ops = LegacyOps(device)
        mm.mmapLock.withReadLock {
            withBuffers(2) { src, dst in
                let vma = mm.findVMA(a)
                #expect(throws: HostMMError.invalidArgument) {
                    try migrateVMA(ops: nil, vma: vma, start: a, end: a + UInt64(pageSize), src: src, dst: dst)
                }
                #expect(throws: HostMMError.invalidArgument) {
                    try migrateVMA(ops: ops, vma: vma, start: a + UInt64(pageSize), end: a + UInt64(pageSize) + 10, src: src, dst: dst)
                }
                #expect(throws: HostMMError.invalidArgument) {
                    try migrateVMA(ops: ops, vma: vma, start: a, end: a + UInt64(3 * pageSize), src: src, dst: dst)
                }
                #expect(throws: HostMMError.invalidArgument) {
                    try migrateVMA(ops: ops, vma: nil, start: a, end: a + UInt64(pageSize), src: src, dst: dst)
                }
            }
        }
        #expect(ops.calls.isEmpty)
    }

    @Test func callbackAPISkipsCallbacksWhenNothingIsCollected() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 4)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.touch(a, length: pageSize, write: true)
        let pins = try mm.pinUserPages(a, count: 1, write: true)
        let ops = LegacyOps(device)
        try mm.mmapLock.withReadLock {
            try withBuffers(1) { src, dst in
                try migrateVMA(ops: ops, vma: mm.findVMA(a), start: a, end: a + UInt64(pageSize), src: src, dst: dst)
            }
        }
        #expect(ops.calls.isEmpty)
        memory.unpinUserPages(pins)
    }
}

/// A 2017 driver's fault handler (`dev_pagemap.page_fault`): `migrate_vma` of the faulting
/// page with an `alloc_and_copy` that brings it to a new RAM page.
final class LegacyToRAMOps: MigrateVMAOps {
    let device: TestDevice
    init(_ device: TestDevice) { self.device = device }

    func allocAndCopy(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeMutableBufferPointer<MigratePFN>,
                      start: UInt64, end: UInt64) {
        for i in 0..<src.count where src[i].contains(.migrate) {
            guard let page = src[i].page, let ram = device.memory.allocPage() else { continue }
            device.memory.lockPage(ram)
            memcpy(device.memory.bytes(ram)!, device.bytes(page), pageSize)
            dst[i] = MigratePFN(pfn: ram).union(.locked)
        }
    }

    func finalizeAndMap(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeBufferPointer<MigratePFN>,
                        start: UInt64, end: UInt64) {}
}

@Suite struct LegacyFaultHandlerTests {
    /// The callback API from `migrateToRAM`: with the device's `pgmapOwner` the faulting page
    /// comes back (the model passes the fault's page for the caller, as that API has no
    /// `faultPage`); without it the page could never be collected, and the call says so.
    @Test(arguments: [true, false])
    func aFaultHandlerBringsTheFaultingPageBackThroughTheCallbackAPI(withOwner: Bool) throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 8)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let data = pattern(5, count: 4 * pageSize)
        try mm.write(at: a, bytes: data)
        #expect(try device.migrateToDevice(mm, a, a + UInt64(4 * pageSize)) == 4)
        let ops = LegacyToRAMOps(device)
        nonisolated(unsafe) var thrown: HostMMError?
        device.migrateToRAMOverride = { fault in
            withBuffers(1) { src, dst in
                do throws(HostMMError) {
                    try migrateVMA(ops: ops, vma: fault.vma, start: fault.address, end: fault.address + UInt64(pageSize),
                                   src: src, dst: dst, pgmapOwner: withOwner ? device.owner : nil)
                } catch {
                    thrown = error
                    return .sigbus
                }
                return .done
            }
        }
        let target = a + UInt64(pageSize)
        if withOwner {
            #expect(try mm.read(at: target, count: pageSize) == Array(data[pageSize..<2 * pageSize]))
            #expect(thrown == nil)
            #expect(mm.pageTableEntry(target).kind == .present)
            #expect(mm.pageTableEntry(a).kind == .devicePrivate)
            #expect(device.freed.load(ordering: .relaxed) == 1)
        } else {
            #expect(throws: HostMMError.busError(address: target)) { try mm.read(at: target, count: 1) }
            #expect(thrown == .invalidArgument(reason: "migrateVMA(ops:) inside migrateToRAM for "
                                               + "\(mm.pageTableEntry(target).pfn) at \(target.hex) without pgmapOwner: "
                                               + "the faulting page would not be collected and the access would fault again for ever"))
            #expect(mm.pageTableEntry(target).kind == .devicePrivate)
        }
        #expect(device.cpuFaults.load(ordering: .relaxed) == 1)
        device.migrateToRAMOverride = nil
        #expect(try mm.read(at: a, count: 4 * pageSize) == data)
    }
}
