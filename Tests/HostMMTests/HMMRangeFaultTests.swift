import Testing
@testable import HostMM

final class NullMirror: MMUIntervalNotifierOps, @unchecked Sendable {
    func invalidate(_ notifier: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool {
        notifier.setSequence(currentSequence)
        return true
    }
}

/// Runs `hmmRangeFault` over `[a, a + n pages)` with the given requests under the read lock.
func hmm(_ mm: AddressSpace, _ notifier: MMUIntervalNotifier, _ a: UInt64, pages n: Int, seq: UInt64? = nil,
         request: HMMPFN = [], perPage: [HMMPFN]? = nil, owner: PgmapOwner? = nil) throws(HostMMError) -> [HMMPFN] {
    let buf = UnsafeMutableBufferPointer<HMMPFN>.allocate(capacity: n)
    defer { buf.deallocate() }
    buf.initialize(repeating: [])
    if let perPage { for i in 0..<n { buf[i] = perPage[i] } }
    var range = HMMRange(notifier: notifier, notifierSeq: seq ?? notifier.readBegin(), start: a,
                         end: a + UInt64(n * pageSize), hmmPFNs: buf, defaultFlags: request,
                         pfnFlagsMask: perPage == nil ? [] : [.requestFault, .requestWrite], devicePrivateOwner: owner)
    try mm.mmapLock.withReadLock { () throws(HostMMError) in try hmmRangeFault(&range) }
    return Array(buf)
}

/// The driver loop around `hmmRangeFault`: take a new sequence and retry on `.busy`.
func hmmRetrying(_ mm: AddressSpace, _ notifier: MMUIntervalNotifier, _ a: UInt64, pages n: Int,
                 request: HMMPFN) throws -> (result: [HMMPFN], retries: Int) {
    for attempt in 0..<16 {
        do { return (try hmm(mm, notifier, a, pages: n, request: request), attempt) } catch .busy { continue }
    }
    throw HostMMError.busy
}

@Suite struct HMMRangeFaultTests {
    @Test func snapshotReportsEachEntryWithoutFaulting() throws {
        let memory = try makeMemory()
        let device = try TestDevice(memory: memory, pageCount: 16)
        let other = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 5 * pageSize)
        try mm.write(at: a, bytes: [1])                                   // 0: writable page
        _ = try mm.read(at: a + UInt64(pageSize), count: 1)                // 1: zero page
        try device.migrateToDevice(mm, a + UInt64(2 * pageSize), a + UInt64(3 * pageSize))  // 2: our device page
        try other.migrateToDevice(mm, a + UInt64(3 * pageSize), a + UInt64(4 * pageSize))   // 3: someone else's
        // 4: hole
        let n = try mm.notifiers.insert(start: a, length: UInt64(5 * pageSize), ops: NullMirror())
        let r = try hmm(mm, n, a, pages: 5, owner: device.owner)
        #expect(r[0] == HMMPFN(pfn: mm.pageTableEntry(a).pfn, flags: [.valid, .write]))
        #expect(r[1] == HMMPFN(pfn: memory.zeroPFN, flags: .valid))
        #expect(r[2].contains([.valid, .write]) && memory.isDevicePrivate(r[2].pfn))
        #expect(r[3] == [] && r[4] == [])
        #expect(mm.faultCounters[.anonymousPage] == 1 && other.cpuFaults.load(ordering: .relaxed) == 0)
    }

    @Test func faultRequestPopulatesHolesAndMigratesForeignDevicePages() throws {
        let memory = try makeMemory()
        let other = try TestDevice(memory: memory, pageCount: 16)
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 3 * pageSize)
        try mm.write(at: a + UInt64(pageSize), bytes: [5])
        try other.migrateToDevice(mm, a + UInt64(pageSize), a + UInt64(2 * pageSize))
        let n = try mm.notifiers.insert(start: a, length: UInt64(3 * pageSize), ops: NullMirror())
        // Faulting the foreign device page migrates it, which invalidates the range: -EBUSY, retry.
        let (r, retries) = try hmmRetrying(mm, n, a, pages: 3, request: .requestFault)
        #expect(retries >= 1)
        #expect(r.allSatisfy { $0.contains(.valid) })
        #expect(other.cpuFaults.load(ordering: .relaxed) == 1)
        #expect(mm.pageTableEntry(a + UInt64(pageSize)).kind == .present)
        #expect(try mm.read(at: a + UInt64(pageSize), count: 1) == [5])
    }

    @Test func perPageRequestsFaultOnlyWhatIsAsked() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: 2 * pageSize)
        let n = try mm.notifiers.insert(start: a, length: UInt64(2 * pageSize), ops: NullMirror())
        let r = try hmm(mm, n, a, pages: 2, perPage: [[.requestFault, .requestWrite], []])
        #expect(r[0].contains([.valid, .write]))
        #expect(mm.pageTableEntry(a).isWritable)
    }

    @Test func writeRequestOnZeroPageCopiesAndReportsBusyThenRetrySucceeds() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize)
        _ = try mm.read(at: a, count: 1)
        let n = try mm.notifiers.insert(start: a, length: UInt64(pageSize), ops: NullMirror())
        // The COW fault invalidates the range (MMU_NOTIFY_CLEAR), so the walk reports -EBUSY.
        #expect(throws: HostMMError.busy) { try hmm(mm, n, a, pages: 1, request: [.requestFault, .requestWrite]) }
        let r = try hmm(mm, n, a, pages: 1, request: [.requestFault, .requestWrite])
        #expect(r[0].contains([.valid, .write]) && r[0].pfn != mm.memory.zeroPFN)
    }

    @Test func invalidationAfterReadBeginGivesBusyUntilANewSequence() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: 2 * pageSize)
        try mm.touch(a, length: 2 * pageSize, write: true)
        let n = try mm.notifiers.insert(start: a, length: UInt64(2 * pageSize), ops: NullMirror())
        let seq = n.readBegin()
        try mm.mprotect(a, length: pageSize, protection: .read)
        #expect(throws: HostMMError.busy) { try hmm(mm, n, a, pages: 2, seq: seq) }
        let r = try hmm(mm, n, a, pages: 2)
        #expect(r[0] == HMMPFN(pfn: mm.pageTableEntry(a).pfn, flags: .valid))
        #expect(r[1].contains([.valid, .write]))
    }

    @Test func faultOnUnmappedAddressIsEFAULTAndSnapshotIsError() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize)
        let n = try mm.notifiers.insert(start: a, length: UInt64(2 * pageSize), ops: NullMirror())
        #expect(throws: HostMMError.fault) { try hmm(mm, n, a, pages: 2, request: .requestFault) }
        let r = try hmm(mm, n, a, pages: 2)
        #expect(r[1] == .error)
    }

    @Test func writeRequestInReadOnlyVMAIsEPERM() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(length: pageSize, protection: .read)
        let n = try mm.notifiers.insert(start: a, length: UInt64(pageSize), ops: NullMirror())
        #expect(throws: HostMMError.permissionDenied) { try hmm(mm, n, a, pages: 1, request: [.requestFault, .requestWrite]) }
        #expect(try hmm(mm, n, a, pages: 1, request: .requestFault)[0] == HMMPFN(pfn: mm.memory.zeroPFN, flags: .valid))
    }

    @Test func specialVMAIsErrorOrEFAULT() throws {
        let mm = AddressSpace(memory: try makeMemory())
        let a = try mm.mmap(.special(.pfnMap), length: pageSize)
        let n = try mm.notifiers.insert(start: a, length: UInt64(pageSize), ops: NullMirror())
        #expect(try hmm(mm, n, a, pages: 1) == [.error])
        #expect(throws: HostMMError.fault) { try hmm(mm, n, a, pages: 1, request: .requestFault) }
    }

    @Test func readFaultUnderProtReadMapsTheZeroPageReadOnly() throws {
        let memory = try makeMemory()
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 2 * pageSize, protection: .read)
        let n = try mm.notifiers.insert(start: a, length: UInt64(2 * pageSize), ops: NullMirror())
        let (result, _) = try hmmRetrying(mm, n, a, pages: 2, request: .requestFault)
        #expect(result == [HMMPFN(pfn: memory.zeroPFN, flags: .valid), HMMPFN(pfn: memory.zeroPFN, flags: .valid)])
        #expect(throws: HostMMError.permissionDenied) {
            try hmm(mm, n, a, pages: 1, request: [.requestFault, .requestWrite])
        }
    }
}
