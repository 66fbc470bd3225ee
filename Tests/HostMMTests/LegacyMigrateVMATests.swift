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
