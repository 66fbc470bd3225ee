import Testing
@testable import HostMM

/// Regressions the bad-input fuzzer (`BadInputFuzzTests`) found: each call here trapped
/// before its fix; now it throws a typed error or is ignored and counted.
@Suite struct BadInputRegressionTests {
    /// PFN `==` came from `Strideable` (`distance(to:) == 0`), whose `Int(rawValue)`
    /// trapped for raw values ≥ 2^63, and the per-page bounds checks converted to `Int`
    /// the same way: a bad PFN crashed the calls documented to ignore and count it.
    @Test func pfnsPast2To63CompareAndAreIgnoredWithoutTrapping() throws {
        let memory = try PhysicalMemory(ramBytes: 1 << 20, maxDevicePages: 16, checked: .off)
        let huge = PFN(rawValue: UInt64.max), big = PFN(rawValue: 1 << 63)
        #expect(huge != big && huge == PFN(rawValue: UInt64.max) && big < huge)
        #expect(huge - big == Int(truncatingIfNeeded: UInt64.max &- (1 << 63)))
        #expect(PFN(5).advanced(by: -2) == PFN(3) && PFN(5) + (-5) == PFN(0))
        memory.putPage(huge)
        memory.getPage(huge)
        memory.unlockPage(big)
        #expect(!memory.trylockPage(huge) && !memory.isValid(huge) && memory.refcount(huge) == 0)
        #expect(memory.zone(huge) == .normal && memory.pagemap(of: huge) == nil && memory.bytes(huge) == nil)
        #expect(throws: HostMMError.invalidArgument) { try memory.zoneDevicePageInit(huge) }
        #expect(memory.diagnostics.invalidPFNCount >= 4)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.special(.mixedMap), length: pageSize)
        #expect(throws: HostMMError.invalidArgument) { try mm.insertPage(a, page: huge) }
    }

    /// `PhysicalMemory.init` added the device-page count to the RAM page count unchecked:
    /// `maxDevicePages: Int.max` trapped instead of throwing EINVAL.
    @Test func constructorsRefuseBadSizesWithoutTrapping() {
        for (ram, dev) in [(0, 0), (-4096, 16), (4095, 16), (1 << 20, -1), (Int.max, 16), (1 << 20, Int.max), (8192, 0)] {
            do {
                let m = try PhysicalMemory(ramBytes: ram, maxDevicePages: dev, checked: .off)
                #expect(m.ramPageCount * pageSize == ram)
            } catch {
                #expect(error == .invalidArgument || error == .outOfMemory)
            }
        }
    }
    /// `PageCacheFile.write/read` computed `offset + count` unchecked: an offset near
    /// `Int.max` trapped on overflow instead of throwing EINVAL; a huge page count made
    /// `pageCount * pageSize` overflow the same way.
    @Test func pageCacheFileRangesPastIntMaxThrowInsteadOfTrapping() throws {
        let memory = try PhysicalMemory(ramBytes: 1 << 20, maxDevicePages: 0, checked: .off)
        let file = PageCacheFile(memory: memory, pageCount: 2)
        #expect(throws: HostMMError.invalidArgument) { try file.write(offset: Int.max, [1, 2, 3]) }
        #expect(throws: HostMMError.invalidArgument) { try file.write(offset: Int.max - 1, [1, 2, 3]) }
        #expect(throws: HostMMError.invalidArgument) { _ = try file.read(offset: Int.max - 1, count: 3) }
        #expect(throws: HostMMError.invalidArgument) { _ = try file.read(offset: 4096, count: Int.max) }
        try file.write(offset: 8189, [1, 2, 3])
        #expect(try file.read(offset: 8189, count: 3) == [1, 2, 3])
        let huge = PageCacheFile(memory: memory, pageCount: Int.max)
        #expect(throws: HostMMError.invalidArgument) { _ = try huge.read(offset: Int.max, count: 1) }
        #expect(PageCacheFile(memory: memory, pageCount: -5).pageCount == 0)
    }

    /// `remapPFNRange` computed `address + count << 12` unchecked: a count reaching past
    /// the address space trapped instead of throwing EINVAL.
    @Test func remapPFNRangeWithACountPastTheAddressSpaceThrows() throws {
        let memory = try PhysicalMemory(ramBytes: 1 << 20, maxDevicePages: 16, checked: .off)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.special(.pfnMap), length: 4 * pageSize)
        for count in [Int.max, 1 << 52, 1 << 35] {
            #expect(throws: HostMMError.invalidArgument) { try mm.remapPFNRange(a, pfn: PFN(1), count: count) }
        }
        #expect(throws: HostMMError.invalidArgument) { try mm.remapPFNRange(UInt64.max & ~4095, pfn: PFN(1), count: 1) }
        try mm.remapPFNRange(a, pfn: PFN(1), count: 4)
    }
}
