// DeviceEmu: the fake GPU and its dmem driver, joining HostMM (the kernel mm model) and
// DMAEngine (the copy engine) the way nouveau joins mm and its copy channel.
//
// What a user meets, in order:
//
//   let memory = try PhysicalMemory(ramBytes: 1 << 30)
//   let gpu = try Device(memory: memory, configuration: .init(vramSize: 256 << 20))
//   let mm = AddressSpace(memory: memory)
//   let a = try mm.mmap(length: 64 << 20)
//   let view = try gpu.bind(mm)                               // device page table, notifier
//   try gpu.migrateToDevice(mm, range: a ..< a + (64 << 20))  // nouveau_dmem_migrate_vma
//   try view.read(at: a, into: buffer)                        // GPU loads through VRAM
//   _ = try mm.read(at: a, count: 4096)                       // CPU fault → Device.migrateToRAM
//   try gpu.suspend(); try gpu.resume()                       // evict all / run again
//   try gpu.shutdown()                                        // teardown: evict, unregister
//
// Layout: Device/ (Device, DeviceMemory — the chunk allocator another device model
// reuses —, channels, lifecycle), Dmem/ (MigrateToDevice, MigrateToRAM, Evict,
// LegacyMigrate, CommittedCopies), SVM/ (DevicePageTable, GPUAddressSpace, GPUAccess,
// GPUFault), Policy/ (MigrationPolicy, EvictionPolicy), Observe/ (MigrationObserver),
// Mirror/ (test_hmm's dmirror on DeviceMemory).
//
// A migration batch, as in nouveau: setup → allocate + lock device pages, enqueue
// copies (clears for holes) → submit (fence) → migrate_vma_pages → wait fence → map in
// the device page table → finalize. The fence gates finalize and the device map.
//
// Lock order (outermost first): the device's operation gate (counts, never held across
// a wait) → mmap lock → page locks → rmap / page-table locks (HostMM) → a
// GPUAddressSpace's mirror lock → DeviceMemory's free-list lock / the eviction policy's
// lock. Nothing calls into HostMM while holding a mirror lock.
