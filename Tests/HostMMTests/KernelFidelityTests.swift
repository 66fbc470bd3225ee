import Dispatch
import Foundation
import Testing
@testable import HostMM

/// Divergences from mm/ found by reading the kernel next to the model; each test names
/// the kernel function whose behaviour it pins down.
@Suite struct KernelFidelityTests {
    /// `copy_nonpresent_pte`: any migration entry that is not plain readable (writable *or*
    /// readable-exclusive) becomes readable in a COW mapping, in parent and child: the
    /// page is shared now, so neither may later reuse it in place on a write.
    @Test func forkMakesAReadableExclusiveMigrationEntryPlainReadable() throws {
        let memory = try makeMemory()
        let parent = AddressSpace(memory: memory)
        let a = try parent.mmap(length: pageSize)
        let end = a + UInt64(pageSize)
        try parent.write(at: a, bytes: [0xAA])
        try parent.mprotect(a, length: pageSize, protection: .read)   // exclusive page, read-only pte
        let page = parent.pageTableEntry(a).pfn
        let ram = memory.freeRAMPageCount
        try withBuffers(1) { src, dst in
            var args = MigrateVMA(vma: nil, start: a, end: end, src: src, dst: dst, flags: .selectSystem)
            try parent.mmapLock.withReadLock { () throws in
                args.vma = parent.findVMA(a)
                try migrateVMASetup(&args)
            }
            #expect(parent.pageTableEntry(a).kind == .migration && parent.pageTableEntry(a).isExclusive)
            let child = try parent.fork()
            #expect(!parent.pageTableEntry(a).isExclusive && !child.pageTableEntry(a).isExclusive)
            try migrateVMAPages(&args)
            migrateVMAFinalize(&args)                                 // no destination: restored in both
            #expect(parent.pageTableEntry(a).pfn == page && child.pageTableEntry(a).pfn == page)
            #expect(!memory.flags(page).contains(.anonExclusive))
            try child.mprotect(a, length: pageSize, protection: .readWrite)
            try child.write(at: a, bytes: [0xBB])                    // must copy, not write the shared page
            #expect(try parent.read(at: a, count: 1) == [0xAA])
            #expect(try child.read(at: a, count: 1) == [0xBB])
            child.exit()
        }
        parent.exit()
        #expect(memory.freeRAMPageCount == ram + 1)
    }

    /// `__mmu_interval_notifier_insert`: an interval inserted while an invalidation that
    /// hit no interval is still running gets the (now odd) mm sequence, so `read_begin`
    /// waits for that invalidation to end — it may be tearing down pages of the new
    /// interval, and it will never call the new interval's `invalidate`.
    @Test func intervalInsertedDuringAnInvalidationWaitsInReadBegin() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let range = MMUNotifierRange(start: a, end: a + UInt64(4 * pageSize), event: .unmap, owner: nil)
        mm.notifiers.invalidateStart(range)                           // no interval yet: nothing hit
        let interval = try mm.notifiers.insert(start: a, length: UInt64(4 * pageSize), ops: RecordingMirror())
        let returned = DispatchSemaphore(value: 0)
        Thread {  // not Dispatch's global queue: other tests may hold its threads past the 300 ms below
            _ = interval.readBegin()
            returned.signal()
        }.start()
        let early = returned.wait(timeout: .now() + .milliseconds(300)) == .success
        mm.notifiers.invalidateEnd(range)
        if !early { returned.wait() }
        #expect(!early, "readBegin returned while an invalidation of the interval's range was still running")
        let seq = interval.readBegin()
        #expect(!interval.readRetry(seq))
    }

    /// `mn_itree_inv_end`: with invalidations overlapping in time, only the last one to
    /// end closes the busy period. One that hit no interval ending first must not let a
    /// `readBegin` through while the one that hit the interval still runs.
    @Test func onlyTheLastOfOverlappingInvalidationsEndsTheBusyPeriod() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let page = UInt64(pageSize)
        let a = try mm.mmap(length: 4 * pageSize)
        let interval = try mm.notifiers.insert(start: a, length: page, ops: RecordingMirror())
        let hit = MMUNotifierRange(start: a, end: a + page, event: .clear, owner: nil)
        let miss = MMUNotifierRange(start: a + 2 * page, end: a + 3 * page, event: .clear, owner: nil)
        mm.notifiers.invalidateStart(hit)
        mm.notifiers.invalidateStart(miss)
        mm.notifiers.invalidateEnd(miss)
        let returned = DispatchSemaphore(value: 0)
        Thread {
            _ = interval.readBegin()
            returned.signal()
        }.start()
        let early = returned.wait(timeout: .now() + .milliseconds(300)) == .success
        mm.notifiers.invalidateEnd(hit)
        if !early { returned.wait() }
        #expect(!early, "readBegin returned while an invalidation of the interval's range was still running")
        let seq = interval.readBegin()
        #expect(!interval.readRetry(seq))
    }

    /// `check_vma_flags`: GUP refuses `VM_IO` / `VM_PFNMAP` mappings with `-EFAULT`; their
    /// frames have no `struct page` GUP may reference.
    @Test func pinUserPagesRefusesPFNMapMappings() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let frame = memory.allocPage(zeroed: true)!
        let a = try mm.mmap(.special([.pfnMap]), length: pageSize)
        try mm.remapPFNRange(a, pfn: frame, count: 1)
        #expect(throws: HostMMError.fault) { _ = try mm.pinUserPages(a, count: 1, write: false) }
        #expect(throws: HostMMError.fault) { _ = try mm.getUserPages(a, count: 1, write: true) }
        #expect(memory.refcount(frame) == 1)
        let io = try mm.mmap(.special([.io, .mixedMap]), length: pageSize)
        #expect(throws: HostMMError.fault) { _ = try mm.pinUserPages(io, count: 1, write: false) }
        memory.putPage(frame)
    }

    /// `mprotect_fixup`: a VMA whose flags do not change is left alone — no split, no
    /// `change_protection`, hence no `PROTECTION_VMA` invalidation of a mirror.
    @Test func mprotectToTheSameProtectionDoesNotInvalidateOrSplit() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        try mm.touch(a, length: 4 * pageSize, write: true)
        let mirror = RecordingMirror()
        _ = try mm.notifiers.insert(start: a, length: UInt64(4 * pageSize), ops: mirror)
        try mm.mprotect(a + UInt64(pageSize), length: pageSize, protection: .readWrite)
        #expect(mirror.kinds.isEmpty)
        #expect(mm.vmaList.count == 1)
        try mm.mprotect(a + UInt64(pageSize), length: pageSize, protection: .read)
        #expect(mirror.kinds == [.protectionVMA])
        #expect(mm.vmaList.count == 3)
    }

    /// `do_mprotect_pkey`: VMAs are changed one by one; a hole after the first VMA stops
    /// the walk with `-ENOMEM`, leaving the VMAs before it changed. A hole at the start
    /// changes nothing.
    @Test func mprotectOverAHoleChangesTheVMAsBeforeItThenFails() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        try mm.munmap(a + UInt64(2 * pageSize), length: pageSize)
        try mm.touch(a, length: 2 * pageSize, write: true)
        #expect(throws: HostMMError.outOfMemory) { try mm.mprotect(a, length: 4 * pageSize, protection: .read) }
        #expect(throws: HostMMError.segmentationFault(address: a, reason: .accessDenied)) {
            try mm.write(at: a, bytes: [1])
        }
        try mm.write(at: a + UInt64(3 * pageSize), bytes: [1])       // after the hole: untouched
        #expect(throws: HostMMError.outOfMemory) {
            try mm.mprotect(a + UInt64(2 * pageSize), length: 2 * pageSize, protection: .none)
        }
        try mm.write(at: a + UInt64(3 * pageSize), bytes: [2])
    }

    /// `remap_pfn_range` maps with `vm_page_prot`, which is read-only in a private
    /// mapping; `do_wp_page` then copies a page that has no `struct page` (`wp_page_copy`):
    /// a process's stores to a `MAP_PRIVATE` PFN mapping never reach the frame.
    @Test func storeToAPrivatePFNMapCopiesInsteadOfWritingTheFrame() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let frame = memory.allocPage(zeroed: true)!
        memory.bytes(frame)!.storeBytes(of: 0xC3, as: UInt8.self)
        let ram = memory.freeRAMPageCount
        let a = try mm.mmap(.special([.pfnMap]), length: pageSize)
        try mm.remapPFNRange(a, pfn: frame, count: 1)
        #expect(!mm.pageTableEntry(a).isWritable)
        try mm.write(at: a + 1, bytes: [0x11])
        #expect(memory.bytes(frame)!.load(fromByteOffset: 1, as: UInt8.self) == 0)
        #expect(try mm.read(at: a, count: 2) == [0xC3, 0x11])
        #expect(mm.faultCounters[.copyOnWrite] == 1 && mm.pageTableEntry(a).pfn != frame)
        try mm.munmap(a, length: pageSize)
        #expect(memory.freeRAMPageCount == ram && memory.refcount(frame) == 1)
        memory.putPage(frame)
    }

    /// `copy_page_range` on a shared `VM_PFNMAP` mapping: the entries are copied as they
    /// are, with no write-protection and no `PROTECTION_PAGE` invalidation (`is_cow` is
    /// false); stores from either process land in the frame.
    @Test func forkOfASharedPFNMapNeitherWriteProtectsNorInvalidates() throws {
        let memory = try makeMemory()
        let parent = AddressSpace(memory: memory)
        let frame = memory.allocPage(zeroed: true)!
        let a = try parent.mmap(.special([.pfnMap, .shared]), length: pageSize)
        try parent.remapPFNRange(a, pfn: frame, count: 1)
        #expect(parent.pageTableEntry(a).isWritable)
        let mirror = RecordingMirror()
        _ = try parent.notifiers.insert(start: a, length: UInt64(pageSize), ops: mirror)
        let child = try parent.fork()
        #expect(mirror.kinds.isEmpty)
        #expect(parent.pageTableEntry(a).isWritable && child.pageTableEntry(a).isWritable)
        try child.write(at: a, bytes: [0x5A])
        #expect(try parent.read(at: a, count: 1) == [0x5A])
        #expect(memory.bytes(frame)!.load(as: UInt8.self) == 0x5A)
        child.exit()
        parent.exit()
        #expect(memory.refcount(frame) == 1)
        memory.putPage(frame)
    }

    /// `copy_present_pte` + `wp_page_copy` on a private `VM_PFNMAP` mapping: after fork
    /// each process's stores go to copies of its own, never to the frame or the other's copy.
    @Test func forkOfAPrivatePFNMapCopiesOnWriteInBoth() throws {
        let memory = try makeMemory()
        let parent = AddressSpace(memory: memory)
        let frame = memory.allocPage(zeroed: true)!
        let a = try parent.mmap(.special([.pfnMap]), length: pageSize)
        try parent.remapPFNRange(a, pfn: frame, count: 1)
        try parent.write(at: a, bytes: [1])                        // the parent's own copy
        let child = try parent.fork()
        #expect(!parent.pageTableEntry(a).isWritable && !child.pageTableEntry(a).isWritable)
        try child.write(at: a, bytes: [2])
        #expect(try parent.read(at: a, count: 1) == [1])
        try parent.mprotect(a, length: pageSize, protection: .read)
        try parent.mprotect(a, length: pageSize, protection: .readWrite)
        try parent.write(at: a, bytes: [3])
        #expect(try child.read(at: a, count: 1) == [2])
        #expect(memory.bytes(frame)!.load(as: UInt8.self) == 0)
        child.exit()
        parent.exit()
        memory.putPage(frame)
    }

    /// `exit_mmap` → `unmap_vmas(…, 0, ULONG_MAX, …)`: the UNMAP invalidation spans the
    /// whole address space, so an interval outside every VMA sees it after RELEASE.
    @Test func exitInvalidatesTheWholeAddressSpace() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: pageSize)
        try mm.touch(a, length: pageSize, write: true)
        let mirror = RecordingMirror()
        _ = try mm.notifiers.insert(start: a + UInt64(64 * pageSize), length: UInt64(pageSize), ops: mirror)
        mm.exit()
        #expect(mirror.kinds == [.release, .unmap])
    }

    /// `do_sigbus` → `force_sig_fault(SIGBUS, BUS_ADRERR, address)`: the signal carries the
    /// faulting address itself, not its page, whichever fault path raised it.
    @Test func sigbusCarriesTheExactFaultingAddress() throws {
        let memory = try makeMemory()
        let file = PageCacheFile(memory: memory, pageCount: 1)
        let mm = AddressSpace(memory: memory)
        let f = try mm.mmap(.file(file, shared: true), length: 2 * pageSize)
        let past = f + UInt64(pageSize) + 5
        #expect(throws: HostMMError.busError(address: past)) { try mm.read(at: past, count: 1) }
        let device = try TestDevice(memory: memory, pageCount: 4)
        let a = try mm.mmap(length: pageSize)
        try device.migrateToDevice(mm, a, a + UInt64(pageSize))
        device.failMigrateToRAM.store(true, ordering: .relaxed)
        #expect(throws: HostMMError.busError(address: a + 7)) { try mm.write(at: a + 7, bytes: [1]) }
        let s = try mm.mmap(.special([.mixedMap]), length: pageSize)
        #expect(throws: HostMMError.busError(address: s + 9)) { try mm.read(at: s + 9, count: 1) }
    }

    /// `vma_needs_copy`: a VM_IO mapping with neither VM_PFNMAP nor VM_MIXEDMAP has no
    /// entries to copy; fork neither walks nor invalidates it.
    @Test func forkSkipsAnIOMappingWithoutPFNs() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(.special([.io]), length: pageSize)
        let mirror = RecordingMirror()
        _ = try mm.notifiers.insert(start: a, length: UInt64(pageSize), ops: mirror)
        let child = try mm.fork()
        #expect(mirror.kinds.isEmpty)
        child.exit()
    }
}
