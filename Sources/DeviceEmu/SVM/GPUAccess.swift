#if canImport(Glibc)
import Glibc
#endif
import HostMM

/// GPU loads, stores and atomics through the device page table, faulting like a GPU
/// with replayable faults (nouveau's SVM, dmirror's read/write commands): a missing or
/// insufficient entry raises a GPU fault the driver resolves by policy, then the access
/// is replayed.
extension GPUAddressSpace {
    /// What an access needs from an entry.
    enum Access: Equatable {
        case read, write
        /// Read-modify-write: needs write permission, and the page in VRAM or held
        /// device-exclusive (no system-wide atomics over the bus in this model).
        case atomic

        /// The kind a `GPUFaultPolicy` is told.
        var info: GPUFaultInfo.Access {
            switch self {
            case .read: return .read
            case .write: return .write
            case .atomic: return .atomic
            }
        }

        func allows(_ e: DevicePageTableEntry) -> Bool {
            switch self {
            case .read: return e.isValid
            case .write: return e.isValid && e.isWritable
            case .atomic: return e.isWritable && (e.kind == .vram || e.kind == .exclusive)
            }
        }
    }

    /// Reads `buffer.count` bytes at `address` with the GPU.
    /// - Throws: `.fault` (no readable mapping — also when RAM runs out faulting a page in,
    ///   as `hmm_range_fault` returns -EFAULT on `VM_FAULT_OOM`), `.suspended`, `.shutDown`,
    ///   `.busy` if the page kept being invalidated under the access, `.hostMM` otherwise.
    public func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(DeviceError) {
        try access(address, buffer.count, .read) { page, done, n in
            memcpy(buffer.baseAddress! + done, page, n)
        }
    }

    /// Writes `buffer` at `address` with the GPU. Throws like `read`, plus `.permissionDenied`.
    public func write(at address: UInt64, from buffer: UnsafeRawBufferPointer) throws(DeviceError) {
        try access(address, buffer.count, .write) { page, done, n in
            memcpy(page, buffer.baseAddress! + done, n)
        }
    }

    /// Reads `count` bytes at `address` with the GPU.
    ///
    /// The array grows with what the CPU address space maps (`AddressSpace.mappedLength`),
    /// so a `count` past the mapping throws the `.fault` of the first unmapped address
    /// rather than trapping on an allocation of `count` bytes.
    public func read(at address: UInt64, count: Int) throws(DeviceError) -> [UInt8] {
        guard count >= 0, address <= Self.addressLimit, UInt64(count) <= Self.addressLimit - address else {
            throw Self.outsideAddressLimit(address, count)
        }
        return try mm.readInMappedStretches(at: address, count: count) { (at, b) throws(DeviceError) in
            try read(at: at, into: b)
        }
    }

    /// Writes `bytes` at `address` with the GPU.
    public func write(at address: UInt64, bytes: [UInt8]) throws(DeviceError) {
        var failure: DeviceError?
        bytes.withUnsafeBytes { b in
            do throws(DeviceError) { try write(at: address, from: b) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Atomically adds `value` to the 8-byte word at `address` (8-byte aligned); returns
    /// the previous value. The page is made VRAM-resident or device-exclusive first.
    public func atomicAdd(at address: UInt64, _ value: UInt64) throws(DeviceError) -> UInt64 {
        guard address & 7 == 0 else { throw .invalidArgument(reason: "atomic at 0x\(String(address, radix: 16)) is not 8-byte aligned") }
        var old: UInt64 = 0
        try access(address, 8, .atomic) { page, _, _ in
            let word = page.assumingMemoryBound(to: UInt64.self)
            old = word.pointee
            word.pointee = old &+ value
        }
        return old
    }

    /// Atomically replaces the 8-byte word at `address` with `desired` if it equals
    /// `expected`; returns whether it did and the value found.
    public func atomicCompareExchange(at address: UInt64, expected: UInt64,
                                      desired: UInt64) throws(DeviceError) -> (exchanged: Bool, original: UInt64) {
        guard address & 7 == 0 else { throw .invalidArgument(reason: "atomic at 0x\(String(address, radix: 16)) is not 8-byte aligned") }
        var result = (exchanged: false, original: UInt64(0))
        try access(address, 8, .atomic) { page, _, _ in
            let word = page.assumingMemoryBound(to: UInt64.self)
            result.original = word.pointee
            if word.pointee == expected {
                word.pointee = desired
                result.exchanged = true
            }
        }
        return result
    }

    /// The EINVAL of an access with a negative length or past the GPU's 47-bit address space.
    static func outsideAddressLimit(_ address: UInt64, _ length: Int) -> DeviceError {
        .invalidArgument(reason: length < 0 ? "negative length \(length)"
                         : "\(length) bytes at 0x\(String(address, radix: 16)) leave the GPU's address space (2^47)")
    }

    /// Walks `[address, address + length)` page by page; `body(bytes, done, n)` runs with
    /// the mirror lock held on a usable entry. The device gate, and the view's access
    /// gate (which `unbind` drains), are held throughout.
    func access(_ address: UInt64, _ length: Int, _ kind: Access,
                _ body: (UnsafeMutableRawPointer, Int, Int) -> Void) throws(DeviceError) {
        guard length >= 0, address <= Self.addressLimit, UInt64(length) <= Self.addressLimit - address else {
            throw Self.outsideAddressLimit(address, length)
        }
        guard length > 0 else { return }
        try device.gate.enter()
        defer { device.gate.exit() }
        try accesses.enter()   // `.shutDown` once unbound; `detach` waits for it to exit
        defer { accesses.exit() }
        var done = 0
        while done < length {
            let addr = address + UInt64(done)
            let offset = Int(addr & 4095)
            let n = min(pageSize - offset, length - done)
            try accessPage(addr & ~4095, kind, length: n) { page in body(page + offset, done, n) }
            done += n
        }
    }

    private enum Probe { case done, fault, detached }

    private func accessPage(_ page: UInt64, _ kind: Access, length: Int,
                            _ body: (UnsafeMutableRawPointer) -> Void) throws(DeviceError) {
        var attempts = 0
        while true {
            var remote = false, overLink = false
            let probe: Probe = lock.withLock {
                guard !isDetached else { return .detached }
                let e = table.entry(page)
                guard kind.allows(e), let bytes = bytes(of: e) else { return .fault }
                body(bytes)
                if e.kind == .vram, let index = device.vram.pageIndex(of: e.pfn) { device.eviction.pageAccessed(index) }
                remote = e.kind == .system
                overLink = remote || e.kind == .exclusive
                return .done
            }
            switch probe {
            case .done:
                if overLink, let link = device.remoteLink {
                    device.counters.add(.remoteLinkBytes, length)
                    if link.charge(bytes: length, toHost: kind != .read) > 0 { device.counters.add(.remoteLinkWaits) }
                }
                if remote && device.countsRemoteAccesses.load(ordering: .relaxed) { reportRemoteAccess(page, kind) }
                return
            case .detached: throw .shutDown
            case .fault: break
            }
            attempts += 1
            // A fault is resolved, then the entry may be invalidated again before the
            // replay; give up only if that keeps happening.
            guard attempts <= 10_000 else { throw .busy }
            if attempts > 4 { sched_yield() }
            try handleGPUFault(page, kind)
        }
    }

    /// The bytes behind a valid entry.
    private func bytes(of e: DevicePageTableEntry) -> UnsafeMutableRawPointer? {
        if e.kind == .vram { return device.vram.bytes(of: e.pfn) }
        return device.memory.bytes(e.pfn)
    }
}

extension GPUAddressSpace {
    /// Tells the GPU-fault policy about an access that went to system memory, and
    /// migrates the window it asks for (best effort: errors leave the page mapped where
    /// it is, as a failed counter-triggered migration does in uvm).
    func reportRemoteAccess(_ page: UInt64, _ kind: Access) {
        let policy = device.policy
        // Asked again of this snapshot: `setPolicy` may have swapped the policy since the
        // caller read the device's flag.
        guard let custom = policy.gpuFault.customPolicy, custom.countsRemoteAccesses else { return }
        device.counters.add(.remoteAccesses)
        guard case .migrateToVRAM(let pages) = custom.remoteAccess(
            GPURemoteAccess(address: page, access: kind.info, addressSpace: ObjectIdentifier(mm))) else { return }
        device.counters.add(.remoteAccessMigrations)
        guard let vma = mm.mmapLock.withReadLock({ mm.findVMA(page).map { (start: $0.start, end: $0.end) } }) else { return }
        let window = Self.window(page, pages: pages, vma.start, vma.end)
        _ = try? device.migrateToDevice(mm, range: window, channels: device.channels(forFault: window, policy))
    }
}
