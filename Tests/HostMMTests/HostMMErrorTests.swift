import Testing
@testable import HostMM

/// `HostMMError.invalidArgument` says which check failed. The kernel returns a bare
/// `EINVAL`; a driver author calling `migrateVMASetup` with a bad range, flags, arrays or
/// VMA got "invalid argument (EINVAL)" alone and had to guess. The reason takes no part
/// in `==` or in matching `.invalidArgument`.
@Suite struct HostMMErrorTests {
    /// The description of what `body` throws, or nil.
    private func thrown(_ body: () throws(HostMMError) -> Void) -> String? {
        do { try body() } catch { return "\(error)" }
        return nil
    }

    private func hex(_ a: UInt64) -> String { "0x" + String(a, radix: 16) }

    @Test func invalidArgumentComparesAndMatchesWhateverTheReason() {
        let error = HostMMError.invalidArgument(reason: "start 0x1001 is not page-aligned")
        #expect(error == .invalidArgument && HostMMError.invalidArgument == error)
        #expect(error == .invalidArgument(reason: "something else"))
        #expect(error != .busy && HostMMError.busy != .invalidArgument)
        #expect(error.reason == "start 0x1001 is not page-aligned")
        #expect(HostMMError.invalidArgument.reason == nil && HostMMError.fault.reason == nil)
        #expect("\(error)" == "invalid argument (EINVAL): start 0x1001 is not page-aligned")
        #expect("\(HostMMError.invalidArgument)" == "invalid argument (EINVAL)")
        // The other payloads still take part in ==.
        #expect(HostMMError.busError(address: 1) != .busError(address: 2))
        #expect(HostMMError.segmentationFault(address: 1, reason: .notMapped) == .segmentationFault(address: 1, reason: .notMapped))
        #expect(HostMMError.segmentationFault(address: 1, reason: .notMapped) != .segmentationFault(address: 1, reason: .accessDenied))
        // Typed catch and switch patterns still match without naming the reason.
        var caught = false
        do throws(HostMMError) { throw error } catch .invalidArgument { caught = true } catch {}
        #expect(caught)
        switch error {
        case .invalidArgument: caught = true
        default: caught = false
        }
        #expect(caught)
        #expect(throws: HostMMError.invalidArgument) { throw error }
    }

    /// Each `migrate_vma_setup` EINVAL names the value and the rule.
    @Test func migrateVMASetupSaysWhichCheckFailed() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let io = try mm.mmap(.special(.io), length: pageSize)
        let gone = try mm.mmap(length: pageSize)
        let (vma, ioVMA, goneVMA) = mm.mmapLock.withReadLock { (mm.findVMA(a)!, mm.findVMA(io)!, mm.findVMA(gone)!) }
        try mm.munmap(gone, length: pageSize)
        let page = UInt64(pageSize)
        let end = a + 4 * page
        func setup(_ change: (inout MigrateVMA) -> Void) -> String? {
            withBuffers(4) { src, dst in
                var args = MigrateVMA(vma: vma, start: a, end: a + 2 * page, src: src, dst: dst, flags: .selectSystem)
                change(&args)
                let got = mm.mmapLock.withReadLock { thrown { () throws(HostMMError) in try migrateVMASetup(&args) } }
                if got == nil { migrateVMAFinalize(&args) }
                return got
            }
        }
        let e = "invalid argument (EINVAL): "
        #expect(setup { $0.vma = nil } == e + "no VMA (args.vma is nil)")
        #expect(setup { $0.vma = ioVMA; $0.start = io; $0.end = io + page }
                == e + "\(ioVMA) is VM_IO: migration refuses hugetlb, DAX and VM_SPECIAL VMAs")
        // The kernel rounds an unaligned start down; what it refuses is less than a page.
        #expect(setup { $0.start = a + 1; $0.end = a + page } == e + "range \(hex(a + 1))..<\(hex(a + page)) is shorter than a page")
        #expect(setup { $0.end = a - page } == e + "end \(hex(a - page)) is before start \(hex(a))")
        #expect(setup { $0.start = a - page } == e + "start \(hex(a - page)) is before the VMA's start \(hex(a))")
        #expect(setup { $0.start = end; $0.end = end + page } == e + "start \(hex(end)) is not below the VMA's end \(hex(end))")
        #expect(setup { $0.end = end + page } == e + "end \(hex(end + page)) is past the VMA's end \(hex(end))")
        #expect(setup { $0.src = UnsafeMutableBufferPointer(start: nil, count: 0) } == e + "src array is missing (no base address)")
        #expect(setup { $0.faultPage = PFN(5) } == e + "faultPage pfn:0x5 is not a device-private page")
        #expect(setup { $0.vma = goneVMA; $0.start = gone; $0.end = gone + page } == e + "\(goneVMA) is detached (unmapped)")
        #expect(setup { $0.flags = MigrateVMA.Flags(rawValue: 1 << 6 | 1) } == e + "unknown flags 0x40")
        #expect(setup { $0.end = end; $0.src = UnsafeMutableBufferPointer(rebasing: $0.src[0..<3]) }
                == e + "src has 3 entries for 4 pages")
        #expect(setup { $0.end = end; $0.dst = UnsafeMutableBufferPointer(rebasing: $0.dst[0..<1]) }
                == e + "dst has 1 entries for 4 pages")
        // Still the same error for == and matching, and a good call still succeeds.
        #expect(setup { _ in } == nil)
    }

    /// The other calls of the model: hmm_range_fault, the RAM's size, mmap and friends,
    /// the pages step's destinations, the PFN path, pgmaps, notifiers.
    @Test func otherCallsSayWhichCheckFailed() throws {
        let e = "invalid argument (EINVAL): "
        #expect(thrown { () throws(HostMMError) in _ = try PhysicalMemory(ramBytes: 12345) }
                == e + "ramBytes 12345 is not a multiple of the page size 4096")
        #expect(thrown { () throws(HostMMError) in _ = try PhysicalMemory(ramBytes: 4096) }
                == e + "ramBytes 4096 is less than 2 pages (8192)")
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let page = UInt64(pageSize)

        let n = try mm.notifiers.insert(start: a, length: 4 * page, ops: NullMirror())
        func fault(_ start: UInt64, _ end: UInt64, entries: Int = 4) -> String? {
            let buf = UnsafeMutableBufferPointer<HMMPFN>.allocate(capacity: entries)
            defer { buf.deallocate() }
            buf.initialize(repeating: [])
            var range = HMMRange(notifier: n, notifierSeq: n.readBegin(), start: start, end: end, hmmPFNs: buf,
                                 defaultFlags: .requestFault, pfnFlagsMask: [], devicePrivateOwner: nil)
            return mm.mmapLock.withReadLock { thrown { () throws(HostMMError) in try hmmRangeFault(&range) } }
        }
        #expect(fault(a + 8, a + page) == e + "start \(hex(a + 8)) is not page-aligned")
        #expect(fault(a, a) == e + "empty range: end \(hex(a)) is not above start \(hex(a))")
        #expect(fault(a, a + 4 * page, entries: 2) == e + "hmmPFNs has 2 entries for 4 pages")
        #expect(fault(a, a + 4 * page) == nil)
        #expect(thrown { () throws(HostMMError) in _ = try mm.notifiers.insert(start: a, length: 0, ops: NullMirror()) }
                == e + "empty range: length 0 at \(hex(a))")

        #expect(thrown { () throws(HostMMError) in try mm.munmap(a + 1, length: pageSize) } == e + "address \(hex(a + 1)) is not page-aligned")
        #expect(thrown { () throws(HostMMError) in try mm.mprotect(a, length: 0, protection: .read) } == e + "length 0 is not positive")
        #expect(thrown { () throws(HostMMError) in _ = try mm.mmap(length: -1) } == e + "length -1 is not positive")
        #expect(thrown { () throws(HostMMError) in _ = try mm.mremap(a, oldLength: pageSize, newLength: pageSize, flags: .fixed) }
                == e + "MREMAP_FIXED without MREMAP_MAYMOVE")
        #expect(thrown { () throws(HostMMError) in try mm.madvise(a, length: -4, advice: .dontNeed) } == e + "negative length -4")
        #expect(thrown { () throws(HostMMError) in _ = try mm.read(at: a, count: -1) } == e + "negative count -1")

        // The pages step: a destination that is not locked.
        try mm.touch(a, length: pageSize, write: true)
        let ram = try #require(memory.allocPage())
        let got = withBuffers(1) { src, dst in
            mm.mmapLock.withReadLock {
                var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + page, src: src, dst: dst, flags: .selectSystem)
                try? migrateVMASetup(&args)
                dst[0] = MigratePFN(pfn: ram)
                defer { migrateVMAFinalize(&args) }
                return thrown { () throws(HostMMError) in try migrateVMAPages(&args) }
            }
        }
        #expect(got == e + "dst[0] \(ram) is not locked")
        memory.putPage(ram)

        // The PFN path and pgmaps.
        #expect(withBuffers(1) { src, _ in thrown { () throws(HostMMError) in try memory.migrateDeviceRange(src, start: PFN(1), npages: 0) } }
                == e + "npages 0 is not positive")
        #expect(thrown { () throws(HostMMError) in try memory.zoneDevicePageInit(PFN(1)) } == e + "pfn:0x1 is not a device page")
        let device = try TestDevice(memory: memory, pageCount: 4)
        #expect(thrown { () throws(HostMMError) in
            _ = try memory.registerPagemap(type: .devicePrivate, pageCount: 0, owner: device.owner, ops: device)
        } == e + "pageCount 0 is not positive")
        #expect(thrown { () throws(HostMMError) in
            _ = try memory.registerPagemap(type: .deviceCoherent, pageCount: 1, owner: device.owner, ops: device)
        } == e + "a device-coherent pgmap needs coherentBytes")
    }
}
