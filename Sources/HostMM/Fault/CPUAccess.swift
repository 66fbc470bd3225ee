#if canImport(Glibc)
import Glibc
#endif

/// CPU loads and stores through the page table, faulting like the hardware + kernel
/// would (`handle_mm_fault` on a missing or insufficient entry, then retry).
///
/// Each call takes the mmap lock for read. The bytes of one page are copied with that
/// page's page-table lock held, so a migration cannot unmap the page mid-copy (the
/// model's stand-in for a TLB shootdown waiting for the access to retire).
extension AddressSpace {
    /// Reads `buffer.count` bytes at `address` (a CPU load).
    /// - Throws: `.segmentationFault` (no VMA / no read permission), `.busError`
    ///   (a driver's `migrateToRAM` failed, access past EOF), `.outOfMemory`, `.notSupported`.
    public func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(HostMMError) {
        try access(address, buffer.count, write: false) { page, offset, done, n in
            memcpy(buffer.baseAddress! + done, page + offset, n)
        }
    }

    /// Writes `buffer` at `address` (a CPU store). Throws like `read`.
    public func write(at address: UInt64, from buffer: UnsafeRawBufferPointer) throws(HostMMError) {
        try access(address, buffer.count, write: true) { page, offset, done, n in
            memcpy(page + offset, buffer.baseAddress! + done, n)
        }
    }

    /// Reads `count` bytes at `address`.
    ///
    /// The array grows with what is mapped, so a `count` past the mapping throws the
    /// `.segmentationFault` of the first unmapped address (after faulting in the pages
    /// before it, as one `read(at:into:)` would), rather than trapping on an allocation
    /// of `count` bytes.
    public func read(at address: UInt64, count: Int) throws(HostMMError) -> [UInt8] {
        guard count >= 0 else { throw .invalidArgument(reason: "negative count \(count)") }
        return try readInMappedStretches(at: address, count: count) { (at, b) throws(HostMMError) in
            try read(at: at, into: b)
        }
    }

    /// The loop of a `read(at:count:)`, the CPU's or a device view's: reads `count` bytes
    /// at `address` with `read`, one mapped stretch (`mappedLength`) at a time, so the
    /// array grows with what is mapped and a stretch with no mapping is read one byte at
    /// a time — the access faults there (unless a racing mmap filled it) and the error of
    /// `read` is thrown. `count` must not be negative.
    public func readInMappedStretches<E: Error>(
        at address: UInt64, count: Int,
        _ read: (_ at: UInt64, _ into: UnsafeMutableRawBufferPointer) throws(E) -> Void
    ) throws(E) -> [UInt8] {
        var out: [UInt8] = []
        var failure: E?
        while out.count < count {
            let at = address &+ UInt64(out.count)
            let start = out.count
            let n = max(mappedLength(at: at, upTo: count - start), 1)
            // Grown as whole arrays (memset, memcpy): `repeatElement` appends byte by byte
            // in debug and TSan builds, which made every checked read there crawl.
            if out.isEmpty { out = [UInt8](repeating: 0, count: n) } else { out += [UInt8](repeating: 0, count: n) }
            out.withUnsafeMutableBytes { b in
                do throws(E) {
                    try read(at, UnsafeMutableRawBufferPointer(rebasing: b[start ..< start + n]))
                } catch { failure = error }
            }
            if let failure { throw failure }
        }
        return out
    }

    /// How many bytes from `address`, at most `limit`, lie in VMAs with no gap between
    /// them: how far an access can go before it meets an unmapped address (protections
    /// are not looked at). 0 when `address` is not mapped. Takes the mmap lock for read;
    /// the answer may be stale once it returns. Use it to size a buffer before a read.
    public func mappedLength(at address: UInt64, upTo limit: Int) -> Int {
        guard limit > 0 else { return 0 }
        return mmapLock.withReadLock { () -> Int in
            var covered: UInt64 = 0
            while covered < UInt64(limit), let vma = findVMA(address &+ covered), address &+ covered >= address {
                covered = vma.end - address
            }
            return Int(min(covered, UInt64(limit)))
        }
    }

    /// Writes `bytes` at `address`.
    public func write(at address: UInt64, bytes: [UInt8]) throws(HostMMError) {
        var failure: HostMMError?
        bytes.withUnsafeBytes { b in
            do throws(HostMMError) { try write(at: address, from: b) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Faults in every page of `[address, address + length)` for read or write without
    /// moving data (what touching each page would do).
    public func touch(_ address: UInt64, length: Int, write: Bool) throws(HostMMError) {
        try access(address, length, write: write) { _, _, _, _ in }
    }

    /// Walks `[address, address + length)` page by page; `body(pageBytes, offset, done, n)`
    /// runs with the page-table lock held and a usable entry.
    func access(_ address: UInt64, _ length: Int, write: Bool,
                _ body: (UnsafeMutableRawPointer, Int, Int, Int) -> Void) throws(HostMMError) {
        guard length >= 0 else { throw .invalidArgument(reason: "negative length \(length)") }
        guard length > 0 else { return }
        try mmapLock.withReadLock { () throws(HostMMError) in
            var done = 0
            while done < length {
                let addr = address &+ UInt64(done)
                let offset = Int(addr & pageOffsetMask)
                let n = min(pageSize - offset, length - done)
                try accessPage(addr, write: write) { page in body(page, offset, done, n) }
                done += n
            }
        }
    }

    private enum Probe { case done, fault, noBytes }

    private func accessPage(_ addr: UInt64, write: Bool, _ body: (UnsafeMutableRawPointer) -> Void) throws(HostMMError) {
        var attempts = 0
        while true {
            guard let vma = findVMA(addr) else {
                faultCounters.count(.sigsegv)
                throw .segmentationFault(address: addr, reason: .notMapped)
            }
            guard vma.flags.contains(write ? .write : .read) else {
                faultCounters.count(.sigsegv)
                throw .segmentationFault(address: addr, reason: .accessDenied)
            }
            var probe = Probe.fault
            if let leaf = pageTable.leaf(addr, create: false) {
                let i = PTETable.index(addr)
                probe = leaf.lock.withLock {
                    let pte = leaf[i]
                    guard pte.isPresent, !write || pte.isWritable else { return .fault }
                    guard let bytes = memory.bytes(pte.pfn) else { return .noBytes }
                    body(bytes)
                    let updated = pte.with(young: true).with(dirty: pte.isDirty || write)
                    if updated != pte { leaf.set(i, updated) }
                    return .done
                }
            }
            switch probe {
            case .done: return
            case .noBytes: throw .busError(address: addr)
            case .fault: break
            }
            try handleMMFault(vma, addr, write: write)
            attempts += 1
            if attempts > 3 { sched_yield() }
        }
    }
}
