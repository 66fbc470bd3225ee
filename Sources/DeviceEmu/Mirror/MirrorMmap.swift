public import HostMM

/// `mmap` of the device file itself (`dmirror_fops_mmap`): zeroed kernel pages inserted
/// one by one into the new VMA, which becomes `VM_MIXEDMAP` (hmm-tests' `mixedmap`).
extension Mirror {
    /// `dmirror_fops_mmap`: maps `length` bytes of fresh zeroed pages at a new address of
    /// `mm`, each inserted with `insertPage` (a private mapping gets read-only entries:
    /// copy-on-write).
    /// - Returns: the mapping's address.
    /// - Throws: `.invalidArgument` for a closed mirror, a non-positive length or an
    ///   address space that is gone; `.outOfMemory` when pages run out.
    public func mmap(length: Int, protection: Protection = .readWrite) throws(MirrorError) -> UInt64 {
        try beginCommand()
        defer { endCommand() }
        guard length > 0 else { throw .invalidArgument(reason: "length \(length) is not positive") }
        let mm = try liveMM(orElse: .invalidArgument(reason: Self.addressSpaceGone))
        let memory = device.memory
        let address: UInt64
        do { address = try mm.mmap(.special(.mixedMap), length: length, protection: protection) } catch {
            throw MirrorError(error)
        }
        let pages = (length + pageSize - 1) / pageSize
        for k in 0..<pages {
            guard let page = memory.allocPage(zeroed: true) else {
                try? mm.munmap(address, length: length)
                throw .outOfMemory
            }
            defer { memory.putPage(page) }
            do { try mm.insertPage(address + UInt64(k * pageSize), page: page) } catch {
                try? mm.munmap(address, length: length)
                throw MirrorError(error)
            }
        }
        return address
    }
}
