import NIOConcurrencyHelpers

/// Suspend, resume and teardown (`nouveau_dmem_suspend` / `_resume` / `_fini`), with
/// eviction through `migrateDevice*` as the issue specifies. The three are serialized: a
/// `resume()` racing a `suspend()` waits until the suspend has evicted everything, so it
/// cannot restart migrations in the middle of that eviction.
extension Device {
    /// Stops new migrations and GPU accesses (`nouveau_dmem_suspend`), waits for those in
    /// flight, then evicts every VRAM page to System RAM. CPU faults keep working. Must not
    /// be called from inside a device operation (an observer, an eviction policy), nor
    /// `resume`/`shutdown` from an observer of the suspend's own eviction.
    /// - Throws: `.shutDown` after teardown; `.busy` if some pages could not be evicted
    ///   (pinned); `.hostMM(.outOfMemory)` if System RAM ran out (nouveau evicts with
    ///   `__GFP_NOFAIL`, which cannot fail: the model reports ENOMEM instead). Either way
    ///   the device is suspended, with the pages left still in VRAM, mapped and intact;
    ///   CPU faults on them keep being served, and a later `suspend()` retries them.
    public func suspend() throws(DeviceError) {
        lifecycle.lock()
        defer { lifecycle.unlock() }
        guard gate.close(to: .suspended) != .shutDown else { throw .shutDown }
        let outOfRAM = evictEverything(waitingForOthers: true).outOfRAM
        if vram.inUsePageCount > 0 { throw outOfRAM ? .hostMM(.outOfMemory) : .busy }
    }

    /// Lets migrations and GPU accesses run again after `suspend()`
    /// (`nouveau_dmem_resume`).
    /// - Throws: `.shutDown` after teardown.
    public func resume() throws(DeviceError) {
        lifecycle.lock()
        defer { lifecycle.unlock() }
        guard gate.reopen() else { throw .shutDown }
    }

    /// True between `suspend()` and `resume()`.
    public var isSuspended: Bool { gate.state == .suspended }

    /// Tears the device down (`nouveau_dmem_fini`): refuses new work, waits for work in
    /// flight, evicts every VRAM page to System RAM, unbinds every address space,
    /// unregisters the chunks' pgmaps and the device's memory regions, and, if the device
    /// created its engine, shuts the engine down. Idempotent.
    /// - Throws: `.busy` if pages could not be evicted (pinned), `.hostMM(.outOfMemory)` if
    ///   System RAM ran out (`nouveau_dmem_evict_chunk`'s `__GFP_NOFAIL` allocation cannot
    ///   fail in the kernel; the model reports ENOMEM rather than loop or drop data); the
    ///   pgmaps then stay registered, CPU faults on those pages keep being served, and a
    ///   later call retries.
    public func shutdown() throws(DeviceError) {
        lifecycle.lock()
        defer { lifecycle.unlock() }
        gate.close(to: .shutDown)
        let outOfRAM = evictEverything(waitingForOthers: true).outOfRAM
        unbindAll()
        if outOfRAM && vram.inUsePageCount > 0 { throw .hostMM(.outOfMemory) }
        try vram.retire()
        if ownsEngine { engine.shutdown() } else { try? engine.unregister(hostRegion) }
    }
}
