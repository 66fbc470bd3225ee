#if canImport(Glibc)
import Glibc
#endif

/// The device-private fault a thread is handling while it runs a driver's `migrateToRAM`
/// (the `struct vm_fault` that `do_swap_page` hands to `dev_pagemap_ops.migrate_to_ram`),
/// so that `migrateVMASetup` can name the setup that would make the fault retry for ever.
///
/// Threads: each thread sees and sets only its own context; it lives on the faulting
/// thread's stack for the duration of the callback (no allocation per fault).
struct MigrateToRAMContext {
    /// The faulting address space, by identity.
    let mm: ObjectIdentifier
    /// `vmf->address`, page-aligned.
    let address: UInt64
    /// `vmf->page`: the device-private page the fault holds a reference on.
    let page: PFN

    /// nil when the process is out of keys: then no thread has a context, and setup's
    /// check (this model's addition) is off rather than reading another key's values.
    private static let key: pthread_key_t? = {
        var key = pthread_key_t()
        return pthread_key_create(&key, nil) == 0 ? key : nil
    }()

    /// The fault the calling thread is handling in `migrateToRAM`, if any.
    static var current: MigrateToRAMContext? {
        guard let key else { return nil }
        return pthread_getspecific(key)?.assumingMemoryBound(to: MigrateToRAMContext.self).pointee
    }

    /// Runs `body` (the `migrateToRAM` call) with `self` as the thread's context; nests.
    func during<R>(_ body: () -> R) -> R {
        guard let key = Self.key else { return body() }
        return withUnsafeTemporaryAllocation(of: MigrateToRAMContext.self, capacity: 1) { slot in
            slot.initialize(repeating: self)
            defer { slot.deinitialize() }
            let previous = pthread_getspecific(key)
            pthread_setspecific(key, slot.baseAddress)
            defer { pthread_setspecific(key, previous) }
            return body()
        }
    }
}

extension MigrateVMA {
    /// A setup from inside `migrateToRAM` whose range holds the faulting page but which
    /// cannot move it (no `faultPage`: the pages step then finds the fault's reference
    /// and keeps the page; no select flag or another owner: collect skips it): the driver
    /// returns with the entry unchanged and the CPU access faults again for ever (the
    /// kernel livelocks there). This model's addition: `.invalidArgument` naming the field.
    func checkFaultingPage(_ mm: AddressSpace, _ memory: PhysicalMemory) throws(HostMMError) {
        guard let fault = MigrateToRAMContext.current, fault.mm == ObjectIdentifier(mm),
              start <= fault.address, fault.address < end else { return }
        // Built only to throw: the check runs on every CPU fault and must not allocate.
        var inside: String { "migrateVMASetup inside migrateToRAM for \(fault.page) at \(fault.address.hex)" }
        guard faultPage == fault.page else {
            throw .invalidArgument(reason: "\(inside) without faultPage: set faultPage: fault.page (otherwise the "
                                   + "fault's reference fails the pages step's refcount check, the page stays and the access "
                                   + "faults again for ever)")
        }
        guard flags.contains(memory.isDevicePrivate(fault.page) ? .selectDevicePrivate : .selectDeviceCoherent) else {
            throw .invalidArgument(reason: "\(inside) without .selectDevicePrivate in flags: the faulting page would "
                                   + "not be collected and the access would fault again for ever")
        }
        if let owner = memory.pagemap(of: fault.page)?.owner, pgmapOwner != owner {
            throw .invalidArgument(reason: "\(inside) with pgmapOwner \(pgmapOwner.map { String($0.rawValue, radix: 16) } ?? "nil"), "
                                   + "not the page's pgmap owner \(String(owner.rawValue, radix: 16)): the faulting page would "
                                   + "not be collected and the access would fault again for ever")
        }
    }
}
