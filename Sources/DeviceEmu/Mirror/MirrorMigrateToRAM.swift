import HostMM

/// The CPU fault on one of the device's private pages (`dmirror_devmem_fault`): exactly
/// one page comes back to system memory — no fault-around, unlike DeviceEmu's `Device`.
extension MirrorDevice {
    func devmemFault(_ fault: VMFault) -> VMFaultResult {
        // In flight for `shutdown` from here: HostMM already holds the page locked.
        enterMigration()
        defer { leaveMigration() }
        // The mirror that migrated the page: its table loses the entry (this device's own
        // migration does not invalidate its mirrors). Gone only if it closed meanwhile.
        let owning = mirror(id: memory.zoneDeviceData(fault.page))
        // `src` and `dst` of the one page, on the stack: a fault allocates nothing here.
        return withUnsafeTemporaryAllocation(of: MigratePFN.self, capacity: 2) { arrays -> VMFaultResult in
            arrays.initialize(repeating: [])
            let src = UnsafeMutableBufferPointer(rebasing: arrays[0 ..< 1])
            let dst = UnsafeMutableBufferPointer(rebasing: arrays[1 ..< 2])
            let start = fault.address & ~UInt64(pageSize - 1)
            var args = MigrateVMA(vma: fault.vma, start: start, end: start + UInt64(pageSize), src: src, dst: dst,
                                  pgmapOwner: owner, flags: selectDevice, faultPage: fault.page)
            let t0 = stamp()
            emit(.cpuFaultBegin, .toRAM, address: fault.address)
            var moved = 0
            defer { emit(.cpuFaultEnd, .toRAM, begin: t0, address: fault.address, pages: moved) }
            // Not collected (its lock was busy): nothing moved, the CPU retries the access.
            do throws(MirrorError) { moved = try migrateBatchToSystem(&args, clearing: owning) } catch {
                return error == .outOfMemory ? .oom : .sigbus
            }
            return .done
        }
    }
}
