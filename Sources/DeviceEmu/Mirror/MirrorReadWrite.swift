#if canImport(Glibc)
import Glibc
#endif
import HostMM

/// The ioctl entry checks, and the READ, WRITE and FLAGS commands (`dmirror_read`,
/// `dmirror_write`, `dmirror_fops_unlocked_ioctl`).
extension Mirror {
    /// The checks every command passes first, once `beginCommand` has found the mirror
    /// open (the ioctl's `fdget`): a page-aligned `address`,
    /// a positive `npages`, and `address < address + (npages << 12)` in wrapping 64-bit
    /// arithmetic (so `npages == 0`, negative counts and wrap-around are refused; a
    /// negative count used to pass the wrap check at low addresses). Returns the end; like
    /// the kernel's `size = npages << PAGE_SHIFT`, the shift truncates, so every command
    /// works on `pageCount(address, end)` pages, not on `npages`.
    func checkRange(_ address: UInt64, _ npages: Int) throws(MirrorError) -> UInt64 {
        guard address & 4095 == 0 else { throw .invalidArgument(reason: "address 0x\(String(address, radix: 16)) is not page-aligned") }
        guard npages > 0 else { throw .invalidArgument(reason: "npages \(npages) is not positive") }
        let end = address &+ (UInt64(bitPattern: Int64(npages)) &<< 12)
        guard address < end else {
            throw .invalidArgument(reason: "npages \(npages) at 0x\(String(address, radix: 16)) wraps around the address space")
        }
        return end
    }

    /// The pages of `[address, end)`: `npages` as the kernel sees it after the shift.
    func pageCount(_ address: UInt64, _ end: UInt64) -> Int { Int((end - address) >> 12) }

    /// `dmirror_bounce_init`: a zeroed kernel buffer of `npages` pages; `ENOMEM` when it
    /// could not be had (larger than the machine's RAM).
    func makeBounce(_ npages: Int) throws(MirrorError) -> UnsafeMutableRawBufferPointer {
        guard npages <= device.memory.ramPageCount else { throw .outOfMemory }
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: npages * pageSize, alignment: pageSize)
        b.initializeMemory(as: UInt8.self, repeating: 0)
        return b
    }

    /// `copy_to_user` of a whole bounce buffer: `EFAULT` when the destination is shorter.
    func copyOut(_ bounce: UnsafeMutableRawBufferPointer, to buffer: UnsafeMutableRawBufferPointer?) throws(MirrorError) {
        guard let buffer else { return }
        guard buffer.count >= bounce.count, let to = buffer.baseAddress else { throw .fault }
        memcpy(to, bounce.baseAddress!, bounce.count)
    }

    /// The read-back that ends `dmirror_migrate_to_device` and `dmirror_exclusive`: the
    /// mirror's pages of `[address, end)` into a bounce buffer, without faulting, then
    /// copied out to `buffer` (when given) for the caller to verify.
    /// - Returns: `cpages` = pages read (`npages`), `faults` 0.
    /// - Throws: `.noEntry` at the first page not in the mirror (`.invalidArgument` once
    ///   closed); `.outOfMemory` for the bounce buffer; `.fault` for a short buffer.
    func readBack(_ address: UInt64, _ end: UInt64,
                  into buffer: UnsafeMutableRawBufferPointer?) throws(MirrorError) -> MirrorResult {
        let bounce = try makeBounce(pageCount(address, end))
        defer { bounce.deallocate() }
        var cpages = 0
        guard doRead(address, end, base: address, bounce.baseAddress!, &cpages) else {
            throw isReleased ? .invalidArgument(reason: "the mirror was released") : .noEntry
        }
        try copyOut(bounce, to: buffer)
        return MirrorResult(cpages: cpages, faults: 0)
    }

    /// `HMM_DMIRROR_READ`: reads `npages` pages at `address` through the mirror into
    /// `buffer`. Missing entries are faulted in (one `hmmRangeFault` pass per miss, counted
    /// in `faults`); any entry, read-only, writable or atomic, can be read.
    /// - Returns: `cpages` = pages read (`npages`); `faults` = fault passes (1 when cold).
    /// - Throws: `.fault` for `PROT_NONE`, holes or a short buffer; `.busy`; `.outOfMemory`;
    ///   `.invalidArgument` from the entry checks. `buffer` is untouched on error.
    public func read(_ address: UInt64, npages: Int, into buffer: UnsafeMutableRawBufferPointer) throws(MirrorError) -> MirrorResult {
        try beginCommand()
        defer { endCommand() }
        let end = try checkRange(address, npages)
        let bounce = try makeBounce(pageCount(address, end))
        defer { bounce.deallocate() }
        var cpages = 0, faults = 0
        var start = address
        while !doRead(start, end, base: address, bounce.baseAddress!, &cpages) {
            guard !isReleased else { throw .invalidArgument(reason: "the mirror was released") }
            start = address + UInt64(cpages) << 12
            try fault(start, end, write: false)
            faults += 1
        }
        try copyOut(bounce, to: buffer)
        return MirrorResult(cpages: cpages, faults: faults)
    }

    /// `HMM_DMIRROR_WRITE`: writes `npages` pages of `buffer` at `address` through the
    /// mirror. Only writable entries are used; missing, read-only and atomic ones are
    /// faulted for write (which breaks copy-on-write, and revokes the device's own
    /// exclusive access).
    /// - Returns: `cpages` = pages written; `faults` = fault passes.
    /// - Throws: `.permissionDenied` for a read-only VMA; `.fault` for `PROT_NONE`, holes or
    ///   a short buffer (checked before anything is done); `.busy`; `.outOfMemory`.
    public func write(_ address: UInt64, npages: Int, from buffer: UnsafeRawBufferPointer) throws(MirrorError) -> MirrorResult {
        try beginCommand()
        defer { endCommand() }
        let end = try checkRange(address, npages)
        let bounce = try makeBounce(pageCount(address, end))
        defer { bounce.deallocate() }
        guard buffer.count >= bounce.count, let from = buffer.baseAddress else { throw .fault }
        memcpy(bounce.baseAddress!, from, bounce.count)
        var cpages = 0, faults = 0
        var start = address
        while !doWrite(start, end, base: address, UnsafeRawPointer(bounce.baseAddress!), &cpages) {
            guard !isReleased else { throw .invalidArgument(reason: "the mirror was released") }
            start = address + UInt64(cpages) << 12
            try fault(start, end, write: true)
            faults += 1
        }
        return MirrorResult(cpages: cpages, faults: faults)
    }

    /// `HMM_DMIRROR_FLAGS`: replaces the mirror's flags with `npages` (an assignment, so
    /// `0` — like any `npages == 0` — is `EINVAL`: flags cannot be cleared this way).
    /// - Returns: cpages 0, faults 0.
    @discardableResult
    public func setFlags(_ address: UInt64 = 0, npages: Int) throws(MirrorError) -> MirrorResult {
        try beginCommand()
        defer { endCommand() }
        _ = try checkRange(address, npages)
        storeFlags(MirrorFlags(rawValue: UInt64(bitPattern: Int64(npages))))
        return MirrorResult(cpages: 0, faults: 0)
    }

    /// `HMM_DMIRROR_FLAGS` with a flag set (its raw value is the `npages` sent).
    @discardableResult
    public func setFlags(_ flags: MirrorFlags) throws(MirrorError) -> MirrorResult {
        try setFlags(0, npages: Int(truncatingIfNeeded: flags.rawValue))
    }
}
